//! The one place that decides how each operation runs: a fused kernel of the crate's own
//! ([`crate::kernels`]: CPU, f32 and f64, each with its own backward) or Candle's composite
//! ops (every other device and dtype, and wherever a kernel is switched off).
//!
//! Model code (layers, attention, filters, pack and unpack) calls the functions of this
//! module and never a kernel directly, so a CUDA or Metal kernel plugs in here, in
//! [`fused`] and the function it serves, and nowhere else. Every function has the same
//! result either way (the composite path is the reference the kernels are tested against on
//! every gradient, `tests/kernels.rs`).
//!
//! `CONVLUNA_NO_FUSED=1` (or `all`) forces the composite ops everywhere, and a
//! comma-separated list of kernel names ([`Kernel::name`]) switches off single kernels; this
//! exists to measure what each kernel buys (BENCHMARKS.md).

use candle_core::{DType, Module, ModuleT, Tensor, D};

use crate::dropout::Dropout;
use crate::error::Result;
pub use crate::kernels::{HeadLayout, Scale};
use crate::temperature::LogitScale;

/// The fused kernels [`fused`] decides about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Softmax attention with its weights, bias and dropout ([`attend_scaled`]).
    Attention,
    /// `x·Wᵀ + b` ([`linear`]).
    Linear,
    /// The whole feed-forward network ([`feed_forward`]).
    Ffn,
    /// The bias add and GELU after the FFN's first layer ([`feed_forward`]).
    Gelu,
    /// Row softmax ([`softmax_last_dim`], the composite attention).
    Softmax,
    /// LayerNorm ([`layer_norm`]).
    LayerNorm,
    /// The residual sum fused into the LayerNorm after it ([`add_layer_norm`]).
    Residual,
    /// The ConvLuna conv filters ([`conv_time`], [`conv_window_merged`]).
    Conv,
    /// The max-pool filter ([`max_pool_merged`]).
    Pool,
    /// Rows times a constant mask ([`mask_rows`]).
    Mask,
}

impl Kernel {
    /// The name `CONVLUNA_NO_FUSED` uses.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Attention => "attention",
            Kernel::Linear => "linear",
            Kernel::Ffn => "ffn",
            Kernel::Gelu => "gelu",
            Kernel::Softmax => "softmax",
            Kernel::LayerNorm => "layer_norm",
            Kernel::Residual => "residual",
            Kernel::Conv => "conv",
            Kernel::Pool => "pool",
            Kernel::Mask => "mask",
        }
    }

    /// Whether the kernel is mostly matrix products (left to Apple's BLAS under the
    /// `accelerate` feature; the `mkl` feature keeps them, see [`fused`]).
    fn is_gemm(self) -> bool {
        matches!(self, Kernel::Attention | Kernel::Linear | Kernel::Ffn)
    }
}

/// Whether `kernel` runs fused for tensors like `t`: a CPU tensor of f32 or f64, the kernel
/// not switched off by `CONVLUNA_NO_FUSED`, and (for the gemm-bound kernels) not an
/// `accelerate` build. The only place this decision is made. The first CPU tensor it sees
/// primes glibc's malloc thresholds ([`crate::kernels::prime_glibc_malloc`]).
///
/// Under the `mkl` feature every kernel stays on: standing aside for MKL's matmul meant the
/// composite ops, and those ran 3.2–4.8× slower than the fused kernels on gemm (medians, AMD
/// EPYC Zen 4, BENCHMARKS.md); MKL still serves Candle's own matmul wherever a composite op
/// runs.
pub fn fused(kernel: Kernel, t: &Tensor) -> bool {
    use std::sync::OnceLock;
    static OFF: OnceLock<Vec<String>> = OnceLock::new();
    let off = OFF.get_or_init(|| {
        std::env::var("CONVLUNA_NO_FUSED")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty() && s != "0")
                    .collect()
            })
            .unwrap_or_default()
    });
    if !crate::kernels::fusable(t) {
        return false;
    }
    // the first CPU op of the process sets glibc's adaptive thresholds (kernels::malloc)
    crate::kernels::prime_once();
    if cfg!(feature = "accelerate") && kernel.is_gemm() {
        return false;
    }
    !off.iter()
        .any(|o| o == kernel.name() || o == "all" || o == "1")
}

/// Computes `f` in f32 for half-precision inputs and casts back.
fn in_f32(
    x: &Tensor,
    f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    match x.dtype() {
        DType::F16 | DType::BF16 => f(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
        _ => f(x),
    }
}

/// `x·Wᵀ + b`: `x` `[…, in]`, `weight` `[out, in]`, `bias` `[out]` → `[…, out]`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    if fused(Kernel::Linear, x) {
        if let Some(y) = crate::kernels::linear(x, weight, bias)? {
            return Ok(y);
        }
    }
    candle_nn::Linear::new(weight.clone(), bias.cloned()).forward(x)
}

