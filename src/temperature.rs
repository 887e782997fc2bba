//! Logit scaling: fixed scales and ConvLuna's learnable log-temperature (guide §3.1).
//!
//! `logits · exp(−τ)`: τ is one scalar per layer shared by all heads, stored as a `[1]`
//! parameter (`pack_log_temperature`, `unpack_log_temperature`). τ = ½·ln d_h gives 1/√d_h.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use crate::config::ScaleConfig;
use crate::error::Result;
use crate::kernels::Scale;

/// Scales attention logits by a constant or by `exp(−τ)` with a learned τ.
#[derive(Clone, Debug)]
pub enum LogitScale {
    /// Multiply by a constant (1 is skipped).
    Constant(f64),
    /// Multiply by `exp(−τ)`, τ a learned `[1]` tensor.
    LogTemperature(Tensor),
}

impl LogitScale {
    /// Builds the scale for heads of width `head_dim`; a learned τ is created as `name` under `vb`.
    pub fn new(scale: &ScaleConfig, head_dim: usize, name: &str, vb: VarBuilder) -> Result<Self> {
        Ok(match *scale {
            ScaleConfig::None => LogitScale::Constant(1.0),
            ScaleConfig::InvSqrtHeadDim => LogitScale::Constant(1.0 / (head_dim as f64).sqrt()),
            ScaleConfig::FixedTemperature { tau } => LogitScale::Constant((-tau).exp()),
            ScaleConfig::LearnedTemperature { init } => {
                LogitScale::LogTemperature(vb.get_with_hints(1, name, Init::Const(init))?)
            }
        })
    }

    /// The factor `s`: the constant, or `exp(−τ)`, a `[1]` tensor in `dtype` through which
    /// the gradient reaches τ (the form the fused kernels take).
    pub fn factor(&self, dtype: candle_core::DType) -> Result<Scale> {
        Ok(match self {
            LogitScale::Constant(c) => Scale::Constant(*c),
            LogitScale::LogTemperature(tau) => Scale::Tensor(tau.to_dtype(dtype)?.neg()?.exp()?),
        })
    }

    /// `logits · s`.
    pub fn apply(&self, logits: &Tensor) -> Result<Tensor> {
        Ok(match self.factor(logits.dtype())? {
            Scale::Constant(1.0) => logits.clone(),
            Scale::Constant(c) => (logits * c)?,
            Scale::Tensor(s) => logits.broadcast_mul(&s)?,
        })
    }

    /// The current τ (for logging), `None` for a constant scale.
    pub fn tau(&self) -> Result<Option<f64>> {
        Ok(match self {
            LogitScale::Constant(_) => None,
            LogitScale::LogTemperature(t) => {
                Some(t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?[0])
            }
        })
    }
}
