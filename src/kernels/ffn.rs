//! The position-wise feed-forward network as one op:
//! `y = drop(GELU(x·W₁ᵀ + b₁))·W₂ᵀ + b₂`, with its backward.
//!
//! Each bias rides along as the last column of its weight (`[W₁ | b₁]` `[f, d+1]`,
//! `[W₂ | b₂]` `[d, f+1]`, built by the caller with a cheap `cat`, whose backward hands the
//! gradients back to W and b). The backward is
//!
//! ```text
//! g_a = g·W₂ ⊙ keep,  dW₂ = gᵀ·a,  db₂ = Σ g,  dz = g_a ⊙ GELU′(z),
//! dW₁ = dzᵀ·x,  db₁ = Σ dz,  dx = dz·W₁
//! ```
//!
//! As one node in Candle's graph instead of three (fc1, bias + GELU, fc2), the two `[N, f]`
//! intermediates cost no gradient-accumulation passes (a zero fill and an add each, four
//! times the size of the block's `[N, d]` tensors). Nor are they stored: both passes run in
//! blocks of rows with `z` and `a` in per-block buffers, and the backward recomputes fc1 and
//! the GELU of each block (one more `N·d·f` product) instead of keeping `2·N·f` values
//! (64 MiB per layer at N = 16,384, f = 512 in f32) from the forward to the backward. The
//! weight gradients add their row blocks in the order of one gemm over all rows (see
//! [`super::matmul`]), so the results are those of the unblocked computation, bit for bit.

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp3, Layout, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use super::linear::{column_sums, ColumnSums};
use super::wide::{wide, GeluKeep, GeluKeepCdf, GeluKeepGradCdf};
use super::{rows_per_task, slice, with_data, zeros, Gemm, Mat, Real, KC};

#[derive(Debug)]
struct Ffn {
    threads: usize,
    /// Dropout keep-mask (`0` or `1/(1−p)`) over the `[N, f]` activation.
    keep: Option<Arc<Vec<f32>>>,
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

/// Rows per task of the forward (each row is computed on its own: any blocking gives the
/// same bits).
const FWD_ROWS: usize = 128;

/// Rows per block of the backward: a multiple of [`KC`], so that the weight gradients, sums
/// over all rows accumulated block after block, add the depth blocks one gemm over all the
/// rows would add, in the same order — the same bits. Four depth blocks per block let the
/// weight gradients' products run in bands of the output, one thread each
/// ([`Gemm::run`]), instead of gemm's threads meeting after every 512 rows; the block's
/// `[rows, f]` buffers take 4 × 2,048 × f values (16 MiB at f = 512).
const BWD_ROWS: usize = 4 * KC;

/// One layer `[W | b]` `[out, inp+1]` with its bias column `b` read out once.
struct Affine<'a, T> {
    wb: &'a [T],
    b: Vec<T>,
    inp: usize,
    out: usize,
}

impl<'a, T: Real> Affine<'a, T> {
    fn new(wb: &'a [T], inp: usize, out: usize) -> Self {
        let b = (0..out).map(|j| wb[j * (inp + 1) + inp]).collect();
        Self { wb, b, inp, out }
    }

    /// `z = lhs·Wᵀ + b` into `z` (`rows × out`).
    fn apply(&self, z: &mut [T], lhs: &[T], rows: usize, threads: usize) {
        let (wb, inp, out) = (self.wb, self.inp, self.out);
        super::linear::forward_into(z, lhs, wb, inp + 1, &self.b, (rows, inp, out), threads)
    }

    /// [`Affine::apply`] into a destination that may be uninitialised (all of it written).
    fn apply_uninit(&self, z: &mut [MaybeUninit<T>], lhs: &[T], rows: usize, threads: usize) {
        let (wb, inp, out) = (self.wb, self.inp, self.out);
        let dims = (rows, inp, out);
        super::linear::forward_into_uninit(z, lhs, wb, inp + 1, &self.b, dims, threads)
    }
}

/// `op(out, c, z, keep)` over a `rows × f` block in parallel tasks of whole rows (`c` the
/// block's `Φ(z)`, written by the GELU and read by its gradient; `keep` from the block's
/// first row): the GELU and its gradient of the backward's blocks.
fn par_rows_with<T: Real>(
    out: &mut [T],
    c: &mut [T],
    z: &[T],
    keep: Option<&[f32]>,
    f: usize,
    op: impl Fn(&mut [T], &mut [T], &[T], Option<&[f32]>) + Sync,
) {
    let rpt = rows_per_task(f);
    out.par_chunks_mut(f * rpt)
        .zip(c.par_chunks_mut(f * rpt))
        .zip(z.par_chunks(f * rpt))
        .enumerate()
        .for_each(|(ci, ((o, c), z))| op(o, c, z, keep.map(|k| &k[ci * f * rpt..])));
}

