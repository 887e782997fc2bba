//! Multi-head *pack* attention: the memory P reads the (filtered) input X (guide §3.1, §3.4).
//!
//! ```text
//! Q = P·W_q   K = X·W_k   V = X or X·W_v          (pads zeroed in K, V when masking)
//! K̃ = F(K)    Ṽ = F(V)                            (per head, along time)
//! A = softmax_L'( Q·K̃ᵀ · s + bias(mask') )        s = 1/√d_h or exp(−τ)
//! Y_p = merge(A·Ṽ) [·W_o]
//! ```
//! Shapes: X `[B, L, d]`, P `[B, m, d]`, mask `[B, L]` → Y_p `[B, m, d]`, A `[B, h, m, L']`.
//!
//! In masked mode a length-changing filter (pool, stride > 1) first gets K, V and the mask
//! zero-padded on the right ([`Filter::masked_right_pad`]) so that a window starts at every
//! `t·s < L`: L' = ⌊(L−1)/s⌋ + 1 instead of ⌊(L−k)/s⌋ + 1. Without it the number of windows
//! would depend on how much padding follows the sequence, and appending padding would change
//! the memory (guide §3.4 demands that it does not). A missing mask means "all valid".

use std::sync::Arc;

use candle_core::{Module, Tensor};

use crate::error::Result;
use crate::filter::Filter;
use crate::layers::{Dropout, Linear};
use crate::ops::{
    attend_merged, attend_merged_values, attend_scaled, key_bias, merge_heads, split_heads,
};
use crate::temperature::LogitScale;

/// The result of packing.
#[derive(Clone, Debug)]
pub struct Packed {
    /// Packed memory Y_p `[B, m, d]`.
    pub memory: Tensor,
    /// Pack-attention weights A `[B, h, m, L']` (before dropout):
    /// [`PackAttention::forward_traced`] only (`None` from [`PackAttention::forward_t`], which
    /// keeps none, so that training does not store `B·h·m·L'` weights it never reads).
    pub attention: Option<Tensor>,
    /// The filtered mask `[B, L']` used (all ones when masking is off).
    pub mask: Option<Tensor>,
}

/// Pack attention. Projections are passed in so that they can be shared with unpacking.
#[derive(Clone, Debug)]
pub struct PackAttention {
    q: Linear,
    k: Linear,
    v: Option<Linear>,
    o: Option<Linear>,
    filter: Arc<dyn Filter>,
    scale: LogitScale,
    heads: usize,
    masked: bool,
    drop: Dropout,
}

