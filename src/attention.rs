//! The Transformer's multi-head self-attention (guide §3.5); the attention op itself (head
//! splitting, masks, fused or composite) is [`crate::ops`]'s, re-exported here.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::layers::{linear, Dropout, Linear};
use crate::temperature::LogitScale;

pub use crate::ops::{
    attend, attend_merged_values, attend_scaled, key_bias, mask_value, merge_heads, split_heads,
};

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
        let y = attend_merged_values(
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