/// Writes `sums` into column `col` of a matrix with `ld` columns (the bias column of a
/// `[W | b]` gradient).
fn set_column<T: Real>(dst: &mut [T], ld: usize, col: usize, sums: Vec<T>) {
    for (j, s) in sums.into_iter().enumerate() {
        dst[j * ld + col] = s;
    }
}

impl Ffn {
    /// Tasks of [`FWD_ROWS`] rows run fc1 → GELU → fc2 with the `[rows, f]` intermediates in
    /// a per-task buffer; nothing is kept for the backward but the op's inputs.
    fn fwd<T: Real>(&self, x: &[T], w1: &[T], w2: &[T], dm: Dims) -> candle_core::Result<Vec<T>> {
        let Dims { rows, d, f } = dm;
        let keep = self.keep.as_deref().map(|k| k.as_slice());
        let (fc1, fc2) = (Affine::new(w1, d, f), Affine::new(w2, f, d));
        let fill = |y: &mut [MaybeUninit<T>]| {
            y.par_chunks_mut(FWD_ROWS * d).enumerate().for_each_init(
                || (Vec::new(), Vec::new()),
                |(z, a), (bi, yb)| {
                    let (r0, r) = (bi * FWD_ROWS, yb.len() / d);
                    z.resize(r * f, T::zero());
                    a.resize(r * f, T::zero());
                    fc1.apply(z, &x[r0 * d..(r0 + r) * d], r, 1);
                    let keep = keep.map(|k| &k[r0 * f..]);
                    wide(GeluKeep { a, z, keep });
                    fc2.apply_uninit(yb, a, r, 1);
                },
            )
        };
        // SAFETY: each task's fc2 writes all of its r·d elements, and the tasks cover y (r is
        // its chunk's length ÷ d).
        Ok(unsafe { super::written(rows * d, fill) })
    }

