//! Pre-LN Transformer block (the authors' baseline, guide §3.5):
//! `X1 = X + MHA(LN₁(X))`, `X' = X1 + FFN(LN₂(X1))`.
//! Parameter names: `norm1`, `attn.{q,k,v,o}_proj`, `norm2`, `ffn.fc1`, `ffn.fc2` (and
//! `filter.weight` for the filtered variant).

use std::sync::Arc;

use candle_core::{Module, ModuleT, Tensor};
use candle_nn::VarBuilder;

use super::BlockDims;
use crate::attention::SelfAttention;
use crate::error::Result;
use crate::filter::Filter;
use crate::layers::{Dropout, DropoutRng, FeedForward, LayerNorm};

/// Pre-LN Transformer block.
#[derive(Clone, Debug)]
pub struct TransformerBlock {
    norm1: LayerNorm,
    attn: SelfAttention,
    norm2: LayerNorm,
    ffn: FeedForward,
    rng: DropoutRng,
}

impl TransformerBlock {
    /// Builds the block under `vb` (dropout from a generator of its own,
    /// [`TransformerBlock::dropout_rng`]).
    pub fn new(dims: &BlockDims, vb: VarBuilder) -> Result<Self> {
        Self::build(dims, None, &DropoutRng::default(), vb)
    }

    /// The block whose attention keys and values pass through `filter` (a length-keeping
    /// filter; its weights, if any, are the caller's), the locality control
    /// [`crate::config::BlockConfig::FilteredTransformer`].
    pub fn with_filter(dims: &BlockDims, filter: Arc<dyn Filter>, vb: VarBuilder) -> Result<Self> {
        Self::build(dims, Some(filter), &DropoutRng::default(), vb)
    }

    /// The generator of the block's dropout masks.
    pub fn dropout_rng(&self) -> &DropoutRng {
        &self.rng
    }

    pub(crate) fn build(
        dims: &BlockDims,
        filter: Option<Arc<dyn Filter>>,
        rng: &DropoutRng,
        vb: VarBuilder,
    ) -> Result<Self> {
        dims.check()?;
        let d = dims.d_model;
        let attn = SelfAttention::new(
            d,
            dims.num_heads,
            Dropout::new(dims.attention_dropout, rng.clone()),
            vb.pp("attn"),
        )?;
        Ok(Self {
            norm1: LayerNorm::new(d, vb.pp("norm1"))?,
            attn: match filter {
                Some(f) => attn.with_filter(f),
                None => attn,
            },
            norm2: LayerNorm::new(d, vb.pp("norm2"))?,
            ffn: FeedForward::new(
                d,
                dims.ffn_dim,
                Dropout::new(dims.dropout, rng.clone()),
                vb.pp("ffn"),
            )?,
            rng: rng.clone(),
        })
    }

    /// `x [B, L, d]`, optional key mask `[B, L]` → `[B, L, d]`.
    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let x1 = (x + self.attn.forward_t(&self.norm1.forward(x)?, mask, train)?)?;
        Ok((&x1 + self.ffn.forward_t(&self.norm2.forward(&x1)?, train)?)?)
    }
}