impl PackAttention {
    /// Assembles a pack attention. `v = None` uses X itself as values (ConvLuna);
    /// `o = None` skips the output projection (Ma et al.). With `masked = false` padding takes
    /// part in packing, as in the authors' code.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        q: Linear,
        k: Linear,
        v: Option<Linear>,
        o: Option<Linear>,
        filter: Arc<dyn Filter>,
        scale: LogitScale,
        heads: usize,
        masked: bool,
        drop: Dropout,
    ) -> Self {
        Self {
            q,
            k,
            v,
            o,
            filter,
            scale,
            heads,
            masked,
            drop,
        }
    }

    /// The filter.
    pub fn filter(&self) -> &Arc<dyn Filter> {
        &self.filter
    }

    /// The logit scale (to read τ).
    pub fn scale(&self) -> &LogitScale {
        &self.scale
    }

    /// The packing mask `[B, L]` with the filter's [`Filter::masked_right_pad`] zeros appended
    /// (the positions that let every input be read by a window), and their number.
    fn covered(&self, m: &Tensor) -> Result<(Tensor, usize)> {
        let pad = self.filter.masked_right_pad(m.dim(1)?);
        Ok(if pad > 0 {
            (m.pad_with_zeros(1, 0, pad)?, pad)
        } else {
            (m.clone(), 0)
        })
    }

    /// Packs `x [B, L, d]` into memory `p [B, m, d]`; `mask [B, L]` float 0/1. The attention
    /// weights are not returned ([`Packed::attention`] is `None`): where the fused kernel runs
    /// they are never stored (see [`crate::kernels::attention_values`]).
    pub fn forward_t(
        &self,
        x: &Tensor,
        p: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Packed> {
        self.run(x, p, mask, train, false)
    }

    /// [`Self::forward_t`] with the attention weights `[B, h, m, L']` in
    /// [`Packed::attention`], for diagnostics (the same values and gradients).
    pub fn forward_traced(
        &self,
        x: &Tensor,
        p: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Packed> {
        self.run(x, p, mask, train, true)
    }

    /// [`Self::forward_traced`] when `weights`, else [`Self::forward_t`].
    pub(crate) fn run(
        &self,
        x: &Tensor,
        p: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
        weights: bool,
    ) -> Result<Packed> {
        let mut k = self.k.forward(x)?;
        let mut v = match &self.v {
            Some(v) => v.forward(x)?,
            None => x.clone(),
        };
        // The packing mask `[B, L]` (all ones without one), in masked mode only.
        let m = if self.masked {
            let (b, l, _) = x.dims3()?;
            Some(match mask {
                Some(m) => m.to_dtype(x.dtype())?,
                None => Tensor::ones((b, l), x.dtype(), x.device())?,
            })
        } else {
            None
        };
        // CPU f32/f64 with a filter that has a merged-layout kernel: mask, filter and
        // attention read the heads in place (no split, no merge, the mask inside the filter).
        if crate::ops::merged_packing(x) {
            if let Some(kf) = self.filter.forward_merged(&k, self.heads, m.as_ref())? {
                if let Some(vf) = self.filter.forward_merged(&v, self.heads, m.as_ref())? {
                    let fmask = match &m {
                        Some(m) => Some(self.filter.filter_mask(&self.covered(m)?.0)?),
                        None => None,
                    };
                    let bias = fmask.as_ref().map(|m| key_bias(m, x.dtype())).transpose()?;
                    let q = self.q.forward(p)?;
                    let (q, b, h, s, d) = (&q, bias.as_ref(), self.heads, &self.scale, &self.drop);
                    let (y, a) = if weights {
                        let (y, a) = attend_merged(q, &kf, &vf, h, s, b, d, train)?;
                        (y, Some(a))
                    } else {
                        (attend_merged_values(q, &kf, &vf, h, s, b, d, train)?, None)
                    };
                    let y = match &self.o {
                        Some(o) => o.forward(&y)?,
                        None => y,
                    };
                    return Ok(Packed {
                        memory: y,
                        attention: a,
                        mask: fmask,
                    });
                }
            }
        }
        let mut fmask = None;
        if let Some(m) = &m {
            let (m, pad) = self.covered(m)?;
            if pad > 0 {
                k = k.pad_with_zeros(1, 0, pad)?;
                v = v.pad_with_zeros(1, 0, pad)?;
            }
            fmask = Some((self.filter.filter_mask(&m)?, m));
        }
        let (k, v) = match &fmask {
            Some((_, m)) => (
                self.filter
                    .forward_masked(&split_heads(&k, self.heads)?, m)?,
                self.filter
                    .forward_masked(&split_heads(&v, self.heads)?, m)?,
            ),
            None => (
                self.filter.forward(&split_heads(&k, self.heads)?)?,
                self.filter.forward(&split_heads(&v, self.heads)?)?,
            ),
        };
        let fmask = fmask.map(|(f, _)| f);
        let bias = fmask.as_ref().map(|m| key_bias(m, x.dtype())).transpose()?;
        let q = split_heads(&self.q.forward(p)?, self.heads)?;
        let (y, a) = attend_scaled(&q, &k, &v, &self.scale, bias.as_ref(), &self.drop, train)?;
        let a = weights.then_some(a);
        let y = merge_heads(&y)?;
        let y = match &self.o {
            Some(o) => o.forward(&y)?,
            None => y,
        };
        Ok(Packed {
            memory: y,
            attention: a,
            mask: fmask,
        })
    }
}
