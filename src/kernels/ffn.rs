//! The position-wise feed-forward network as one op:
//! `y = drop(GELU(x·W₁ᵀ + b₁))·W₂ᵀ + b₂`, with its backward.
//!
//! Each bias rides along as the last column of its weight (`[W₁ | b₁]` `[f, d+1]`,
//! `[W₂ | b₂]` `[d, f+1]`, built by the caller with a cheap `cat`, whose backward hands the
//! gradients back to W and b). The op keeps the pre-activation `z` and the (dropped-out)
//! activation `a` for the backward:
//!
//! ```text
//! g_a = g·W₂ ⊙ keep,  dW₂ = gᵀ·a,  db₂ = Σ g,  dz = g_a ⊙ GELU′(z),
//! dW₁ = dzᵀ·x,  db₁ = Σ dz,  dx = dz·W₁
//! ```
//!
//! As one node in Candle's graph instead of three (fc1, bias + GELU, fc2), the two `[N, f]`
//! intermediates cost no gradient-accumulation passes (a zero fill and an add each, four
//! times the size of the block's `[N, d]` tensors).

use std::sync::{Arc, Mutex};

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp3, Layout, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use super::wide::{wide, GeluKeep, GeluKeepGrad};
use super::{rows_per_task, slice, with_data, zeros, Gemm, Mat, Real};

#[derive(Debug)]
struct Ffn {
    threads: usize,
    /// Dropout keep-mask (`0` or `1/(1−p)`) over the `[N, f]` activation.
    keep: Option<Arc<Vec<f32>>>,
    /// `(z, a)` of the forward pass, `[N, f]` each.
    saved: Mutex<Option<(Tensor, Tensor)>>,
}

#[derive(Clone, Copy, Debug)]
struct Dims {
    rows: usize,
    d: usize,
    f: usize,
}

fn dims(x: &Shape, w1: &Shape, w2: &Shape) -> candle_core::Result<Dims> {
    let xd = x.dims();
    let (f, d1) = w1.dims2()?;
    let (d2, f1) = w2.dims2()?;
    let d = xd.last().copied().unwrap_or(0);
    if xd.is_empty() || d1 != d + 1 || d2 != d || f1 != f + 1 {
        return Err(candle_core::Error::Msg(format!(
            "fused ffn: x {x:?}, [W1|b1] {w1:?}, [W2|b2] {w2:?} do not agree"
        )));
    }
    Ok(Dims {
        rows: x.elem_count() / d.max(1),
        d,
        f,
    })
}

/// `lhs·Wᵀ + b` for `wb = [W | b]` `[out, inp+1]`.
fn affine<T: Real>(
    lhs: &[T],
    wb: &[T],
    rows: usize,
    inp: usize,
    out: usize,
    threads: usize,
) -> Vec<T> {
    let bias: Vec<T> = (0..out).map(|j| wb[j * (inp + 1) + inp]).collect();
    super::linear::forward(lhs, wb, inp + 1, Some(&bias), rows, inp, out, threads)
}

/// Column sums of a `rows × cols` matrix into column `col` of a `cols × (ld)` matrix.
fn column_sums_into<T: Real>(g: &[T], cols: usize, dst: &mut [T], ld: usize, col: usize) {
    let sums = super::linear::column_sums(g, cols);
    for (j, s) in sums.into_iter().enumerate() {
        dst[j * ld + col] = s;
    }
}

impl Ffn {
    fn fwd<T: Real>(&self, x: &[T], w1: &[T], w2: &[T], dm: Dims) -> candle_core::Result<Vec<T>> {
        let Dims { rows, d, f } = dm;
        let z = affine(x, w1, rows, d, f, self.threads);
        let mut a = zeros(rows * f);
        let keep = self.keep.as_deref().map(|k| k.as_slice());
        let rpt = rows_per_task(f);
        a.par_chunks_mut(f * rpt)
            .zip(z.par_chunks(f * rpt))
            .enumerate()
            .for_each(|(ci, (a, z))| {
                let keep = keep.map(|k| &k[ci * f * rpt..]);
                wide(GeluKeep { a, z, keep })
            });
        let y = affine(&a, w2, rows, f, d, self.threads);
        let cpu = candle_core::Device::Cpu;
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some((
            Tensor::from_vec(z, rows * f, &cpu)?,
            Tensor::from_vec(a, rows * f, &cpu)?,
        ));
        Ok(y)
    }

