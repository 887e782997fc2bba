//! The stride-1 time filter of ConvLuna, fused: on `[B, h, L, d_h]`,
//! `y[t] = Σ_j w_j · x[t + j − left]` (zero outside `[0, L)`), one kernel per head (`[h, k]`)
//! or per channel (`[h·d_h, k]`), with its backward.

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use super::{dot, slice, with_data, Real};

#[derive(Clone, Copy, Debug)]
struct ConvTime {
    left: usize,
    heads: usize,
    per_channel: bool,
}

impl ConvTime {
    /// The weight of tap `j` for channel `c` of head `h`.
    #[inline]
    fn w<T: Real>(&self, w: &[T], k: usize, h: usize, dh: usize, c: usize, j: usize) -> T {
        if self.per_channel {
            w[(h * dh + c) * k + j]
        } else {
            w[h * k + j]
        }
    }

    /// Valid output range of tap `j`: t with 0 ≤ t + j − left < len.
    #[inline]
    fn range(&self, j: usize, len: usize) -> (usize, usize, isize) {
        let shift = j as isize - self.left as isize;
        let lo = (-shift).max(0) as usize;
        let hi = ((len as isize - shift).min(len as isize)).max(0) as usize;
        (lo, hi.max(lo), shift)
    }

    /// `y` (or, with `transpose`, `dx` from `g`): slab-wise correlation / convolution.
    fn apply<T: Real>(
        &self,
        x: &[T],
        w: &[T],
        k: usize,
        len: usize,
        dh: usize,
        transpose: bool,
    ) -> Vec<T> {
        let mut y = super::zeros(x.len());
        let slab = len * dh;
        y.par_chunks_mut(slab)
            .zip(x.par_chunks(slab))
            .enumerate()
            .for_each(|(s, (ys, xs))| {
                let h = s % self.heads;
                for j in 0..k {
                    let (lo, hi, shift) = self.range(j, len);
                    for t in lo..hi {
                        // forward: y[t] += w_j x[t + shift];   transpose: dx[t + shift] += w_j g[t]
                        let (dst, src) = if transpose {
                            ((t as isize + shift) as usize, t)
                        } else {
                            (t, (t as isize + shift) as usize)
                        };
                        let yr = &mut ys[dst * dh..(dst + 1) * dh];
                        let xr = &xs[src * dh..(src + 1) * dh];
                        if self.per_channel {
                            for c in 0..dh {
                                yr[c] += self.w(w, k, h, dh, c, j) * xr[c];
                            }
                        } else {
                            let wj = w[h * k + j];
                            for (o, &v) in yr.iter_mut().zip(xr) {
                                *o += wj * v;
                            }
                        }
                    }
                }
            });
        y
    }

    /// dw: Σ over batch, time (and channel, per head) of g[t] · x[t + j − left].
    fn weight_grad<T: Real>(
        &self,
        x: &[T],
        g: &[T],
        wlen: usize,
        k: usize,
        len: usize,
        dh: usize,
    ) -> Vec<T> {
        let slab = len * dh;
        let parts = x
            .par_chunks(slab)
            .zip(g.par_chunks(slab))
            .enumerate()
            .map(|(s, (xs, gs))| {
                let h = s % self.heads;
                let mut dw = vec![T::zero(); wlen];
                for j in 0..k {
                    let (lo, hi, shift) = self.range(j, len);
                    if self.per_channel {
                        for t in lo..hi {
                            let src = (t as isize + shift) as usize;
                            for c in 0..dh {
                                dw[(h * dh + c) * k + j] += gs[t * dh + c] * xs[src * dh + c];
                            }
                        }
                    } else {
                        let src0 = (lo as isize + shift) as usize;
                        let n = (hi - lo) * dh;
                        let a = &gs[lo * dh..lo * dh + n];
                        let b = &xs[src0 * dh..src0 * dh + n];
                        dw[h * k + j] += dot(a, b);
                    }
                }
                dw
            });
        super::ordered_sum(parts, wlen)
    }

