//! Small building blocks with gradients that are right in Candle 0.11: Linear with PyTorch's
//! initialisation, a LayerNorm and a softmax built from differentiable ops, the FFN, and a
//! seeded dropout.
//!
//! Candle 0.11's fused `softmax_last_dim`, `layer_norm` and `rms_norm` (and therefore
//! `candle_nn::LayerNorm` on contiguous input with a bias) record no gradient; the versions
//! here are composite and do. `tests/candle_pitfalls.rs` keeps a regression test of that bug.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Module, ModuleT, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::error::Result;
use crate::rng::Rng;

/// `y = x·Wᵀ + b`, weight `[out, in]` and bias `[out]`, both initialised U(−1/√in, 1/√in)
/// as PyTorch's `nn.Linear`.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let w = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    let b = vb.get_with_hints(out_dim, "bias", init)?;
    Ok(Linear::new(w, Some(b)))
}

/// Affine map over the last dimension, `y = x·Wᵀ + b`: x `[…, in]` → y `[…, out]`, weight
/// `[out, in]`, optional bias `[out]` (checkpoint names `weight`, `bias`, as `candle_nn::Linear`).
///
/// On CPU f32/f64 it runs as one gemm over all rows with a hand-written backward
/// ([`crate::kernels::linear`]); elsewhere it is `candle_nn::Linear`'s broadcast matmul.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A linear map from its weight `[out, in]` and optional bias `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(y) = crate::kernels::linear(x, &self.weight, self.bias.as_ref())? {
            return Ok(y);
        }
        candle_nn::Linear::new(self.weight.clone(), self.bias.clone()).forward(x)
    }
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

/// Softmax over the last dimension, `exp(x − max) / Σ exp(x − max)`, differentiable
/// (the max is a constant shift and is detached). Half precision is computed in f32.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if let Some(y) = crate::kernels::softmax_scaled(x, Ok(1.0), None)? {
        return Ok(y);
    }
    Ok(in_f32(x, |x| {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&max)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    })?)
}

/// Affine LayerNorm over the last dimension with eps 1e-6:
/// `y = (x − μ) / √(σ² + ε) · γ + β`. Parameters `weight` (γ, init 1) and `bias` (β, init 0).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Epsilon used by every LayerNorm of the models (guide §2).
    pub const EPS: f64 = 1e-6;

    /// Creates `weight` and `bias` of length `dim` under `vb`.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            eps: Self::EPS,
        })
    }

    /// `LN(x + r)`, the post-norm residual of the blocks: `x`, `r` `[…, d]` → `[…, d]`. On
    /// CPU f32/f64 one fused op that never stores `x + r`
    /// ([`crate::kernels::add_layer_norm`]); elsewhere the sum, then [`Module::forward`].
    pub fn forward_residual(&self, x: &Tensor, r: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(y) = crate::kernels::add_layer_norm(x, r, &self.weight, &self.bias, self.eps)? {
            return Ok(y);
        }
        self.forward(&(x + r)?)
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // Fused CPU kernel with its own backward (f32 / f64); the composite ops elsewhere.
        if let Some(y) = crate::kernels::layer_norm(x, &self.weight, &self.bias, self.eps)? {
            return Ok(y);
        }
        let y = in_f32(x, |x| {
            let mu = x.mean_keepdim(D::Minus1)?;
            let xc = x.broadcast_sub(&mu)?;
            let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
            xc.broadcast_div(&(var + self.eps)?.sqrt()?)
        })?;
        y.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// A dropout whose masks come from a seeded generator shared by the whole model, so that a
/// training run is reproducible on every device and can be resumed: the trainer calls
/// [`DropoutRng::reseed`] with the step number before each step.
#[derive(Clone, Debug)]
pub struct DropoutRng {
    inner: Arc<Mutex<Rng>>,
}

impl Default for DropoutRng {
    fn default() -> Self {
        Self::new(0)
    }
}

impl DropoutRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Rng::new(seed))),
        }
    }

    /// Restarts the generator from `seed` (e.g. `run_seed ^ step`).
    pub fn reseed(&self, seed: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *g = Rng::new(seed);
    }

    fn keep_mask(&self, n: usize, p: f64) -> Vec<f32> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let scale = (1.0 / (1.0 - p)) as f32;
        (0..n)
            .map(|_| if g.f64() < p { 0.0 } else { scale })
            .collect()
    }
}