    #[allow(clippy::type_complexity)]
    fn bwd_t<T: Real>(
        &self,
        x: &Tensor,
        w1: &Tensor,
        w2: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let dm = dims(x.shape(), w1.shape(), w2.shape())?;
        let Dims { rows, d, f } = dm;
        let threads = self.threads;
        let (z, a) = self
            .saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("fused ffn: no forward pass".into()))?;
        let keep = self.keep.as_deref().map(|k| k.as_slice());
        let (dx, dw1, dw2) = with_data::<T, _>(g, |gd| {
            with_data::<T, _>(x, |xd| {
                with_data::<T, _>(w1, |w1d| {
                    with_data::<T, _>(w2, |w2d| {
                        with_data::<T, _>(&z, |zd| {
                            with_data::<T, _>(&a, |ad| {
                                // [dW₂ | db₂]
                                let mut dw2 = vec![T::zero(); d * (f + 1)];
                                Gemm::new((d, f, rows), Mat::rows(gd, d).t(), Mat::rows(ad, f))
                                    .run(&mut dw2, f + 1, threads);
                                column_sums_into(gd, d, &mut dw2, f + 1, f);
                                // g_a = g·W₂, then dz = g_a ⊙ keep ⊙ GELU′(z) in place
                                let mut dz = zeros(rows * f);
                                Gemm::new((rows, f, d), Mat::rows(gd, d), Mat::rows(w2d, f + 1))
                                    .run(&mut dz, f, threads);
                                let rpt = rows_per_task(f);
                                dz.par_chunks_mut(f * rpt)
                                    .zip(zd.par_chunks(f * rpt))
                                    .enumerate()
                                    .for_each(|(ci, (dz, z))| {
                                        let keep = keep.map(|k| &k[ci * f * rpt..]);
                                        wide(GeluKeepGrad { dz, z, keep })
                                    });
                                // [dW₁ | db₁]
                                let mut dw1 = vec![T::zero(); f * (d + 1)];
                                Gemm::new((f, d, rows), Mat::rows(&dz, f).t(), Mat::rows(xd, d))
                                    .run(&mut dw1, d + 1, threads);
                                column_sums_into(&dz, f, &mut dw1, d + 1, d);
                                // dx = dz·W₁
                                let mut dx = zeros(rows * d);
                                Gemm::new((rows, d, f), Mat::rows(&dz, f), Mat::rows(w1d, d + 1))
                                    .run(&mut dx, d, threads);
                                Ok((dx, dw1, dw2))
                            })
                        })
                    })
                })
            })
        })?;
        Ok((
            Tensor::from_vec(dx, x.shape(), x.device())?,
            Tensor::from_vec(dw1, w1.shape(), w1.device())?,
            Tensor::from_vec(dw2, w2.shape(), w2.device())?,
        ))
    }
}

impl CustomOp3 for Ffn {
    fn name(&self) -> &'static str {
        "fused-ffn"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dm = dims(xl.shape(), l1.shape(), l2.shape())?;
        let out = real_dtype!(xs.dtype(), "fused-ffn", |T| Ok(T::to_cpu_storage_owned(
            self.fwd(
                slice::<T>(xs, xl)?,
                slice::<T>(s1, l1)?,
                slice::<T>(s2, l2)?,
                dm,
            )?
        )))?;
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w1: &Tensor,
        w2: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw1, dw2) =
            real_dtype!(x.dtype(), "fused-ffn", |T| self.bwd_t::<T>(x, w1, w2, grad))?;
        Ok((Some(dx), Some(dw1), Some(dw2)))
    }
}

/// `drop(GELU(x·W₁ᵀ + b₁))·W₂ᵀ + b₂` over the last dimension of a CPU f32/f64 tensor `[…, d]`,
/// with `w1b = [W₁ | b₁]` `[f, d+1]` and `w2b = [W₂ | b₂]` `[d, f+1]`, and `keep` an optional
/// dropout keep-mask of `N·f` values (`0` or `1/(1−p)`) on the activation. Returns `None` when
/// the kernel does not apply, so that the caller can take its composite path.
pub fn ffn(
    x: &Tensor,
    w1b: &Tensor,
    w2b: &Tensor,
    keep: Option<Vec<f32>>,
) -> candle_core::Result<Option<Tensor>> {
    if !super::fusable(x)
        || [w1b, w2b]
            .iter()
            .any(|t| t.dtype() != x.dtype() || !t.device().same_device(x.device()))
    {
        return Ok(None);
    }
    let dm = match dims(x.shape(), w1b.shape(), w2b.shape()) {
        Ok(dm) => dm,
        Err(_) => return Ok(None),
    };
    if keep.as_ref().is_some_and(|k| k.len() != dm.rows * dm.f) {
        return Ok(None);
    }
    let op = Ffn {
        threads: candle_core::utils::get_num_threads(),
        keep: keep.map(Arc::new),
        saved: Mutex::new(None),
    };
    Ok(Some(x.contiguous()?.apply_op3(
        &w1b.contiguous()?,
        &w2b.contiguous()?,
        op,
    )?))
}
