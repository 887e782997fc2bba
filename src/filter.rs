//! The filter F of ConvLuna's packing attention (guide §3.2): applied along time, per head,
//! to the keys and values on `[B, h, L, d_h]` before memory reads them.
//!
//! On CPU f32 / f64 the packing attention calls [`Filter::forward_merged`], which runs fused
//! kernels with their own backward ([`crate::kernels::conv_window_merged`],
//! [`crate::kernels::max_pool_merged`]) on the model-dimension layout, mask included. Elsewhere
//! (and as the reference those kernels are tested against) conv and max-pool are written as
//! sums / maxima of shifted slices (`narrow`, or an `index_select` for stride > 1). This avoids
//! Candle 0.11's `conv1d`, whose kernel gradient is
//! wrong for batch > 1 with several output channels and whose input gradient is wrong with
//! padding 0 and batch > 1, and its `max_pool2d`, whose backward scales by 1/(window area) and
//! fails when kernel ≠ stride. Users plug in their own filter through the [`Filter`] trait.

use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use crate::config::FilterConfig;
use crate::error::{Error, Result};

/// A filter along time on per-head keys or values.
pub trait Filter: std::fmt::Debug + Send + Sync {
    /// `[B, h, L, d_h] → [B, h, L', d_h]` with `L' = self.output_len(L)?`.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// Output length for an input of length `len`; an error if `len` is too short.
    fn output_len(&self, len: usize) -> Result<usize>;
    /// Carries a `[B, L]` 0/1 padding mask (float) to `[B, L']`. For length-changing filters a
    /// filtered position is valid where the inputs it reads hold at least one valid position
    /// ([`windowed_mask`] does this for any sliding-window filter); length-keeping filters
    /// return the mask unchanged.
    fn filter_mask(&self, mask: &Tensor) -> Result<Tensor>;
    /// Zero positions appended on the right, in masked mode only, before filtering a sequence
    /// of length `len`, so that every input position is read by some output window. This
    /// makes a length-changing filter independent of how much padding follows the sequence.
    /// The default (0) suits filters that keep the length.
    fn masked_right_pad(&self, len: usize) -> usize {
        let _ = len;
        0
    }
    /// The filter on `x [B, h, L, d_h]` whose positions with `mask [B, L]` (float 0/1) equal
    /// to 0 are padding. The default zeroes the pads and filters (right for linear filters: a
    /// pad then adds nothing to any window). A filter for which a zero is not neutral must
    /// override it: [`MaxPoolFilter`] gives pads −∞ so that they never win a max.
    fn forward_masked(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l) = mask.dims2()?;
        let m = mask.to_dtype(x.dtype())?.reshape((b, 1, l, 1))?;
        self.forward(&x.broadcast_mul(&m)?)
    }
    /// The same filter with the heads left in the model dimension, `[B, L, h·d_h] →
    /// [B, L', h·d_h]`, for a filter with a fused kernel for that layout. Without a mask it
    /// equals [`Filter::forward`] on the split heads (`L' = output_len(L)`); with a `[B, L]` 0/1
    /// `mask` it equals [`Filter::forward_masked`] on the split heads after
    /// [`Filter::masked_right_pad`] zeros (`L' = output_len(L + masked_right_pad(L))`).
    /// `None` (the default) means "not available": the caller then splits the heads and calls
    /// those.
    fn forward_merged(
        &self,
        x: &Tensor,
        heads: usize,
        mask: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let _ = (x, heads, mask);
        Ok(None)
    }
}

/// A sliding window along time: output `t` reads inputs `t·stride + j − left`, `j < kernel`,
/// zero outside `[0, L)`. Stride 1 uses "same" padding (`left = ⌊(k−1)/2⌋`, output length L);
/// larger strides no padding (output length ⌊(L−k)/s⌋ + 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Window length k.
    pub kernel: usize,
    /// Stride s.
    pub stride: usize,
    /// Zero padding on the left.
    pub left: usize,
    /// Zero padding on the right.
    pub right: usize,
}

impl Window {
    /// Same-padded at stride 1, unpadded otherwise (the convolution rule of guide §3.2).
    pub fn conv(kernel: usize, stride: usize) -> Self {
        if stride == 1 {
            let left = (kernel - 1) / 2;
            Self {
                kernel,
                stride,
                left,
                right: kernel - 1 - left,
            }
        } else {
            Self {
                kernel,
                stride,
                left: 0,
                right: 0,
            }
        }
    }

    /// Never padded (the pooling rule of guide §3.2).
    pub fn pool(kernel: usize, stride: usize) -> Self {
        Self {
            kernel,
            stride,
            left: 0,
            right: 0,
        }
    }

    /// Zeros to append in masked mode so that a window starts at every `t·s < len`
    /// (0 for padded stride-1 windows, which already cover every position).
    pub fn coverage_pad(&self, len: usize) -> usize {
        if self.left + self.right > 0 || len == 0 {
            return 0;
        }
        let starts = (len - 1) / self.stride + 1;
        ((starts - 1) * self.stride + self.kernel).saturating_sub(len)
    }

