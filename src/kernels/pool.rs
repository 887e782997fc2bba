//! ConvLuna's max-pool filter on the model-dimension layout `[B, L, d]`, fused:
//! `y[t, c] = max { x[src, c] : src = t·s + j, j < k, src < L, m[src] = 1 }`, and 0 for a
//! window without a valid position (it is masked out of the attention). Padding never enters
//! a max. The gradient of `y[t, c]` goes to the position that won, the first one on a tie
//! (as PyTorch's `max_pool1d`).

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

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

    /// For each output element, the input position that wins its max (`u32::MAX`: none).
    fn argmax<T: Real>(&self, x: &[T], m: Option<&[T]>, len: usize, d: usize) -> Vec<u32> {
        let n = x.len() / (len * d).max(1);
        self.per_output_row(n, d, u32::MAX, |ar: &mut [u32], b, t| {
            let mut first = true;
            for src in self.window(m, b, t, len) {
                let xr = &x[(b * len + src) * d..(b * len + src + 1) * d];
                if first {
                    ar.fill(src as u32);
                    first = false;
                    continue;
                }
                for c in 0..d {
                    if xr[c] > x[(b * len + ar[c] as usize) * d + c] {
                        ar[c] = src as u32;
                    }
                }
            }
        })
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
                    for (o, &v) in yr.iter_mut().zip(xr) {
                        if v > *o {
                            *o = v;
                        }
                    }
                }
            }
        })
    }

    /// `dx[src, c] = Σ_t [argmax(t, c) = src] · g[t, c]`, gathered per input row over the
    /// windows that hold it, in increasing t (a fixed order: deterministic).
    fn input_grad<T: Real>(
        &self,
        x: &[T],
        g: &[T],
        m: Option<&[T]>,
        len: usize,
        d: usize,
    ) -> Vec<T> {
        let arg = self.argmax(x, m, len, d);
        let mut dx = super::zeros(x.len());
        super::par_rows(&mut dx, d, self.kernel, |xr, row| {
            let (b, src) = (row / len, row % len);
            // windows t with t·s ≤ src < t·s + k
            let lo = (src + 1).saturating_sub(self.kernel).div_ceil(self.stride);
            let hi = (src / self.stride + 1).min(self.out_len);
            for t in lo..hi {
                let o = (b * self.out_len + t) * d;
                let (ar, gr) = (&arg[o..o + d], &g[o..o + d]);
                for c in 0..d {
                    if ar[c] == src as u32 {
                        xr[c] += gr[c];
                    }
                }
            }
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

    fn bwd_t<T: Real>(&self, x: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
        let (_, len, d) = x.dims3()?;
        let g = g.contiguous()?;
        let dx = with_data::<T, _>(x, |xd| {
            with_data::<T, _>(&g, |gd| match &self.mask {
                Some(m) => with_data::<T, _>(m, |md| Ok(self.input_grad(xd, gd, Some(md), len, d))),
                None => Ok(self.input_grad(xd, gd, None, len, d)),
            })
        })?;
        Tensor::from_vec(dx, x.shape(), x.device())
    }
}

impl CustomOp1 for MaxPoolMerged {
    fn name(&self) -> &'static str {
        "fused-max-pool-merged"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        match s.dtype() {
            DType::F32 => self.fwd(slice::<f32>(s, l)?, l),
            DType::F64 => self.fwd(slice::<f64>(s, l)?, l),
            dt => Err(candle_core::Error::UnsupportedDTypeForOp(
                dt,
                "fused-max-pool-merged",
            )),
        }
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(match x.dtype() {
            DType::F32 => self.bwd_t::<f32>(x, g)?,
            DType::F64 => self.bwd_t::<f64>(x, g)?,
            dt => {
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    dt,
                    "fused-max-pool-merged",
                ))
            }
        }))
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
    if !super::enabled("pool", x) || x.rank() != 3 || kernel == 0 || stride == 0 || out_len == 0 {
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