/// Inverted dropout with probability `p`, active only when `train` is true.
#[derive(Clone, Debug)]
pub struct Dropout {
    p: f64,
    rng: DropoutRng,
}

impl Dropout {
    /// Dropout with drop probability `p` drawing from `rng`.
    pub fn new(p: f64, rng: DropoutRng) -> Self {
        Self { p, rng }
    }
}

impl Dropout {
    /// The keep-mask (`0` or `1/(1−p)`) over `n` elements that `forward_t` would multiply by,
    /// drawn from the same stream; `None` where dropout is inactive (`!train` or `p = 0`).
    pub(crate) fn keep_mask(&self, n: usize, train: bool) -> Option<Vec<f32>> {
        (train && self.p != 0.0).then(|| self.rng.keep_mask(n, self.p))
    }
}

impl ModuleT for Dropout {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        let mask = self.rng.keep_mask(x.elem_count(), self.p);
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

/// Position-wise feed-forward network: `fc2(drop(GELU(fc1(x))))` then dropout, with the exact
/// (erf) GELU. `fc1`: d→f, `fc2`: f→d.
#[derive(Clone, Debug)]
pub struct FeedForward {
    fc1: Linear,
    fc2: Linear,
    drop: Dropout,
}

impl FeedForward {
    /// Creates `fc1` and `fc2` under `vb`.
    pub fn new(d: usize, f: usize, dropout: Dropout, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(d, f, vb.pp("fc1"))?,
            fc2: linear(f, d, vb.pp("fc2"))?,
            drop: dropout,
        })
    }
}

impl ModuleT for FeedForward {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        // CPU f32 / f64: the whole FFN (both layers, the GELU and the hidden dropout) as one
        // fused op, the biases riding along as an extra weight column.
        if let (Some(b1), Some(b2)) = (self.fc1.bias(), self.fc2.bias()) {
            // (only where the kernel will accept the shapes, so that the dropout stream is
            // drawn once either way)
            let d = x.dims().last().copied().unwrap_or(0);
            let (f, d_in) = self.fc1.weight().dims2()?;
            let shapes_fit = d > 0 && d == d_in && self.fc2.weight().dims() == [d, f];
            if crate::kernels::enabled("ffn", x) && shapes_fit {
                let with_bias = |w: &Tensor, b: &Tensor| -> candle_core::Result<Tensor> {
                    Tensor::cat(&[w, &b.to_dtype(w.dtype())?.unsqueeze(1)?], 1)
                };
                let w1b = with_bias(self.fc1.weight(), b1)?;
                let w2b = with_bias(self.fc2.weight(), b2)?;
                let keep = self.drop.keep_mask(x.elem_count() / d * f, train);
                if let Some(y) = crate::kernels::ffn(x, &w1b, &w2b, keep)? {
                    return self.drop.forward_t(&y, train);
                }
            }
        }
        // CPU f32 / f64: fc1's bias add and the GELU as one fused kernel with its own backward.
        if let Some(b1) = self
            .fc1
            .bias()
            .filter(|_| crate::kernels::enabled("gelu", x))
        {
            let dims = x.dims();
            let rows = x.elem_count() / dims[dims.len() - 1];
            let x2 = x.contiguous()?.reshape((rows, dims[dims.len() - 1]))?;
            let h = match crate::kernels::linear(&x2, self.fc1.weight(), None)? {
                Some(h) => h,
                None => x2.matmul(&self.fc1.weight().t()?)?,
            };
            if let Some(h) = crate::kernels::bias_gelu(&h, b1)? {
                let mut shape = dims.to_vec();
                *shape.last_mut().expect("rank ≥ 1") = h.dim(1)?;
                let h = self.drop.forward_t(&h.reshape(shape)?, train)?;
                let y = self.fc2.forward(&h)?;
                return self.drop.forward_t(&y, train);
            }
        }
        let h = self.fc1.forward(x)?.gelu_erf()?;
        let h = self.drop.forward_t(&h, train)?;
        let y = self.fc2.forward(&h)?;
        self.drop.forward_t(&y, train)
    }
}
