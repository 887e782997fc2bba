//! ConvLuna's max-pool filter on the model-dimension layout `[B, L, d]`, fused:
//! `y[t, c] = max { x[src, c] : src = t·s + j, j < k, src < L, m[src] = 1 }`, and 0 for a
//! window without a valid position (it is masked out of the attention). Padding never enters
//! a max. The gradient of `y[t, c]` goes to the position that won, the first one on a tie
//! (as PyTorch's `max_pool1d`).

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::{slice, with_data, Real};

#[derive(Clone, Debug)]
struct MaxPoolMerged {
    kernel: usize,
    stride: usize,
    /// Output length L'.
    out_len: usize,
    /// Constant `[B, L]` 0/1 mask.
    mask: Option<Tensor>,
}

impl MaxPoolMerged {
    /// Runs `f(row, b, t)` on every output row `[d]` of a `[B, L', d]` buffer, in parallel.
    fn per_output_row<V: Send + Sync + Copy>(
        &self,
        n: usize,
        d: usize,
        init: V,
        f: impl Fn(&mut [V], usize, usize) + Sync,
    ) -> Vec<V> {
        let mut out = vec![init; n * self.out_len * d];
        super::par_rows(&mut out, d, self.kernel, |or, row| {
            f(or, row / self.out_len, row % self.out_len)
        });
        out
    }

    /// The valid input positions of window `t` of sequence `b`.
    fn window<'a, T: Real>(
        &'a self,
        m: Option<&'a [T]>,
        b: usize,
        t: usize,
        len: usize,
    ) -> impl Iterator<Item = usize> + 'a {
        let start = t * self.stride;
        (start..(start + self.kernel).min(len))
            .filter(move |&src| m.is_none_or(|m| m[b * len + src] != T::zero()))
    }

    fn forward<T: Real>(&self, x: &[T], m: Option<&[T]>, len: usize, d: usize) -> Vec<T> {
        let n = x.len() / (len * d).max(1);
        self.per_output_row(n, d, T::zero(), |yr: &mut [T], b, t| {
            let mut first = true;
            for src in self.window(m, b, t, len) {
                let xr = &x[(b * len + src) * d..(b * len + src + 1) * d];
                if first {
                    yr.copy_from_slice(xr);
                    first = false;
                } else {
                    // branch-free, so that it vectorises; `>` keeps the earlier value on a tie
                    // and a NaN that came first (as the backward's `same` expects)
                    for (o, &v) in yr.iter_mut().zip(xr) {
                        *o = if v > *o { v } else { *o };
                    }
                }
            }
        })
    }

    /// `dx[src, c] = Σ_t [src wins (t, c)] · g[t, c]`, gathered per input row over the windows
    /// that hold it, in increasing t (a fixed order: deterministic). Position `src` wins the
    /// max `y[t, c]` when it is valid, `x[src, c]` equals `y[t, c]` and no valid position of
    /// the window before it does (the first position on a tie). The winners are found from
    /// the forward's output `y` rather than by a second max pass: `y` holds values of `x`
    /// only (pads are skipped, not lowered), and a NaN equals a NaN here (`same`), which is
    /// where the forward leaves it, at the window's first valid position.
    fn input_grad<T: Real>(
        &self,
        x: &[T],
        y: &[T],
        g: &[T],
        m: Option<&[T]>,
        len: usize,
        d: usize,
    ) -> Vec<T> {
        let mut dx = super::zeros(x.len());
        super::par_rows(&mut dx, d, self.kernel, |dr, row| {
            super::wide::wide(MaxGradRow {
                op: self,
                x,
                y,
                g,
                m,
                len,
                row,
                dr,
            })
        });
        dx
    }

    fn fwd<T: Real>(&self, x: &[T], xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, len, d) = xl.shape().dims3()?;
        let y = match &self.mask {
            Some(m) => with_data::<T, _>(m, |md| Ok(self.forward(x, Some(md), len, d)))?,
            None => self.forward(x, None, len, d),
        };
        Ok((
            T::to_cpu_storage_owned(y),
            Shape::from((b, self.out_len, d)),
        ))
    }

    fn bwd_t<T: Real>(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
        let (_, len, d) = x.dims3()?;
        let dx = with_data::<T, _>(x, |xd| {
            with_data::<T, _>(y, |yd| {
                with_data::<T, _>(g, |gd| match &self.mask {
                    Some(m) => {
                        with_data::<T, _>(m, |md| Ok(self.input_grad(xd, yd, gd, Some(md), len, d)))
                    }
                    None => Ok(self.input_grad(xd, yd, gd, None, len, d)),
                })
            })
        })?;
        Tensor::from_vec(dx, x.shape(), x.device())
    }
}