    /// Blocks of [`BWD_ROWS`] rows, one after another: fc1 and GELU recomputed (the same bits
    /// as the forward's), then
    ///
    /// ```text
    /// dW₂ += g_bᵀ·a_b,  g_a = g_b·W₂,  dz = g_a ⊙ keep ⊙ GELU′(z),  db₁ += Σ dz,
    /// dW₁ += dz_bᵀ·x_b,  dx_b = dz·W₁
    /// ```
    ///
    /// with the `[rows, f]` intermediates only ever one block long.
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
        let keep = self.keep.as_deref().map(|k| k.as_slice());
        let (dx, dw1, dw2) = with_data::<T, _>(g, |gd| {
            with_data::<T, _>(x, |xd| {
                with_data::<T, _>(w1, |w1d| {
                    with_data::<T, _>(w2, |w2d| {
                        let mut dw1 = vec![T::zero(); f * (d + 1)];
                        let mut dw2 = vec![T::zero(); d * (f + 1)];
                        // written block by block below, every row once
                        let mut dx: Vec<T> = Vec::with_capacity(rows * d);
                        let block = BWD_ROWS.min(rows) * f;
                        let (mut z, mut a, mut dz) = (zeros(block), zeros(block), zeros(block));
                        let mut c = zeros(block);
                        let mut db1 = ColumnSums::new(f);
                        let fc1 = Affine::new(w1d, d, f);
                        for r0 in (0..rows).step_by(BWD_ROWS) {
                            let r = BWD_ROWS.min(rows - r0);
                            let (xb, gb) = (&xd[r0 * d..(r0 + r) * d], &gd[r0 * d..(r0 + r) * d]);
                            let (z, a, dz) = (&mut z[..r * f], &mut a[..r * f], &mut dz[..r * f]);
                            let c = &mut c[..r * f];
                            let keep = keep.map(|k| &k[r0 * f..(r0 + r) * f]);
                            fc1.apply(z, xb, r, threads);
                            par_rows_with(a, c, z, keep, f, |a, c, z, keep| {
                                wide(GeluKeepCdf { a, c, z, keep })
                            });
                            // [dW₂ | ·] (+)= g_bᵀ·a_b
                            Gemm::new((d, f, r), Mat::rows(gb, d).t(), Mat::rows(a, f))
                                .accumulate(r0 > 0)
                                .run(&mut dw2, f + 1, threads);
                            // g_a = g_b·W₂, then dz = g_a ⊙ keep ⊙ GELU′(z) in place
                            Gemm::new((r, f, d), Mat::rows(gb, d), Mat::rows(w2d, f + 1))
                                .run(dz, f, threads);
                            par_rows_with(dz, c, z, keep, f, |dz, c, z, keep| {
                                wide(GeluKeepGradCdf { dz, z, c, keep })
                            });
                            db1.push(dz);
                            // [dW₁ | ·] (+)= dz_bᵀ·x_b
                            Gemm::new((f, d, r), Mat::rows(dz, f).t(), Mat::rows(xb, d))
                                .accumulate(r0 > 0)
                                .run(&mut dw1, d + 1, threads);
                            // dx_b = dz·W₁
                            Gemm::new((r, d, f), Mat::rows(dz, f), Mat::rows(w1d, d + 1))
                                .run_uninit(
                                    &mut dx.spare_capacity_mut()[r0 * d..(r0 + r) * d],
                                    d,
                                    threads,
                                );
                        }
                        // SAFETY: the blocks of rows cover 0..rows, and each product wrote
                        // all r·d elements of its block.
                        unsafe { dx.set_len(rows * d) };
                        set_column(&mut dw1, d + 1, d, db1.finish());
                        set_column(&mut dw2, f + 1, f, column_sums(gd, d));
                        Ok((dx, dw1, dw2))
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
        Ok(dm) if dm.rows * dm.d * dm.f > 0 => dm,
        _ => return Ok(None),
    };
    if keep.as_ref().is_some_and(|k| k.len() != dm.rows * dm.f) {
        return Ok(None);
    }
    let op = Ffn {
        threads: candle_core::utils::get_num_threads(),
        keep: keep.map(Arc::new),
    };
    Ok(Some(x.contiguous()?.apply_op3(
        &w1b.contiguous()?,
        &w2b.contiguous()?,
        op,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::test_data as data;
    use super::super::wide::GeluKeepGrad;

    /// The blocked forward and backward against the same formulas over all rows at once
    /// (whole-matrix gemms, [`column_sums`]), bit for bit: rows spanning several blocks of
    /// both passes with a ragged last one, with and without a keep-mask.
    #[test]
    fn blocks_of_rows_give_the_unblocked_bits() {
        let (rows, d, f) = (2 * BWD_ROWS + 77, 24, 40);
        let cpu = candle_core::Device::Cpu;
        let (x, w1, w2, g) = (
            data::<f32>(rows * d, 1),
            data(f * (d + 1), 2),
            data(d * (f + 1), 3),
            data(rows * d, 4),
        );
        let mask: Vec<f32> = (0..rows * f)
            .map(|i| if i % 3 == 0 { 0.0 } else { 1.5 })
            .collect();
        for keep in [None, Some(mask)] {
            let op = Ffn {
                threads: 2,
                keep: keep.clone().map(Arc::new),
            };
            let dm = Dims { rows, d, f };
            let y = op.fwd(&x, &w1, &w2, dm).unwrap();
            let t = |v: &[f32], s: &[usize]| Tensor::from_slice(v, s, &cpu).unwrap();
            let (dx, dw1, dw2) = op
                .bwd_t::<f32>(
                    &t(&x, &[rows, d]),
                    &t(&w1, &[f, d + 1]),
                    &t(&w2, &[d, f + 1]),
                    &t(&g, &[rows, d]),
                )
                .unwrap();
            // unblocked
            let kp = keep.as_deref();
            let bias = |wb: &[f32], inp: usize, out: usize| -> Vec<f32> {
                (0..out).map(|j| wb[j * (inp + 1) + inp]).collect()
            };
            let lin = |lhs: &[f32], wb: &[f32], inp: usize, out: usize| {
                let b = bias(wb, inp, out);
                super::super::linear::forward(lhs, wb, inp + 1, Some(&b), rows, inp, out, 2)
            };
            let z = lin(&x, &w1, d, f);
            let mut a = vec![0f32; rows * f];
            wide(GeluKeep {
                a: &mut a,
                z: &z,
                keep: kp,
            });
            let y0 = lin(&a, &w2, f, d);
            let mut dw2_0 = vec![0f32; d * (f + 1)];
            Gemm::new((d, f, rows), Mat::rows(&g, d).t(), Mat::rows(&a, f)).run(
                &mut dw2_0,
                f + 1,
                2,
            );
            set_column(&mut dw2_0, f + 1, f, column_sums(&g, d));
            let mut dz = vec![0f32; rows * f];
            Gemm::new((rows, f, d), Mat::rows(&g, d), Mat::rows(&w2, f + 1)).run(&mut dz, f, 2);
            wide(GeluKeepGrad {
                dz: &mut dz,
                z: &z,
                keep: kp,
            });
            let mut dw1_0 = vec![0f32; f * (d + 1)];
            Gemm::new((f, d, rows), Mat::rows(&dz, f).t(), Mat::rows(&x, d)).run(
                &mut dw1_0,
                d + 1,
                2,
            );
            set_column(&mut dw1_0, d + 1, d, column_sums(&dz, f));
            let mut dx0 = vec![0f32; rows * d];
            Gemm::new((rows, d, f), Mat::rows(&dz, f), Mat::rows(&w1, d + 1)).run(&mut dx0, d, 2);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let tb = |t: &Tensor| bits(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            let what = if keep.is_some() { "with keep" } else { "" };
            assert_eq!(bits(&y), bits(&y0), "y {what}");
            assert_eq!(tb(&dx), bits(&dx0), "dx {what}");
            assert_eq!(tb(&dw1), bits(&dw1_0), "dW1 {what}");
            assert_eq!(tb(&dw2), bits(&dw2_0), "dW2 {what}");
        }
    }
}
