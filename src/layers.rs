//! Small building blocks with gradients that are right in Candle 0.11: Linear with PyTorch's
//! initialisation, a LayerNorm and a softmax built from differentiable ops, the FFN, and a
//! seeded dropout.
//!
//! Candle 0.11's fused `softmax_last_dim`, `layer_norm` and `rms_norm` (and therefore
//! `candle_nn::LayerNorm` on contiguous input with a bias) record no gradient; the versions
//! here are composite and do. `tests/candle_pitfalls.rs` keeps a regression test of that bug.

use candle_core::{Module, ModuleT, Tensor};
use candle_nn::{Init, VarBuilder};

pub use crate::dropout::{Dropout, DropoutRng};
use crate::error::Result;

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
        crate::ops::linear(x, &self.weight, self.bias.as_ref())
    }
}

pub use crate::ops::softmax_last_dim;

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
        crate::ops::add_layer_norm(x, r, &self.weight, &self.bias, self.eps)
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
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
        crate::ops::feed_forward(
            x,
            self.fc1.weight(),
            self.fc1.bias(),
            self.fc2.weight(),
            self.fc2.bias(),
            &self.drop,
            train,
        )
    }
}