/// One row `src` of the max-pool's input gradient ([`MaxPoolMerged::input_grad`]), a
/// [`super::wide::Loop`] so that its compares and selects run at the CPU's vector width (the
/// result is the same bit for bit: it adds the same values in the same order).
struct MaxGradRow<'a, T> {
    op: &'a MaxPoolMerged,
    x: &'a [T],
    y: &'a [T],
    g: &'a [T],
    m: Option<&'a [T]>,
    len: usize,
    row: usize,
    dr: &'a mut [T],
}

/// `a = b`, where a NaN equals a NaN.
#[inline(always)]
fn same<T: Real>(a: T, b: T) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

impl<T: Real> super::wide::Loop for MaxGradRow<'_, T> {
    #[inline(always)]
    fn run(self) {
        /// Channels handled per pass: the flags live on the stack.
        const LANES: usize = 64;
        let Self {
            op,
            x,
            y,
            g,
            m,
            len,
            row,
            dr,
        } = self;
        let d = dr.len();
        let (b, src) = (row / len, row % len);
        if m.is_some_and(|m| m[row] == T::zero()) {
            return;
        }
        let xs = &x[row * d..(row + 1) * d];
        // windows t with t·s ≤ src < t·s + k
        let lo = (src + 1).saturating_sub(op.kernel).div_ceil(op.stride);
        let hi = (src / op.stride + 1).min(op.out_len);
        for t in lo..hi {
            let o = (b * op.out_len + t) * d;
            let (yr, gr) = (&y[o..o + d], &g[o..o + d]);
            for c0 in (0..d).step_by(LANES) {
                let w = LANES.min(d - c0);
                let (xc, yc, gc) = (&xs[c0..c0 + w], &yr[c0..c0 + w], &gr[c0..c0 + w]);
                let mut win = [false; LANES];
                for ((f, &a), &v) in win.iter_mut().zip(xc).zip(yc) {
                    *f = same(a, v);
                }
                // an earlier valid position of the window with the max takes it
                for e in op.window(m, b, t, len).take_while(|&e| e < src) {
                    let xe = &x[(b * len + e) * d + c0..(b * len + e) * d + c0 + w];
                    for ((f, &a), &v) in win.iter_mut().zip(xe).zip(yc) {
                        *f &= !same(a, v);
                    }
                }
                // dx is never −0, so adding +0 where src lost changes no bit
                for ((o, &f), &gv) in dr[c0..c0 + w].iter_mut().zip(&win).zip(gc) {
                    *o += if f { gv } else { T::zero() };
                }
            }
        }
    }
}

impl CustomOp1 for MaxPoolMerged {
    fn name(&self) -> &'static str {
        "fused-max-pool-merged"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        real_dtype!(s.dtype(), "fused-max-pool-merged", |T| self
            .fwd(slice::<T>(s, l)?, l))
    }
    fn bwd(&self, x: &Tensor, res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(real_dtype!(
            x.dtype(),
            "fused-max-pool-merged",
            |T| self.bwd_t::<T>(x, res, g)
        )?))
    }
}

/// Max-pool along time of `x [B, L, d]` over windows of `kernel` at `stride` (no padding:
/// window `t` reads `t·stride .. t·stride + kernel`, clipped to `L`), for `t < out_len`,
/// skipping the positions where the optional constant `[B, L]` 0/1 `mask` is 0; a window with
/// no valid position gives 0. Returns `[B, out_len, d]`; `None` when the fused kernel does not
/// apply (not a CPU f32/f64 tensor, a window that starts past `L`, or a mask of another
/// shape).
pub fn max_pool_merged(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    out_len: usize,
    mask: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    if !super::fusable(x) || x.rank() != 3 || kernel == 0 || stride == 0 || out_len == 0 {
        return Ok(None);
    }
    let (b, l, _) = x.dims3()?;
    if (out_len - 1) * stride >= l || l > u32::MAX as usize {
        return Ok(None);
    }
    let Some(mask) = super::constant_mask(mask, b, l, x)? else {
        return Ok(None);
    };
    let op = MaxPoolMerged {
        kernel,
        stride,
        out_len,
        mask,
    };
    Ok(Some(x.contiguous()?.apply_op1(op)?))
}