/// Softmax over the last dimension, `exp(x − max) / Σ exp(x − max)`, differentiable (the
/// max is a constant shift and is detached). Half precision is computed in f32.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fused(Kernel::Softmax, x) {
        if let Some(y) = crate::kernels::softmax_scaled(x, &Scale::Constant(1.0), None)? {
            return Ok(y);
        }
    }
    Ok(in_f32(x, |x| {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&max)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    })?)
}

/// `softmax(s·logits + bias)` over the last dimension, `s` the scale's factor.
fn softmax_scaled(logits: &Tensor, scale: &LogitScale, bias: Option<&Tensor>) -> Result<Tensor> {
    if fused(Kernel::Softmax, logits) {
        let factor = scale.factor(logits.dtype())?;
        if let Some(w) = crate::kernels::softmax_scaled(logits, &factor, bias)? {
            return Ok(w);
        }
    }
    let logits = scale.apply(logits)?;
    let logits = match bias {
        Some(b) => logits.broadcast_add(b)?,
        None => logits,
    };
    softmax_last_dim(&logits)
}

/// Affine LayerNorm over the last dimension: `y = (x − μ) / √(σ² + ε) · γ + β`.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    if fused(Kernel::LayerNorm, x) {
        if let Some(y) = crate::kernels::layer_norm(x, weight, bias, eps)? {
            return Ok(y);
        }
    }
    let y = in_f32(x, |x| {
        let mu = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mu)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + eps)?.sqrt()?)
    })?;
    y.broadcast_mul(weight)?.broadcast_add(bias)
}

/// `LN(x + r)`, the post-norm residual: one fused op that never stores `x + r` where it
/// applies, else the sum and then [`layer_norm`].
pub fn add_layer_norm(
    x: &Tensor,
    r: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    if fused(Kernel::Residual, x) {
        if let Some(y) = crate::kernels::add_layer_norm(x, r, weight, bias, eps)? {
            return Ok(y);
        }
    }
    layer_norm(&(x + r)?, weight, bias, eps)
}

/// The position-wise FFN `fc2(drop(GELU(fc1(x))))` then dropout (exact erf GELU): `x`
/// `[…, d]`, `w1` `[f, d]`, `w2` `[d, f]`. Fused as one op (both layers, the GELU and the
/// hidden dropout, the biases riding along as an extra weight column) where it applies, else
/// fc1 with a fused bias + GELU, else the composite ops. The dropout masks are drawn once
/// either way, in the same order.
#[allow(clippy::too_many_arguments)]
pub fn feed_forward(
    x: &Tensor,
    w1: &Tensor,
    b1: Option<&Tensor>,
    w2: &Tensor,
    b2: Option<&Tensor>,
    drop: &Dropout,
    train: bool,
) -> candle_core::Result<Tensor> {
    if let (Some(b1), Some(b2)) = (b1, b2) {
        // only where the kernel accepts the shapes, so that the dropout stream is drawn once
        let d = x.dims().last().copied().unwrap_or(0);
        let (f, d_in) = w1.dims2()?;
        let shapes_fit = d > 0 && d == d_in && w2.dims() == [d, f];
        if fused(Kernel::Ffn, x) && shapes_fit {
            let with_bias = |w: &Tensor, b: &Tensor| -> candle_core::Result<Tensor> {
                Tensor::cat(&[w, &b.to_dtype(w.dtype())?.unsqueeze(1)?], 1)
            };
            let w1b = with_bias(w1, b1)?;
            let w2b = with_bias(w2, b2)?;
            let keep = drop.keep_mask(x.elem_count() / d * f, train);
            if let Some(y) = crate::kernels::ffn(x, &w1b, &w2b, keep)? {
                return drop.forward_t(&y, train);
            }
        }
    }
    if let Some(b1) = b1.filter(|_| fused(Kernel::Gelu, x)) {
        let dims = x.dims();
        let rows = x.elem_count() / dims[dims.len() - 1];
        let x2 = x.contiguous()?.reshape((rows, dims[dims.len() - 1]))?;
        let h = linear(&x2, w1, None)?;
        if let Some(h) = crate::kernels::bias_gelu(&h, b1)? {
            let mut shape = dims.to_vec();
            *shape.last_mut().expect("rank ≥ 1") = h.dim(1)?;
            let h = drop.forward_t(&h.reshape(shape)?, train)?;
            let y = linear(&h, w2, b2)?;
            return drop.forward_t(&y, train);
        }
    }
    let h = linear(x, w1, b1)?.gelu_erf()?;
    let h = drop.forward_t(&h, train)?;
    let y = linear(&h, w2, b2)?;
    drop.forward_t(&y, train)
}

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

