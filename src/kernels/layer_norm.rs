//! LayerNorm over the last dimension, `y = (x − μ)/√(σ² + ε) · γ + β`, fused, with its backward
//! (the statistics are recomputed in the backward rather than stored); and the same of a
//! residual sum, `y = LN(x + r)`, without storing `x + r`.

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor,
};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::{rows_per_task, slice, sum, with_data, Real};

/// `LN(x)` as a two-input op `(x, [γ, β])`, and `LN(x + r)` as a three-input op
/// `(x, r, [γ, β])` (a custom op takes at most three inputs, hence γ and β in one tensor).
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

/// One row of the forward: `yr ← (xr − μ)·rstd·w + b`.
#[inline]
fn row_forward<T: Real>(yr: &mut [MaybeUninit<T>], xr: &[T], w: &[T], b: &[T], eps: T) {
    let (mean, rstd) = stats(xr, eps);
    for (((o, &v), &wv), &bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
        o.write((v - mean) * rstd * wv + bv);
    }
}

/// One row of the backward: writes `dr` (the input gradient) and adds the row's share of
/// `[dγ, dβ]` to `acc`; `xhat` is scratch of length d.
#[inline]
fn row_backward<T: Real>(
    dr: &mut [MaybeUninit<T>],
    xr: &[T],
    gr: &[T],
    w: &[T],
    eps: T,
    acc: &mut [T],
    xhat: &mut [T],
) {
    let d = w.len();
    let inv_d = T::one() / T::from_f64(d as f64);
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
        dr[i].write(rstd * (gr[i] * w[i] - m1 - xhat[i] * m2));
    }
}

/// The rows of `x`, or of `x + r` (summed into a scratch row) when `r` is given, one at a
/// time; `f(row index within the chunk, row)`.
#[inline]
fn rows_of<T: Real>(x: &[T], r: Option<&[T]>, d: usize, mut f: impl FnMut(usize, &[T])) {
    match r {
        None => x.chunks(d).enumerate().for_each(|(i, xr)| f(i, xr)),
        Some(r) => {
            let mut s = vec![T::zero(); d];
            for (i, (xr, rr)) in x.chunks(d).zip(r.chunks(d)).enumerate() {
                for ((o, &u), &v) in s.iter_mut().zip(xr).zip(rr) {
                    *o = u + v;
                }
                f(i, &s);
            }
        }
    }
}

/// `LN(x)` or `LN(x + r)`.
fn forward<T: Real>(x: &[T], r: Option<&[T]>, w: &[T], b: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let eps = T::from_f64(eps);
    let rpt = rows_per_task(d);
    // SAFETY: each chunk is whole rows of x, and row_forward writes all d values of each.
    unsafe {
        super::par_filled(x.len(), d * rpt, |t, yc| {
            let span = t * d * rpt..t * d * rpt + yc.len();
            let rc = r.map(|r| &r[span.clone()]);
            rows_of(&x[span], rc, d, |i, xr| {
                row_forward(&mut yc[i * d..(i + 1) * d], xr, w, b, eps)
            });
        })
    }
}

/// Returns the gradient of the input (of `x`, or of `x + r`) and the concatenation
/// `[dγ, dβ]`.
fn backward<T: Real>(x: &[T], r: Option<&[T]>, w: &[T], g: &[T], eps: f64) -> (Vec<T>, Vec<T>) {
    let d = w.len();
    let eps = T::from_f64(eps);
    let rpt = rows_per_task(d);
    let mut dwb = Vec::new();
    // SAFETY: each chunk is whole rows of x, and row_backward writes all d values of each;
    // ordered_sum runs every task.
    let dx = unsafe {
        super::written(x.len(), |dx| {
            let parts = dx.par_chunks_mut(d * rpt).enumerate().map(|(t, dc)| {
                let span = t * d * rpt..t * d * rpt + dc.len();
                let gc = &g[span.clone()];
                let rc = r.map(|r| &r[span.clone()]);
                let mut acc = vec![T::zero(); 2 * d];
                let mut xhat = vec![T::zero(); d];
                rows_of(&x[span], rc, d, |i, xr| {
                    let rows = i * d..(i + 1) * d;
                    row_backward(
                        &mut dc[rows.clone()],
                        xr,
                        &gc[rows],
                        w,
                        eps,
                        &mut acc,
                        &mut xhat,
                    )
                });
                acc
            });
            dwb = super::ordered_sum(parts, 2 * d);
        })
    };
    (dx, dwb)
}

type Input<'a> = (&'a CpuStorage, &'a Layout);