    fn bwd_t<T: Real>(
        &self,
        x: &Tensor,
        w: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (_, _, len, dh) = x.dims4()?;
        let k = w.dim(1)?;
        let (dx, dw) = with_data::<T, _>(x, |xd| {
            with_data::<T, _>(w, |wd| {
                with_data::<T, _>(g, |gd| {
                    Ok((
                        self.apply(gd, wd, k, len, dh, true),
                        self.weight_grad(xd, gd, wd.len(), k, len, dh),
                    ))
                })
            })
        })?;
        Ok((
            Tensor::from_vec(dx, x.shape(), x.device())?,
            Tensor::from_vec(dw, w.shape(), w.device())?,
        ))
    }
}

impl CustomOp2 for ConvTime {
    fn name(&self) -> &'static str {
        "fused-conv-time"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, _, len, dh) = l1.shape().dims4()?;
        let k = l2.shape().dims2()?.1;
        let out = real_dtype!(s1.dtype(), "fused-conv-time", |T| Ok(
            T::to_cpu_storage_owned(self.apply(slice(s1, l1)?, slice(s2, l2)?, k, len, dh, false,))
        ))?;
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = real_dtype!(x.dtype(), "fused-conv-time", |T| self.bwd_t::<T>(x, w, g))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Stride-1, length-keeping convolution along time of `x [B, h, L, d_h]` with `weight`
/// `[h, k]` (per head) or `[h·d_h, k]` (per channel) and `left` zeros of padding on the left
/// (`k − 1 − left` on the right). `None` when the fused kernel does not apply.
pub fn conv_time(
    x: &Tensor,
    weight: &Tensor,
    left: usize,
    per_channel: bool,
) -> candle_core::Result<Option<Tensor>> {
    if !super::fusable(x)
        || weight.dtype() != x.dtype()
        || !weight.device().same_device(x.device())
        || x.rank() != 4
    {
        return Ok(None);
    }
    let (_, h, _, dh) = x.dims4()?;
    let (rows, k) = weight.dims2()?;
    if rows != if per_channel { h * dh } else { h } || left >= k.max(1) {
        return Ok(None);
    }
    let op = ConvTime {
        left,
        heads: h,
        per_channel,
    };
    Ok(Some(x.contiguous()?.apply_op2(&weight.contiguous()?, op)?))
}

/// The same filter on the model-dimension layout `[B, L, h·d_h]`, any stride, with the
/// key-padding mask folded in: `y[t] = Σ_j w_j · m[src] · x[src]`, `src = t·s + j − left`,
/// the sum over `0 ≤ src < L` (positions past `L`, up to the output's reach, are zeros).
#[derive(Clone, Debug)]
struct ConvMerged {
    left: usize,
    stride: usize,
    /// Output length L'.
    out_len: usize,
    heads: usize,
    per_channel: bool,
    /// Constant `[B, L]` 0/1 mask.
    mask: Option<Tensor>,
}

impl ConvMerged {
    /// Input position read by tap `j` of output `t`, if inside `[0, len)`.
    #[inline]
    fn src(&self, t: usize, j: usize, len: usize) -> Option<usize> {
        let src = (t * self.stride + j) as isize - self.left as isize;
        (src >= 0 && (src as usize) < len).then_some(src as usize)
    }

    /// Output position whose tap `j` reads input `src`, if any.
    #[inline]
    fn dst(&self, src: usize, j: usize) -> Option<usize> {
        let num = (src + self.left) as isize - j as isize;
        if num < 0 || !(num as usize).is_multiple_of(self.stride) {
            return None;
        }
        let t = num as usize / self.stride;
        (t < self.out_len).then_some(t)
    }

