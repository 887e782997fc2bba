//! `softmax(x · s + bias)` over the last dimension, fused, with its backward.
//!
//! `bias` is a constant `[B, 1, …, 1, n]` key bias broadcast over the rows of each batch item
//! (padding gets −1e9); `s` is a constant or a `[1]` tensor (the learned `exp(−τ)`), whose
//! gradient `Σ dz ⊙ x` the backward returns as well.

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor,
};
use rayon::prelude::*;

use super::{dot, rows_per_task, scalar, slice, with_data, Real};

#[derive(Clone, Debug)]
struct Softmax {
    /// Constant scale (used by the one-input form).
    scale: f64,
    /// Contiguous `[B, n]` key bias and the number of rows per batch item.
    bias: Option<(Tensor, usize)>,
}

fn forward<T: Real>(x: &[T], n: usize, scale: T, bias: Option<(&[T], usize)>) -> Vec<T> {
    let mut y = super::zeros(x.len());
    let rpt = rows_per_task(n);
    y.par_chunks_mut(n * rpt)
        .zip(x.par_chunks(n * rpt))
        .enumerate()
        .for_each(|(ci, (yc, xc))| {
            for (ri, (yr, xr)) in yc.chunks_mut(n).zip(xc.chunks(n)).enumerate() {
                let row = ci * rpt + ri;
                match bias {
                    Some((b, rpb)) => {
                        let br = &b[(row / rpb) * n..(row / rpb + 1) * n];
                        for ((o, &v), &bb) in yr.iter_mut().zip(xr).zip(br) {
                            *o = v * scale + bb;
                        }
                    }
                    None => {
                        for (o, &v) in yr.iter_mut().zip(xr) {
                            *o = v * scale;
                        }
                    }
                }
                super::wide::softmax_rows(yr, n, None, None);
            }
        });
    y
}

/// `dx = s · y ⊙ (g − Σ g ⊙ y)` and, with `x`, `ds = Σ (y ⊙ (g − Σ g ⊙ y)) ⊙ x`.
fn backward<T: Real>(y: &[T], g: &[T], x: Option<&[T]>, n: usize, scale: T) -> (Vec<T>, f64) {
    let mut dx = super::zeros(y.len());
    let rpt = rows_per_task(n);
    let parts = dx
        .par_chunks_mut(n * rpt)
        .zip(y.par_chunks(n * rpt))
        .zip(g.par_chunks(n * rpt))
        .enumerate()
        .map(|(ci, ((dc, yc), gc))| {
            let mut ds = 0f64;
            for (ri, ((dr, yr), gr)) in dc
                .chunks_mut(n)
                .zip(yc.chunks(n))
                .zip(gc.chunks(n))
                .enumerate()
            {
                let dot = dot(yr, gr);
                match x {
                    Some(x) => {
                        let start = (ci * rpt + ri) * n;
                        let xr = &x[start..start + n];
                        let mut acc = T::zero();
                        for (((d, &yv), &gv), &xv) in dr.iter_mut().zip(yr).zip(gr).zip(xr) {
                            let dz = yv * (gv - dot);
                            acc += dz * xv;
                            *d = dz * scale;
                        }
                        ds += acc.to_f64();
                    }
                    None => {
                        for ((d, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                            *d = yv * (gv - dot) * scale;
                        }
                    }
                }
            }
            vec![ds]
        });
    let ds = super::ordered_sum(parts, 1)[0];
    (dx, ds)
}

impl Softmax {
    fn fwd<T: Real>(
        &self,
        x: &[T],
        shape: &Shape,
        scale: f64,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = shape.dims().last().copied().unwrap_or(1);
        let y = match &self.bias {
            Some((b, rpb)) => with_data::<T, _>(b, |bd| {
                Ok(forward(x, n, T::from_f64(scale), Some((bd, *rpb))))
            })?,
            None => forward(x, n, T::from_f64(scale), None),
        };
        Ok((T::to_cpu_storage_owned(y), shape.clone()))
    }

    fn bwd_t<T: Real>(
        &self,
        x: Option<&Tensor>,
        y: &Tensor,
        g: &Tensor,
        scale: f64,
    ) -> candle_core::Result<(Tensor, f64)> {
        let n = y.dims().last().copied().unwrap_or(1);
        let (dx, ds) = with_data::<T, _>(y, |yd| {
            with_data::<T, _>(g, |gd| match x {
                Some(x) => with_data::<T, _>(x, |xd| {
                    Ok(backward(yd, gd, Some(xd), n, T::from_f64(scale)))
                }),
                None => Ok(backward(yd, gd, None, n, T::from_f64(scale))),
            })
        })?;
        Ok((Tensor::from_vec(dx, y.shape(), y.device())?, ds))
    }

    fn dispatch_bwd(
        &self,
        x: Option<&Tensor>,
        y: &Tensor,
        g: &Tensor,
        scale: f64,
    ) -> candle_core::Result<(Tensor, f64)> {
        real_dtype!(y.dtype(), "fused-softmax", |T| self
            .bwd_t::<T>(x, y, g, scale))
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        real_dtype!(s.dtype(), "fused-softmax", |T| self.fwd(
            slice::<T>(s, l)?,
            l.shape(),
            self.scale
        ))
    }
    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.dispatch_bwd(None, res, grad, self.scale)?.0))
    }
}