    /// Output length of a fused merged-layout filter ([`Filter::forward_merged`]) on `len`
    /// positions: with a mask, after [`Window::coverage_pad`] zeros.
    pub fn merged_output_len(&self, len: usize, masked: bool) -> Result<usize> {
        let cover = if masked { self.coverage_pad(len) } else { 0 };
        self.output_len(len + cover)
    }

    /// Output length for input length `len`.
    pub fn output_len(&self, len: usize) -> Result<usize> {
        let padded = len + self.left + self.right;
        if padded < self.kernel || len == 0 {
            return Err(Error::SequenceTooShort {
                len,
                kernel: self.kernel,
                stride: self.stride,
            });
        }
        Ok((padded - self.kernel) / self.stride + 1)
    }

    /// The k shifted views of `x` (time on dim 2 of a rank-4 tensor), each `[B, h, L', c]`:
    /// `taps[j][t] = x[t·s + j − left]`.
    pub fn taps(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let len = x.dim(2)?;
        let out = self.output_len(len)?;
        let xp = if self.left + self.right > 0 {
            x.pad_with_zeros(2, self.left, self.right)?
        } else {
            x.clone()
        };
        let mut taps = Vec::with_capacity(self.kernel);
        for j in 0..self.kernel {
            let t = if self.stride == 1 {
                xp.narrow(2, j, out)?
            } else {
                let idx: Vec<u32> = (0..out).map(|t| (t * self.stride + j) as u32).collect();
                let idx = Tensor::from_vec(idx, out, x.device())?;
                xp.index_select(&idx, 2)?
            };
            taps.push(t);
        }
        Ok(taps)
    }
}

/// Filters a `[B, L]` 0/1 mask through `window`: valid where the window holds a valid input.
pub fn windowed_mask(window: &Window, mask: &Tensor) -> Result<Tensor> {
    let (b, l) = mask.dims2()?;
    let m4 = mask.reshape((b, 1, l, 1))?;
    let taps = window.taps(&m4)?;
    let mut acc = taps[0].clone();
    for t in &taps[1..] {
        acc = acc.maximum(t)?;
    }
    let lo = acc.dim(2)?;
    Ok(acc.reshape((b, lo))?.detach())
}

/// F(x) = x.
#[derive(Clone, Debug, Default)]
pub struct IdentityFilter;

impl Filter for IdentityFilter {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn forward_merged(
        &self,
        x: &Tensor,
        _heads: usize,
        mask: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        Ok(Some(match mask {
            Some(m) => crate::ops::mask_rows(x, m)?,
            None => x.clone(),
        }))
    }
    fn output_len(&self, len: usize) -> Result<usize> {
        Ok(len)
    }
    fn filter_mask(&self, mask: &Tensor) -> Result<Tensor> {
        Ok(mask.clone())
    }
}

/// Convolution along time without bias: `out[t] = Σ_j w_j · in[t·s + j − left]`.
/// Per head (weight `[h, k]`, the authors' grouped conv) or per channel (weight `[d, k]`,
/// channel `c = head·d_h + i`). Weight initialised U(−1/√k, 1/√k), named `weight`.
#[derive(Clone, Debug)]
pub struct ConvFilter {
    weight: Tensor,
    window: Window,
    per_channel: bool,
}

