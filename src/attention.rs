//! Multi-head softmax attention: head splitting, the masked attention kernel, and the
//! Transformer's self-attention (SPEC §3.5).

use candle_core::{DType, Module, ModuleT, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::error::Result;
use crate::layers::{linear, softmax_last_dim, Dropout};
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
    let big = if dtype == DType::F16 { 3e4 } else { 1e9 };
    Ok(((mask.to_dtype(dtype)? - 1.0)? * big)?.reshape((b, 1, 1, l))?)
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

/// As [`attend`] with the logit scale given as a [`LogitScale`], which lets the scale, the key
/// bias and the softmax run as one fused kernel with its own backward where
/// [`crate::kernels::fusable`] holds (CPU f32 / f64); elsewhere it is [`attend`].
pub fn attend_scaled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: &LogitScale,
    bias: Option<&Tensor>,
    dropout: &Dropout,
    train: bool,
) -> Result<(Tensor, Tensor)> {
    let logits = q.matmul(&k.t()?)?;
    let fused = match scale {
        LogitScale::Constant(c) => crate::kernels::softmax_scaled(&logits, Ok(*c), bias)?,
        LogitScale::LogTemperature(tau) => {
            let s = tau.to_dtype(logits.dtype())?.neg()?.exp()?;
            crate::kernels::softmax_scaled(&logits, Err(&s), bias)?
        }
    };
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

/// Softmax self-attention with 1/√d_h and key masking: `q_proj`, `k_proj`, `v_proj`, `o_proj`.
#[derive(Clone, Debug)]
pub struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    drop: Dropout,
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
        })
    }

    /// `x [B, L, d]`, optional `[B, L]` 0/1 mask → `[B, L, d]`.
    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let q = split_heads(&self.q.forward(x)?, self.heads)?;
        let k = split_heads(&self.k.forward(x)?, self.heads)?;
        let v = split_heads(&self.v.forward(x)?, self.heads)?;
        let s = 1.0 / (q.dim(3)? as f64).sqrt();
        let bias = mask.map(|m| key_bias(m, x.dtype())).transpose()?;
        let (y, _) = attend_scaled(
            &q,
            &k,
            &v,
            &LogitScale::Constant(s),
            bias.as_ref(),
            &self.drop,
            train,
        )?;
        Ok(self.o.forward(&merge_heads(&y)?)?)
    }
}