    /// The taps of output row `row` (`b·L' + t`) that read inside `[0, len)`: `(j, m[src],
    /// x[src])` in increasing `j`.
    fn taps<'a, T: Real>(
        &'a self,
        x: &'a [T],
        m: Option<&'a [T]>,
        row: usize,
        k: usize,
        len: usize,
        d: usize,
    ) -> impl Iterator<Item = (usize, T, &'a [T])> + 'a {
        let (b, t) = (row / self.out_len, row % self.out_len);
        (0..k).filter_map(move |j| {
            let src = self.src(t, j, len)?;
            let mv = m.map_or(T::one(), |m| m[b * len + src]);
            Some((j, mv, &x[(b * len + src) * d..(b * len + src + 1) * d]))
        })
    }

    /// `row[..] += w_j · mv · x[..]` for tap `j` (per head or per channel).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn axpy<T: Real>(&self, yr: &mut [T], xr: &[T], w: &[T], mv: T, k: usize, j: usize, d: usize) {
        if self.per_channel {
            for c in 0..d {
                yr[c] += w[c * k + j] * mv * xr[c];
            }
        } else {
            let dh = d / self.heads;
            for hh in 0..self.heads {
                let wj = w[hh * k + j] * mv;
                let seg = hh * dh..(hh + 1) * dh;
                for (o, &v) in yr[seg.clone()].iter_mut().zip(&xr[seg]) {
                    *o += wj * v;
                }
            }
        }
    }

    /// `y [B, L', d]` from `x [B, L, d]`.
    #[allow(clippy::too_many_arguments)]
    fn forward<T: Real>(
        &self,
        x: &[T],
        w: &[T],
        m: Option<&[T]>,
        k: usize,
        len: usize,
        d: usize,
    ) -> Vec<T> {
        let bsz = x.len() / (len * d).max(1);
        let mut y = super::zeros(bsz * self.out_len * d);
        super::par_rows(&mut y, d, k, |yr, row| {
            for (j, mv, xr) in self.taps(x, m, row, k, len, d) {
                self.axpy(yr, xr, w, mv, k, j, d);
            }
        });
        y
    }

    /// `dx [B, L, d] = m ⊙ Σ_j w_j g[dst(src, j)]` from `g [B, L', d]`.
    #[allow(clippy::too_many_arguments)]
    fn input_grad<T: Real>(
        &self,
        g: &[T],
        w: &[T],
        m: Option<&[T]>,
        k: usize,
        len: usize,
        d: usize,
    ) -> Vec<T> {
        let bsz = g.len() / (self.out_len * d).max(1);
        let mut dx = super::zeros(bsz * len * d);
        super::par_rows(&mut dx, d, k, |xr, row| {
            let (b, src) = (row / len, row % len);
            let mv = m.map_or(T::one(), |m| m[b * len + src]);
            if mv == T::zero() {
                return;
            }
            for j in 0..k {
                let Some(t) = self.dst(src, j) else {
                    continue;
                };
                let gr = &g[(b * self.out_len + t) * d..(b * self.out_len + t + 1) * d];
                self.axpy(xr, gr, w, mv, k, j, d);
            }
        });
        dx
    }

    /// dw: Σ over output rows of g[t] · m[src] · x[src] (and over the channels of a head,
    /// per head).
    #[allow(clippy::too_many_arguments)]
    fn weight_grad<T: Real>(
        &self,
        x: &[T],
        g: &[T],
        m: Option<&[T]>,
        wlen: usize,
        k: usize,
        len: usize,
        d: usize,
    ) -> Vec<T> {
        let dh = d / self.heads;
        let rpt = super::rows_per_task(d * k);
        let parts = g.par_chunks(rpt * d).enumerate().map(|(ci, gc)| {
            let mut dw = vec![T::zero(); wlen];
            for (ri, gr) in gc.chunks(d).enumerate() {
                for (j, mv, xr) in self.taps(x, m, ci * rpt + ri, k, len, d) {
                    if self.per_channel {
                        for c in 0..d {
                            dw[c * k + j] += gr[c] * mv * xr[c];
                        }
                    } else {
                        for hh in 0..self.heads {
                            let seg = hh * dh..(hh + 1) * dh;
                            dw[hh * k + j] += mv * dot(&gr[seg.clone()], &xr[seg]);
                        }
                    }
                }
            }
            dw
        });
        super::ordered_sum(parts, wlen)
    }

    fn fwd<T: Real>(
        &self,
        x: &[T],
        xl: &Layout,
        w: &[T],
        k: usize,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, len, d) = xl.shape().dims3()?;
        let y = match &self.mask {
            Some(m) => with_data::<T, _>(m, |md| Ok(self.forward(x, w, Some(md), k, len, d)))?,
            None => self.forward(x, w, None, k, len, d),
        };
        Ok((
            T::to_cpu_storage_owned(y),
            Shape::from((b, self.out_len, d)),
        ))
    }

    fn bwd_t<T: Real>(
        &self,
        x: &Tensor,
        w: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (_, len, d) = x.dims3()?;
        let k = w.dim(1)?;
        let g = g.contiguous()?;
        let run = |md: Option<&[T]>| {
            with_data::<T, _>(x, |xd| {
                with_data::<T, _>(w, |wd| {
                    with_data::<T, _>(&g, |gd| {
                        Ok((
                            self.input_grad(gd, wd, md, k, len, d),
                            self.weight_grad(xd, gd, md, wd.len(), k, len, d),
                        ))
                    })
                })
            })
        };
        let (dx, dw) = match &self.mask {
            Some(m) => with_data::<T, _>(m, |md| run(Some(md)))?,
            None => run(None)?,
        };
        Ok((
            Tensor::from_vec(dx, x.shape(), x.device())?,
            Tensor::from_vec(dw, w.shape(), w.device())?,
        ))
    }
}

