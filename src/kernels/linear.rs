//! `y = x·Wᵀ + b` over the last dimension as one gemm with the bias folded in, and its
//! backward as two gemms and a column sum:
//!
//! ```text
//! dx = g·W,   dW = gᵀ·x,   db = Σ_rows g
//! ```
//!
//! x `[…, in]` is read as an `N × in` matrix (so the weight gradient is one gemm over all
//! `N` rows instead of Candle's batched matmul against a broadcast weight followed by a sum
//! over the batch), W `[out, in]` is read transposed in place, and the bias gradient is one
//! pass instead of Candle's strided reduction over the broadcast dimensions.

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor,
};
use rayon::prelude::*;

use super::{slice, with_data, Gemm, Mat, Real};

#[derive(Clone, Copy, Debug)]
struct Linear {
    threads: usize,
}

fn out_shape(x: &Shape, w: &Shape) -> candle_core::Result<(usize, usize, usize, Shape)> {
    let (out, inp) = w.dims2()?;
    let xd = x.dims();
    if xd.is_empty() || xd[xd.len() - 1] != inp {
        return Err(candle_core::Error::Msg(format!(
            "fused linear: input {x:?} does not end in the weight's {inp} columns"
        )));
    }
    let mut yd = xd.to_vec();
    *yd.last_mut().expect("rank ≥ 1") = out;
    Ok((x.elem_count() / inp, inp, out, Shape::from(yd)))
}

/// `x·Wᵀ + b` for `x` `rows × inp` and W `out × inp` stored with row stride `w_rs`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<T: Real>(
    x: &[T],
    w: &[T],
    w_rs: usize,
    b: Option<&[T]>,
    rows: usize,
    inp: usize,
    out: usize,
    threads: usize,
) -> Vec<T> {
    let product = Gemm::new((rows, out, inp), Mat::rows(x, inp), Mat::rows(w, w_rs).t());
    match b {
        // the bias rows, onto which the gemm accumulates x·Wᵀ
        Some(b) => {
            let mut y = super::tiled(rows * out, b);
            product.accumulate(true).run(&mut y, out, threads);
            y
        }
        // SAFETY: the product writes all rows × out elements.
        None => unsafe { super::written(rows * out, |y| product.run_uninit(y, out, threads)) },
    }
}

/// [`forward`] with a bias, into `y` (`rows × out`, overwritten): the same bits.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_into<T: Real>(
    y: &mut [T],
    x: &[T],
    w: &[T],
    w_rs: usize,
    b: &[T],
    dims: (usize, usize, usize),
    threads: usize,
) {
    // SAFETY: a view of initialised values as possibly uninitialised ones, through which only
    // values are written.
    let y = unsafe { &mut *(y as *mut [T] as *mut [std::mem::MaybeUninit<T>]) };
    forward_into_uninit(y, x, w, w_rs, b, dims, threads)
}

/// [`forward_into`] into a destination that may be uninitialised: the bias rows are written
/// first, then the gemm accumulates onto them (the same bits).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_into_uninit<T: Real>(
    y: &mut [std::mem::MaybeUninit<T>],
    x: &[T],
    w: &[T],
    w_rs: usize,
    b: &[T],
    (rows, inp, out): (usize, usize, usize),
    threads: usize,
) {
    assert_eq!(b.len(), out, "linear: bias length");
    let y = &mut y[..rows * out];
    for row in y.chunks_mut(out.max(1)) {
        for (o, &v) in row.iter_mut().zip(b) {
            o.write(v);
        }
    }
    // SAFETY: every element of `y` was written just above (rows of `out` bias values).
    let y = unsafe { &mut *(y as *mut [std::mem::MaybeUninit<T>] as *mut [T]) };
    Gemm::new((rows, out, inp), Mat::rows(x, inp), Mat::rows(w, w_rs).t())
        .accumulate(true)
        .run(y, out, threads);
}

/// Rows in each part of [`column_sums`].
fn part_rows(cols: usize) -> usize {
    (65536 / cols.max(1)).max(1)
}

/// Column sums of a `rows × cols` matrix: parts of [`part_rows`] rows, each summed row after
/// row (in parallel), then added up in order.
pub(crate) fn column_sums<T: Real>(g: &[T], cols: usize) -> Vec<T> {
    let parts = g.par_chunks(part_rows(cols) * cols).map(|c| {
        let mut acc = vec![T::zero(); cols];
        for row in c.chunks(cols) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
        acc
    });
    super::ordered_sum(parts, cols)
}

/// [`column_sums`] over rows that arrive block by block (blocks of any sizes): the same
/// parts, summed in the same order, so the same bits as one call over all the rows.
pub(crate) struct ColumnSums<T> {
    cols: usize,
    part_rows: usize,
    in_part: usize,
    part: Vec<T>,
    total: Vec<T>,
}

impl<T: Real> ColumnSums<T> {
    pub(crate) fn new(cols: usize) -> Self {
        Self {
            cols,
            part_rows: part_rows(cols),
            in_part: 0,
            part: vec![T::zero(); cols],
            total: vec![T::zero(); cols],
        }
    }