impl ConvFilter {
    /// Creates the kernel under `vb` for `heads` heads of width `head_dim`.
    pub fn new(
        kernel: usize,
        stride: usize,
        per_channel: bool,
        heads: usize,
        head_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        if kernel == 0 || stride == 0 {
            return Err(Error::config(
                "filter",
                "kernel and stride must be at least 1",
            ));
        }
        let bound = 1.0 / (kernel as f64).sqrt();
        let rows = if per_channel { heads * head_dim } else { heads };
        let weight = vb.get_with_hints(
            (rows, kernel),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(Self {
            weight,
            window: Window::conv(kernel, stride),
            per_channel,
        })
    }

    /// The kernel, `[h, k]` or `[d, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Filter for ConvFilter {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, _, dh) = x.dims4()?;
        let rows = self.weight.dim(0)?;
        let expected = if self.per_channel { h * dh } else { h };
        if rows != expected {
            return Err(Error::shape(
                "filter input",
                format!("[B, h, L, d_h] with h·d_h matching the kernel's {rows} rows"),
                x.dims(),
            ));
        }
        let w = self.weight.to_dtype(x.dtype())?;
        if self.window.stride == 1 {
            // Fused CPU kernel with its own backward (f32 / f64); the composite ops elsewhere.
            if let Some(y) = crate::ops::conv_time(x, &w, self.window.left, self.per_channel)? {
                return Ok(y);
            }
        }
        let taps = self.window.taps(x)?;
        let mut acc: Option<Tensor> = None;
        for (j, tap) in taps.iter().enumerate() {
            let wj = w.narrow(1, j, 1)?;
            let wj = if self.per_channel {
                wj.reshape((1, h, 1, dh))?
            } else {
                wj.reshape((1, h, 1, 1))?
            };
            let term = tap.broadcast_mul(&wj)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        acc.ok_or_else(|| Error::config("filter.kernel", "must be at least 1"))
    }
    fn forward_merged(
        &self,
        x: &Tensor,
        heads: usize,
        mask: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let out = self.window.merged_output_len(x.dim(1)?, mask.is_some())?;
        let w = self.weight.to_dtype(x.dtype())?;
        Ok(crate::ops::conv_window_merged(
            x,
            &w,
            self.window.stride,
            self.window.left,
            out,
            heads,
            self.per_channel,
            mask,
        )?)
    }
    fn output_len(&self, len: usize) -> Result<usize> {
        self.window.output_len(len)
    }
    fn filter_mask(&self, mask: &Tensor) -> Result<Tensor> {
        if self.window.stride == 1 {
            // "same" padding keeps the length: position t stays valid exactly when input t is
            // (guide §3.4 carries the mask through windows only where the length changes).
            Ok(mask.clone())
        } else {
            windowed_mask(&self.window, mask)
        }
    }
    fn masked_right_pad(&self, len: usize) -> usize {
        self.window.coverage_pad(len)
    }
}

/// Per-channel max over windows of k, stride s, no padding.
#[derive(Clone, Debug)]
pub struct MaxPoolFilter {
    window: Window,
}

impl MaxPoolFilter {
    /// A max-pool of `kernel` with `stride`.
    pub fn new(kernel: usize, stride: usize) -> Result<Self> {
        if kernel == 0 || stride == 0 {
            return Err(Error::config(
                "filter",
                "kernel and stride must be at least 1",
            ));
        }
        Ok(Self {
            window: Window::pool(kernel, stride),
        })
    }
}

impl Filter for MaxPoolFilter {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.dims4()?;
        let taps = self.window.taps(x)?;
        let mut acc = taps[0].clone();
        for t in &taps[1..] {
            acc = acc.maximum(t)?;
        }
        Ok(acc)
    }
    fn output_len(&self, len: usize) -> Result<usize> {
        self.window.output_len(len)
    }
    /// The fused kernel ([`crate::kernels::max_pool_merged`]) on CPU f32 / f64: pads are
    /// skipped instead of lowered, with the same result; the gradient of a max goes to the
    /// first position that attains it (the composite path splits it between ties).
    fn forward_merged(
        &self,
        x: &Tensor,
        _heads: usize,
        mask: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let out = self.window.merged_output_len(x.dim(1)?, mask.is_some())?;
        Ok(crate::ops::max_pool_merged(
            x,
            self.window.kernel,
            self.window.stride,
            out,
            mask,
        )?)
    }
    fn filter_mask(&self, mask: &Tensor) -> Result<Tensor> {
        windowed_mask(&self.window, mask)
    }
    fn masked_right_pad(&self, len: usize) -> usize {
        self.window.coverage_pad(len)
    }
    /// Pads count as −∞ inside the max (a large negative, [`crate::ops::mask_value`]),
    /// so a pad never wins over a real key, however negative; a window that holds only
    /// padding gives 0 (it is masked out of the attention by [`Filter::filter_mask`]).
    fn forward_masked(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l) = mask.dims2()?;
        let m = mask.to_dtype(x.dtype())?;
        let neg = ((&m - 1.0)? * crate::ops::mask_value(x.dtype()))?.reshape((b, 1, l, 1))?;
        let y = self.forward(&x.broadcast_add(&neg)?)?;
        let fm = self.filter_mask(&m)?;
        let lo = fm.dim(1)?;
        Ok(y.broadcast_mul(&fm.reshape((b, 1, lo, 1))?)?)
    }
}

/// Applies a length-keeping `filter` to `x [B, L, h·d_h]` with the heads in the model dimension
/// (`mask [B, L]` float 0/1 marks padding, handled by [`Filter::forward_masked`]): the fused
/// merged-layout path where the filter has one, else split heads, filter, merge.
pub fn filter_merged(
    filter: &dyn Filter,
    x: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (_, l, _) = x.dims3()?;
    if filter.output_len(l)? != l {
        return Err(Error::config(
            "filter",
            "this block needs a filter that keeps the length (stride 1, padded)",
        ));
    }
    if let Some(y) = filter.forward_merged(x, heads, mask)? {
        return Ok(y);
    }
    let xs = crate::ops::split_heads(x, heads)?;
    let y = match mask {
        Some(m) => filter.forward_masked(&xs, m)?,
        None => filter.forward(&xs)?,
    };
    crate::ops::merge_heads(&y)
}

/// Builds the filter named by `cfg`; conv kernels are created under `vb` (`weight`).
pub fn build(
    cfg: &FilterConfig,
    heads: usize,
    head_dim: usize,
    vb: VarBuilder,
) -> Result<Arc<dyn Filter>> {
    Ok(match *cfg {
        FilterConfig::Identity => Arc::new(IdentityFilter),
        FilterConfig::Conv {
            kernel,
            stride,
            per_channel,
        } => Arc::new(ConvFilter::new(
            kernel,
            stride,
            per_channel,
            heads,
            head_dim,
            vb,
        )?),
        FilterConfig::MaxPool { kernel, stride } => Arc::new(MaxPoolFilter::new(kernel, stride)?),
    })
}