impl LayerNormOp {
    fn cpu_fwd_any(
        &self,
        x: Input,
        r: Option<Input>,
        wb: Input,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Real>(
            x: Input,
            r: Option<Input>,
            wb: Input,
            eps: f64,
        ) -> candle_core::Result<CpuStorage> {
            let wb = slice::<T>(wb.0, wb.1)?;
            let r = match r {
                Some((s, l)) => Some(slice::<T>(s, l)?),
                None => None,
            };
            let d = wb.len() / 2;
            let y = forward(slice(x.0, x.1)?, r, &wb[..d], &wb[d..], eps);
            Ok(T::to_cpu_storage_owned(y))
        }
        let out = real_dtype!(x.0.dtype(), "fused-layer-norm", |T| run::<T>(
            x, r, wb, self.eps
        ))?;
        Ok((out, x.1.shape().clone()))
    }

    /// The gradients of the input (of `x`, or of `x + r`) and of `[γ, β]`.
    fn bwd_any(
        &self,
        x: &Tensor,
        r: Option<&Tensor>,
        wb: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        fn run<T: Real>(
            x: &Tensor,
            r: Option<&Tensor>,
            wb: &Tensor,
            g: &Tensor,
            eps: f64,
        ) -> candle_core::Result<(Tensor, Tensor)> {
            let d = wb.elem_count() / 2;
            let grads = |rd: Option<&[T]>| {
                with_data::<T, _>(x, |xd| {
                    with_data::<T, _>(wb, |wbd| {
                        with_data::<T, _>(g, |gd| Ok(backward(xd, rd, &wbd[..d], gd, eps)))
                    })
                })
            };
            let (dx, dwb) = match r {
                Some(r) => with_data::<T, _>(r, |rd| grads(Some(rd)))?,
                None => grads(None)?,
            };
            Ok((
                Tensor::from_vec(dx, x.shape(), x.device())?,
                Tensor::from_vec(dwb, 2 * d, x.device())?,
            ))
        }
        real_dtype!(x.dtype(), "fused-layer-norm", |T| run::<T>(
            x, r, wb, g, self.eps
        ))
    }
}

impl CustomOp2 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu_fwd_any((s1, l1), None, (s2, l2))
    }
    fn bwd(
        &self,
        x: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dwb) = self.bwd_any(x, None, wb, g)?;
        Ok((Some(dx), Some(dwb)))
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-add-layer-norm"
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
        self.cpu_fwd_any((s1, l1), Some((s2, l2)), (s3, l3))
    }
    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        x: &Tensor,
        r: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dwb) = self.bwd_any(x, Some(r), wb, g)?;
        // d(x + r)/dx = d(x + r)/dr = 1: both inputs receive the same gradient.
        Ok((Some(dx.clone()), Some(dx), Some(dwb)))
    }
}

/// Whether the kernel covers `x [.., d]` with weight and bias `[d]` (and `r`, if given, of
/// `x`'s shape): CPU f32/f64, one dtype, one device.
fn covers(x: &Tensor, r: Option<&Tensor>, weight: &Tensor, bias: &Tensor) -> bool {
    let d = x.dims().last().copied().unwrap_or(0);
    let mut others = r.into_iter().chain([weight, bias]);
    super::fusable(x)
        && r.is_none_or(|r| r.dims() == x.dims())
        && weight.dims() == [d]
        && bias.dims() == [d]
        && others.all(|t| t.dtype() == x.dtype() && t.device().same_device(x.device()))
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
    if !covers(x, None, weight, bias) {
        return Ok(None);
    }
    let wb = Tensor::cat(&[weight, bias], 0)?;
    Ok(Some(x.contiguous()?.apply_op2(&wb, LayerNormOp { eps })?))
}

/// Fused `LN(x + r)`, the residual sum and the affine LayerNorm over the last dimension in
/// one op: `x`, `r` `[…, d]` of the same shape, weight and bias `[d]`. The sum is formed a
/// row at a time and never stored; the backward recomputes it. `None` when the kernel does
/// not apply (not CPU f32/f64, mismatched shapes or dtypes, or switched off with
/// `CONVLUNA_NO_FUSED=residual`) and the caller should use its composite path.
pub fn add_layer_norm(
    x: &Tensor,
    r: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Option<Tensor>> {
    if !super::fusable(x) || !covers(x, Some(r), weight, bias) {
        return Ok(None);
    }
    let wb = Tensor::cat(&[weight, bias], 0)?;
    Ok(Some(x.contiguous()?.apply_op3(
        &r.contiguous()?,
        &wb,
        LayerNormOp { eps },
    )?))
}
