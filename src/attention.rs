//! Multi-head softmax attention: head splitting, the masked attention kernel, and the
//! Transformer's self-attention (guide §3.5).

use candle_core::{DType, Module, ModuleT, Tensor};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::kernels::HeadLayout;
use crate::layers::{linear, softmax_last_dim, Dropout, Linear};
use crate::temperature::LogitScale;

/// `[B, n, d] → [B, h, n, d_h]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    Ok(x.reshape((b, n, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// `[B, h, n, d_h] → [B, n, d]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, n, dh) = x.dims4()?;
    Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, n, h * dh))?)
}

/// Additive key bias `[B, 1, 1, L]` from a `[B, L]` 0/1 mask: 0 at valid keys, a large negative
/// value at pads (−1e9, or −3·10⁴ in f16 so it cannot overflow).
pub fn key_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, l) = mask.dims2()?;
    Ok(((mask.to_dtype(dtype)? - 1.0)? * mask_value(dtype))?.reshape((b, 1, 1, l))?)
}

/// The magnitude that stands for ∞ in masks of `dtype`: 10⁹, or 3·10⁴ in f16 (whose largest
/// finite value is 65,504).
pub fn mask_value(dtype: DType) -> f64 {
    if dtype == DType::F16 {
        3e4
    } else {
        1e9
    }
}

/// `softmax(q·kᵀ·s + bias)` and its product with v: q `[B,h,n,d_h]`, k and v `[B,h,L,d_h]`.
/// Returns (output `[B,h,n,d_h]`, weights `[B,h,n,L]` before dropout).
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: impl Fn(&Tensor) -> Result<Tensor>,
    bias: Option<&Tensor>,
    dropout: &Dropout,
    train: bool,
) -> Result<(Tensor, Tensor)> {
    let logits = scale(&q.matmul(&k.t()?)?)?;
    let logits = match bias {
        Some(b) => logits.broadcast_add(b)?,
        None => logits,
    };
    let w = softmax_last_dim(&logits)?;
    let wd = dropout.forward_t(&w, train)?;
    Ok((wd.matmul(v)?, w))
}

/// As [`attend`] with the logit scale given as a [`LogitScale`]. Where
/// [`crate::kernels::fusable`] holds (CPU f32 / f64) the whole attention runs as one fused
/// kernel per (batch, head) with its own backward ([`crate::kernels::attention`]; a learned
/// scale is multiplied into whichever of q and k has fewer rows), and the weights come back
/// detached; elsewhere it is [`attend`] (with the softmax fused where it can be).
pub fn attend_scaled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: &LogitScale,
    bias: Option<&Tensor>,
    dropout: &Dropout,
    train: bool,
) -> Result<(Tensor, Tensor)> {
    if let Some(r) = fused(q, k, v, HeadLayout::Split, scale, bias, dropout, train)? {
        return Ok(r);
    }
    let logits = q.matmul(&k.t()?)?;
    let factor = scale.factor(logits.dtype())?;
    let fused = crate::kernels::softmax_scaled(&logits, factor.as_ref().copied(), bias)?;
    let w = match fused {
        Some(w) => w,
        None => {
            let logits = scale.apply(&logits)?;
            let logits = match bias {
                Some(b) => logits.broadcast_add(b)?,
                None => logits,
            };
            softmax_last_dim(&logits)?
        }
    };
    let wd = dropout.forward_t(&w, train)?;
    Ok((wd.matmul(v)?, w))
}

/// [`attend_scaled`] with the heads left in the model dimension: q `[B, n, h·d_h]`,
/// k `[B, L, h·d_h]`, v `[B, L, h·d_v]` → (y `[B, n, h·d_v]`, weights `[B, h, n, L]`). The
/// fused kernel reads and writes the heads through strides, so nothing is split or merged;
/// elsewhere the heads are split, [`attend_scaled`] runs, and they are merged back.
#[allow(clippy::too_many_arguments)]
pub fn attend_merged(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: &LogitScale,
    bias: Option<&Tensor>,
    dropout: &Dropout,
    train: bool,
) -> Result<(Tensor, Tensor)> {
    let layout = HeadLayout::Merged { heads };
    if let Some(r) = fused(q, k, v, layout, scale, bias, dropout, train)? {
        return Ok(r);
    }
    let (y, w) = attend_scaled(
        &split_heads(q, heads)?,
        &split_heads(k, heads)?,
        &split_heads(v, heads)?,
        scale,
        bias,
        dropout,
        train,
    )?;
    Ok((merge_heads(&y)?, w))
}