/// The two-input form: `(x, s)` with `s` a `[1]` tensor.
#[derive(Clone, Debug)]
struct SoftmaxLearned(Softmax);

impl CustomOp2 for SoftmaxLearned {
    fn name(&self) -> &'static str {
        "fused-softmax-scaled"
    }
    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match s.dtype() {
            DType::F32 => {
                let sc = slice::<f32>(s2, l2)?[0] as f64;
                self.0.fwd(slice::<f32>(s, l)?, l.shape(), sc)
            }
            DType::F64 => {
                let sc = slice::<f64>(s2, l2)?[0];
                self.0.fwd(slice::<f64>(s, l)?, l.shape(), sc)
            }
            dt => Err(candle_core::Error::UnsupportedDTypeForOp(
                dt,
                "fused-softmax-scaled",
            )),
        }
    }
    fn bwd(
        &self,
        x: &Tensor,
        s: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let sc = scalar(s)?;
        let need_ds = s.track_op();
        let (dx, ds) = self.0.dispatch_bwd(need_ds.then_some(x), res, grad, sc)?;
        let ds = if need_ds {
            Some(Tensor::full(ds, s.shape(), s.device())?.to_dtype(s.dtype())?)
        } else {
            None
        };
        Ok((Some(dx), ds))
    }
}

/// A logit scale factor `s` in the form the kernels take.
#[derive(Clone, Debug)]
pub enum Scale {
    /// A constant.
    Constant(f64),
    /// A one-element tensor, through which the gradient reaches what it is computed from
    /// (e.g. `exp(−τ)` of a learned temperature).
    Tensor(Tensor),
}

/// `softmax(x · scale + bias)` over the last dimension of a CPU f32/f64 tensor.
///
/// `scale` is a constant or a one-element tensor (its gradient returned); `bias` must have x's rank, size 1 on every dimension but the first and the last, whose sizes
/// match x's. Returns `None` (nothing computed) when the fused kernel does not apply, so that
/// the caller can take its composite path.
pub fn softmax_scaled(
    x: &Tensor,
    scale: &Scale,
    bias: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    if !super::fusable(x) || x.rank() < 2 {
        return Ok(None);
    }
    let dims = x.dims();
    let n = dims[dims.len() - 1];
    let bias = match bias {
        None => None,
        Some(b) => {
            let bd = b.dims();
            let ok = bd.len() == dims.len()
                && bd[0] == dims[0]
                && bd[bd.len() - 1] == n
                && bd[1..bd.len() - 1].iter().all(|&v| v == 1)
                && b.dtype() == x.dtype()
                && b.device().same_device(x.device());
            if !ok {
                return Ok(None);
            }
            let rpb = dims[1..dims.len() - 1].iter().product::<usize>();
            Some((b.detach().reshape((dims[0], n))?.contiguous()?, rpb))
        }
    };
    let x = x.contiguous()?;
    match scale {
        Scale::Constant(c) => Ok(Some(x.apply_op1(Softmax { scale: *c, bias })?)),
        Scale::Tensor(s) => {
            if s.elem_count() != 1 || !s.device().same_device(x.device()) {
                return Ok(None);
            }
            let s = s.to_dtype(x.dtype())?.reshape(1)?;
            Ok(Some(x.apply_op2(
                &s,
                SoftmaxLearned(Softmax { scale: 1.0, bias }),
            )?))
        }
    }
}