/// Additive key bias `[B, 1, 1, L]` from a `[B, L]` 0/1 mask: 0 at valid keys, a large
/// negative value at pads (−1e9, or −3·10⁴ in f16 so it cannot overflow).
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
/// Returns (output `[B,h,n,d_h]`, weights `[B,h,n,L]` before dropout). Always the composite
/// ops (the reference the fused attention is tested against).
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
/// [`fused`]`(Kernel::Attention, q)` holds the whole attention runs as one fused kernel per
/// (batch, head) with its own backward ([`crate::kernels::attention`]; a learned scale is
/// multiplied into whichever of q and k has fewer rows), and the weights come back
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
    let fused = fused_attention(
        q,
        k,
        v,
        HeadLayout::Split,
        scale,
        bias,
        dropout,
        train,
        true,
    )?;
    if let Some((y, Some(w))) = fused {
        return Ok((y, w));
    }
    let logits = q.matmul(&k.t()?)?;
    let w = softmax_scaled(&logits, scale, bias)?;
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
    if let Some((y, Some(w))) = fused_attention(q, k, v, layout, scale, bias, dropout, train, true)?
    {
        return Ok((y, w));
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

/// [`attend_merged`]'s output alone, for callers that discard the weights: where the fused
/// kernel applies it keeps no `[B, h, n, L]` weights at all
/// ([`crate::kernels::attention_values`]: the backward rebuilds them from each row's maximum
/// and sum, with the same bits); elsewhere it is [`attend_merged`] with the weights dropped.
#[allow(clippy::too_many_arguments)]
pub fn attend_merged_values(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: &LogitScale,
    bias: Option<&Tensor>,
    dropout: &Dropout,
    train: bool,
) -> Result<Tensor> {
    let layout = HeadLayout::Merged { heads };
    if let Some(y) = fused_attention(q, k, v, layout, scale, bias, dropout, train, false)? {
        return Ok(y.0);
    }
    Ok(attend_merged(q, k, v, heads, scale, bias, dropout, train)?.0)
}

/// The fused attention where it applies (`None` elsewhere), with the dropout keep-mask drawn
/// from `dropout`'s stream exactly as [`Dropout`] would draw it.
#[allow(clippy::too_many_arguments)]
fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    scale: &LogitScale,
    bias: Option<&Tensor>,
    dropout: &Dropout,
    train: bool,
    weights: bool,
) -> Result<Option<(Tensor, Option<Tensor>)>> {
    if !fused(Kernel::Attention, q) {
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
    let kernel = |q: &Tensor, k: &Tensor, s: f64| -> Result<Option<(Tensor, Option<Tensor>)>> {
        Ok(if weights {
            crate::kernels::attention(q, k, v, layout, s, bias, keep)?.map(|(y, w)| (y, Some(w)))
        } else {
            crate::kernels::attention_values(q, k, v, layout, s, bias, keep)?.map(|y| (y, None))
        })
    };
    match scale.factor(q.dtype())? {
        Scale::Constant(c) => kernel(q, k, c),
        Scale::Tensor(s) => {
            if n <= l {
                kernel(&q.broadcast_mul(&s)?, k, 1.0)
            } else {
                kernel(q, &k.broadcast_mul(&s)?, 1.0)
            }
        }
    }
}

/// `x ⊙ m` row by row: `x` `[B, L, d]`, `mask` `[B, L]` (any dtype, taken as a constant:
/// no gradient flows to it) → `[B, L, d]`, each row of `d` values times its mask value.
pub fn mask_rows(x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let m = mask.to_dtype(x.dtype())?;
    if fused(Kernel::Mask, x) {
        if let Some(y) = crate::kernels::mask_rows(x, &m)? {
            return Ok(y);
        }
    }
    x.broadcast_mul(&m.detach().unsqueeze(2)?)
}

/// Whether the merged-layout filters and attention of packing run fused for `x` (then the
/// mask, the filter and the attention read the heads in place).
pub fn merged_packing(x: &Tensor) -> bool {
    fused(Kernel::Attention, x)
}

/// The per-head (or per-channel) conv along time, stride 1, "same" padding with `left` pads
/// on the left: `x` `[B, h, L, d_h]`, `w` `[h or h·d_h, k]`; `None` where the fused kernel
/// does not apply (the caller then runs the composite taps).
pub fn conv_time(
    x: &Tensor,
    w: &Tensor,
    left: usize,
    per_channel: bool,
) -> candle_core::Result<Option<Tensor>> {
    if !fused(Kernel::Conv, x) {
        return Ok(None);
    }
    crate::kernels::conv_time(x, w, left, per_channel)
}

/// The conv filter on the merged layout `[B, L, h·d_h]` with the mask inside
/// ([`crate::kernels::conv_window_merged`]); `None` where it does not apply.
#[allow(clippy::too_many_arguments)]
pub fn conv_window_merged(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    left: usize,
    out: usize,
    heads: usize,
    per_channel: bool,
    mask: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    if !fused(Kernel::Conv, x) {
        return Ok(None);
    }
    crate::kernels::conv_window_merged(x, w, stride, left, out, heads, per_channel, mask)
}

/// The max-pool filter on the merged layout with the mask inside
/// ([`crate::kernels::max_pool_merged`]); `None` where it does not apply.
pub fn max_pool_merged(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    out: usize,
    mask: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    if !fused(Kernel::Pool, x) {
        return Ok(None);
    }
    crate::kernels::max_pool_merged(x, kernel, stride, out, mask)
}