impl CustomOp2 for ConvMerged {
    fn name(&self) -> &'static str {
        "fused-conv-time-merged"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let k = l2.shape().dims2()?.1;
        real_dtype!(s1.dtype(), "fused-conv-time-merged", |T| self.fwd(
            slice::<T>(s1, l1)?,
            l1,
            slice::<T>(s2, l2)?,
            k
        ))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = real_dtype!(x.dtype(), "fused-conv-time-merged", |T| self
            .bwd_t::<T>(x, w, g))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// [`conv_time`] on `x [B, L, h·d_h]` (heads left in the model dimension, channel
/// `c = head·d_h + i`) applied to `x ⊙ mask` for an optional constant `[B, L]` 0/1 mask,
/// so that the key-padding multiply, the head split and the filter are one pass (and one in
/// the backward). `None` when the fused kernel does not apply.
pub fn conv_time_merged(
    x: &Tensor,
    weight: &Tensor,
    left: usize,
    heads: usize,
    per_channel: bool,
    mask: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    let Ok((_, l, _)) = x.dims3() else {
        return Ok(None);
    };
    let k = weight.dims2()?.1;
    if left >= k.max(1) {
        return Ok(None);
    }
    conv_window_merged(x, weight, 1, left, l, heads, per_channel, mask)
}

/// Convolution along time on `x [B, L, h·d_h]` at any stride:
/// `y[t] = Σ_j w_j · m[src] · x[src]` with `src = t·stride + j − left`, `t < out_len`, the
/// sum over `0 ≤ src < L` (zeros outside, on both sides), for `weight` `[h, k]` (per head) or
/// `[h·d_h, k]` (per channel) and an optional constant `[B, L]` 0/1 `mask`; the output is
/// `[B, out_len, h·d_h]`. `None` when the fused kernel does not apply.
#[allow(clippy::too_many_arguments)]
pub fn conv_window_merged(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    left: usize,
    out_len: usize,
    heads: usize,
    per_channel: bool,
    mask: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    if !super::fusable(x)
        || weight.dtype() != x.dtype()
        || !weight.device().same_device(x.device())
        || x.rank() != 3
        || heads == 0
        || stride == 0
        || out_len == 0
    {
        return Ok(None);
    }
    let (b, l, d) = x.dims3()?;
    let (rows, k) = weight.dims2()?;
    if d % heads != 0 || rows != if per_channel { d } else { heads } || k == 0 || l == 0 {
        return Ok(None);
    }
    let Some(mask) = super::constant_mask(mask, b, l, x)? else {
        return Ok(None);
    };
    let op = ConvMerged {
        left,
        stride,
        out_len,
        heads,
        per_channel,
        mask,
    };
    Ok(Some(x.contiguous()?.apply_op2(&weight.contiguous()?, op)?))
}
