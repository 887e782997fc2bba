//! LayerNorm over the last dimension, `y = (x − μ)/√(σ² + ε) · γ + β`, fused, with its backward
//! (the statistics are recomputed in the backward rather than stored).

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use super::{rows_per_task, slice, sum, with_data, Real};

#[derive(Clone, Debug)]
struct LayerNormOp {
    eps: f64,
}

#[inline]
fn stats<T: Real>(xr: &[T], eps: T) -> (T, T) {
    let n = T::from_f64(xr.len() as f64);
    let mean = sum(xr) / n;
    let mut acc = [T::zero(); 8];
    let x8 = xr.chunks_exact(8);
    let mut var = x8
        .remainder()
        .iter()
        .fold(T::zero(), |a, &v| a + (v - mean) * (v - mean));
    for x in x8 {
        for i in 0..8 {
            acc[i] += (x[i] - mean) * (x[i] - mean);
        }
    }
    for v in acc {
        var += v;
    }
    let var = var / n;
    (mean, T::one() / (var + eps).sqrt())
}

fn forward<T: Real>(x: &[T], w: &[T], b: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let eps = T::from_f64(eps);
    let mut y = super::zeros(x.len());
    let rpt = rows_per_task(d);
    y.par_chunks_mut(d * rpt)
        .zip(x.par_chunks(d * rpt))
        .for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                let (mean, rstd) = stats(xr, eps);
                for (((o, &v), &wv), &bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                    *o = (v - mean) * rstd * wv + bv;
                }
            }
        });
    y
}

/// Returns dx and the concatenation `[dγ, dβ]`.
fn backward<T: Real>(x: &[T], w: &[T], g: &[T], eps: f64) -> (Vec<T>, Vec<T>) {
    let d = w.len();
    let eps = T::from_f64(eps);
    let inv_d = T::one() / T::from_f64(d as f64);
    let mut dx = super::zeros(x.len());
    let rpt = rows_per_task(d);
    let parts = dx
        .par_chunks_mut(d * rpt)
        .zip(x.par_chunks(d * rpt))
        .zip(g.par_chunks(d * rpt))
        .map(|((dc, xc), gc)| {
            let mut acc = vec![T::zero(); 2 * d];
            let mut xhat = vec![T::zero(); d];
            for ((dr, xr), gr) in dc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                let (mean, rstd) = stats(xr, eps);
                let mut s1 = T::zero();
                let mut s2 = T::zero();
                for i in 0..d {
                    let xh = (xr[i] - mean) * rstd;
                    xhat[i] = xh;
                    let dxh = gr[i] * w[i];
                    s1 += dxh;
                    s2 += dxh * xh;
                    acc[i] += gr[i] * xh;
                    acc[d + i] += gr[i];
                }
                let (m1, m2) = (s1 * inv_d, s2 * inv_d);
                for i in 0..d {
                    dr[i] = rstd * (gr[i] * w[i] - m1 - xhat[i] * m2);
                }
            }
            acc
        });
    let dwb = super::ordered_sum(parts, 2 * d);
    (dx, dwb)
}

impl LayerNormOp {
    fn bwd_t<T: Real>(
        &self,
        x: &Tensor,
        w: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let d = w.elem_count();
        let (dx, dwb) = with_data::<T, _>(x, |xd| {
            with_data::<T, _>(w, |wd| {
                with_data::<T, _>(g, |gd| Ok(backward(xd, wd, gd, self.eps)))
            })
        })?;
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dwb = Tensor::from_vec(dwb, 2 * d, x.device())?;
        Ok((
            dx,
            dwb.narrow(0, 0, d)?.reshape(w.shape())?,
            dwb.narrow(0, d, d)?.reshape(w.shape())?,
        ))
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(forward(
                slice(s1, l1)?,
                slice(s2, l2)?,
                slice(s3, l3)?,
                self.eps,
            )),
            DType::F64 => f64::to_cpu_storage_owned(forward(
                slice(s1, l1)?,
                slice(s2, l2)?,
                slice(s3, l3)?,
                self.eps,
            )),
            dt => {
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    dt,
                    "fused-layer-norm",
                ))
            }
        };
        Ok((out, l1.shape().clone()))
    }
    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = match x.dtype() {
            DType::F32 => self.bwd_t::<f32>(x, w, g)?,
            DType::F64 => self.bwd_t::<f64>(x, w, g)?,
            dt => {
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    dt,
                    "fused-layer-norm",
                ))
            }
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Fused affine LayerNorm over the last dimension (weight and bias `[d]`), or `None` when the
/// kernel does not apply (not CPU f32/f64, or mismatched dtypes) and the caller should use
/// its composite path.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Option<Tensor>> {
    let d = x.dims().last().copied().unwrap_or(0);
    if !super::enabled("layer_norm", x)
        || weight.dtype() != x.dtype()
        || bias.dtype() != x.dtype()
        || weight.dims() != [d]
        || bias.dims() != [d]
        || !weight.device().same_device(x.device())
    {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNormOp { eps },
    )?))
}