    /// Adds the rows of a `rows × cols` block.
    pub(crate) fn push(&mut self, block: &[T]) {
        for row in block.chunks(self.cols.max(1)) {
            for (a, &v) in self.part.iter_mut().zip(row) {
                *a += v;
            }
            self.in_part += 1;
            if self.in_part == self.part_rows {
                self.close_part();
            }
        }
    }

    fn close_part(&mut self) {
        for (t, p) in self.total.iter_mut().zip(self.part.iter_mut()) {
            *t += *p;
            *p = T::zero();
        }
        self.in_part = 0;
    }

    /// The column sums of all the rows pushed.
    pub(crate) fn finish(mut self) -> Vec<T> {
        if self.in_part > 0 {
            self.close_part();
        }
        self.total
    }
}

impl Linear {
    fn fwd<T: Real>(
        &self,
        x: &[T],
        xl: &Layout,
        w: &[T],
        wl: &Layout,
        b: Option<&[T]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, inp, out, shape) = out_shape(xl.shape(), wl.shape())?;
        if b.is_some_and(|b| b.len() != out) {
            return Err(candle_core::Error::Msg(format!(
                "fused linear: bias length differs from the weight's {out} rows"
            )));
        }
        let y = forward(x, w, inp, b, rows, inp, out, self.threads);
        Ok((T::to_cpu_storage_owned(y), shape))
    }

    fn dispatch_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        b: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        real_dtype!(xs.dtype(), "fused-linear", |T| {
            let b = b.map(|(s, l)| slice::<T>(s, l)).transpose()?;
            self.fwd(slice::<T>(xs, xl)?, xl, slice::<T>(ws, wl)?, wl, b)
        })
    }

    /// (dx, dW, db) for the arguments that track a gradient.
    #[allow(clippy::type_complexity)]
    fn bwd_t<T: Real>(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, inp, out, _) = out_shape(x.shape(), w.shape())?;
        let threads = self.threads;
        with_data::<T, _>(g, |gd| {
            let dx = if x.track_op() {
                let dx = with_data::<T, _>(w, |wd| {
                    let product =
                        Gemm::new((rows, inp, out), Mat::rows(gd, out), Mat::rows(wd, inp));
                    // SAFETY: the product writes all rows × inp elements.
                    Ok(unsafe {
                        super::written(rows * inp, |dx| product.run_uninit(dx, inp, threads))
                    })
                })?;
                Some(Tensor::from_vec(dx, x.shape(), x.device())?)
            } else {
                None
            };
            let dw = if w.track_op() {
                let dw = with_data::<T, _>(x, |xd| {
                    let mut dw = vec![T::zero(); out * inp];
                    Gemm::new((out, inp, rows), Mat::rows(gd, out).t(), Mat::rows(xd, inp))
                        .run(&mut dw, inp, threads);
                    Ok(dw)
                })?;
                Some(Tensor::from_vec(dw, w.shape(), w.device())?)
            } else {
                None
            };
            let db = match b {
                Some(b) if b.track_op() => Some(Tensor::from_vec(
                    column_sums(gd, out),
                    b.shape(),
                    b.device(),
                )?),
                _ => None,
            };
            Ok((dx, dw, db))
        })
    }

    #[allow(clippy::type_complexity)]
    fn dispatch_bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        real_dtype!(x.dtype(), "fused-linear", |T| self.bwd_t::<T>(x, w, b, g))
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.dispatch_fwd(xs, xl, ws, wl, None)
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.dispatch_bwd(x, w, None, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear-bias"
    }
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.dispatch_fwd(xs, xl, ws, wl, Some((bs, bl)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.dispatch_bwd(x, w, Some(b), grad)
    }
}

/// `x·Wᵀ + b` over the last dimension of a CPU f32/f64 tensor, W `[out, in]`, b `[out]`,
/// as one gemm with a hand-written backward. Returns `None` when the kernel does not apply
/// (not CPU f32/f64, switched off, or mismatched dtypes), so that the caller can take
/// Candle's matmul path.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    if !super::fusable(x) || x.rank() == 0 {
        return Ok(None);
    }
    let same = |t: &Tensor| t.dtype() == x.dtype() && t.device().same_device(x.device());
    if !same(weight) || !bias.is_none_or(same) {
        return Ok(None);
    }
    let op = Linear {
        threads: candle_core::utils::get_num_threads(),
    };
    let x = x.contiguous()?;
    let w = weight.contiguous()?;
    Ok(Some(match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op)?,
        None => x.apply_op2(&w, op)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows pushed in blocks of any sizes sum to [`column_sums`]' bits.
    #[test]
    fn column_sums_in_blocks_give_the_same_bits() {
        for cols in [3usize, 700] {
            let rows = 3 * part_rows(cols) + 5;
            let g: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.37)
                .collect();
            let whole = column_sums(&g, cols);
            for block in [1usize, 7, part_rows(cols), 512, rows] {
                let mut s = ColumnSums::new(cols);
                for b in g.chunks(block * cols) {
                    s.push(b);
                }
                let (a, b): (Vec<u32>, Vec<u32>) = (
                    s.finish().iter().map(|v| v.to_bits()).collect(),
                    whole.iter().map(|v| v.to_bits()).collect(),
                );
                assert_eq!(a, b, "{cols} columns in blocks of {block} rows");
            }
        }
    }
}