/// The fused kernel where it applies (`None` elsewhere), with the dropout keep-mask drawn
/// from `dropout`'s stream exactly as [`Dropout`] would draw it.
#[allow(clippy::too_many_arguments)]
fn fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    scale: &LogitScale,
    bias: Option<&Tensor>,
    dropout: &Dropout,
    train: bool,
) -> Result<Option<(Tensor, Tensor)>> {
    if !crate::kernels::enabled("attention", q) {
        return Ok(None);
    }
    let (b, h, n, l) = match layout {
        HeadLayout::Split if q.rank() == 4 && k.rank() == 4 => {
            (q.dim(0)?, q.dim(1)?, q.dim(2)?, k.dim(2)?)
        }
        HeadLayout::Merged { heads } if q.rank() == 3 && k.rank() == 3 => {
            (q.dim(0)?, heads, q.dim(1)?, k.dim(1)?)
        }
        _ => return Ok(None),
    };
    let keep = dropout.keep_mask(b * h * n * l, train);
    use crate::kernels::attention as kernel;
    Ok(match scale.factor(q.dtype())? {
        Ok(c) => kernel(q, k, v, layout, c, bias, keep)?,
        Err(s) => {
            if n <= l {
                kernel(&q.broadcast_mul(&s)?, k, v, layout, 1.0, bias, keep)?
            } else {
                kernel(q, &k.broadcast_mul(&s)?, v, layout, 1.0, bias, keep)?
            }
        }
    })
}

/// Softmax self-attention with 1/√d_h and key masking: `q_proj`, `k_proj`, `v_proj`, `o_proj`;
/// optionally with a length-keeping filter F on the keys and values (`K̃ = F(K)`, `Ṽ = F(V)`,
/// per head along time, pads zeroed first), the locality control of
/// [`crate::config::BlockConfig::FilteredTransformer`].
#[derive(Clone, Debug)]
pub struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    drop: Dropout,
    filter: Option<std::sync::Arc<dyn crate::filter::Filter>>,
}

impl SelfAttention {
    /// Creates the four d→d projections under `vb`.
    pub fn new(d: usize, heads: usize, drop: Dropout, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: linear(d, d, vb.pp("q_proj"))?,
            k: linear(d, d, vb.pp("k_proj"))?,
            v: linear(d, d, vb.pp("v_proj"))?,
            o: linear(d, d, vb.pp("o_proj"))?,
            heads,
            drop,
            filter: None,
        })
    }

    /// The same attention with `filter` applied to its keys and values.
    pub fn with_filter(mut self, filter: std::sync::Arc<dyn crate::filter::Filter>) -> Self {
        self.filter = Some(filter);
        self
    }

    /// `x [B, L, d]`, optional `[B, L]` 0/1 mask → `[B, L, d]`.
    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let q = self.q.forward(x)?;
        let mut k = self.k.forward(x)?;
        let mut v = self.v.forward(x)?;
        if let Some(f) = &self.filter {
            let m = mask.map(|m| m.to_dtype(x.dtype())).transpose()?;
            k = crate::filter::filter_merged(f.as_ref(), &k, self.heads, m.as_ref())?;
            v = crate::filter::filter_merged(f.as_ref(), &v, self.heads, m.as_ref())?;
        }
        let s = 1.0 / ((q.dim(2)? / self.heads) as f64).sqrt();
        let bias = mask.map(|m| key_bias(m, x.dtype())).transpose()?;
        let (y, _) = attend_merged(
            &q,
            &k,
            &v,
            self.heads,
            &LogitScale::Constant(s),
            bias.as_ref(),
            &self.drop,
            train,
        )?;
        Ok(self.o.forward(&y)?)
    }
}
