//! Pre-LN Transformer block (the authors' baseline, guide §3.5):
//! `X1 = X + MHA(LN₁(X))`, `X' = X1 + FFN(LN₂(X1))`.
//! Parameter names: `norm1`, `attn.{q,k,v,o}_proj`, `norm2`, `ffn.fc1`, `ffn.fc2` (and
//! `filter.weight` for the filtered variant).

use std::sync::Arc;

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::{BlockDims, PreLn};
use crate::attention::SelfAttention;
use crate::error::Result;
use crate::filter::Filter;
use crate::layers::{Dropout, DropoutRng};

/// Pre-LN Transformer block.
#[derive(Clone, Debug)]
pub struct TransformerBlock {
    attn: SelfAttention,
    pre: PreLn,
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
            attn: match filter {
                Some(f) => attn.with_filter(f),
                None => attn,
            },
            pre: PreLn::new(dims, rng, &vb)?,
            rng: rng.clone(),
        })
    }

    /// `x [B, L, d]`, optional key mask `[B, L]` → `[B, L, d]`.
    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let mixed = self
            .attn
            .forward_t(&self.pre.norm1.forward(x)?, mask, train)?;
        self.pre.finish(x, mixed, train)
    }
}
