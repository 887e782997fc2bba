//! Multi-head *unpack* attention: the input X reads the packed memory Y_p (guide §3.1).
//!
//! ```text
//! Q' = X·W_q   K' = Y_p·W_k   V' = Y_p or Y_p·W_v
//! B = softmax_m( Q'·K'ᵀ · s_u )      s_u = 1 (authors), 1/√d_h or exp(−τ_u)
//! Y_x = merge(B·V')·W_o
//! ```
//! Shapes: X `[B, L, d]`, Y_p `[B, m, d]` → Y_x `[B, L, d]`. No mask: every query attends
//! to every memory slot. With m = 1 the softmax is identically 1.

use candle_core::{Module, Tensor};

use crate::error::Result;
use crate::layers::{Dropout, Linear};
use crate::ops::attend_merged_values;
use crate::temperature::LogitScale;

/// Unpack attention. Projections are passed in so that they can be shared with packing.
#[derive(Clone, Debug)]
pub struct UnpackAttention {
    q: Linear,
    k: Linear,
    v: Option<Linear>,
    o: Linear,
    scale: LogitScale,
    heads: usize,
    drop: Dropout,
}

impl UnpackAttention {
    /// Assembles an unpack attention; `v = None` uses Y_p itself as values.
    pub fn new(
        q: Linear,
        k: Linear,
        v: Option<Linear>,
        o: Linear,
        scale: LogitScale,
        heads: usize,
        drop: Dropout,
    ) -> Self {
        Self {
            q,
            k,
            v,
            o,
            scale,
            heads,
            drop,
        }
    }

    /// The logit scale (to read τ_u).
    pub fn scale(&self) -> &LogitScale {
        &self.scale
    }

    /// `x [B, L, d]`, `packed [B, m, d]` → `[B, L, d]`.
    pub fn forward_t(&self, x: &Tensor, packed: &Tensor, train: bool) -> Result<Tensor> {
        let q = self.q.forward(x)?;
        let k = self.k.forward(packed)?;
        let v = match &self.v {
            Some(v) => v.forward(packed)?,
            None => packed.clone(),
        };
        let y = attend_merged_values(&q, &k, &v, self.heads, &self.scale, None, &self.drop, train)?;
        Ok(self.o.forward(&y)?)
    }
}
