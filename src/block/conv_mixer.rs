//! A block without attention whose only token mixing is a filter along time: the second
//! locality control of the reproduction study (does ConvLuna gain from a memory that does not
//! degrade, or only from a local convolution?).
//!
//! ```text
//! X1 = X + F(LN₁(X))      X' = X1 + FFN(LN₂(X1))
//! ```
//! F is the same filter ConvLuna applies to its packing keys and values (per head along time,
//! length-keeping; pads zeroed first when a mask is given). Parameter names: `norm1`,
//! `filter.weight`, `norm2`, `ffn.fc1`, `ffn.fc2`.

use std::sync::Arc;

use candle_core::{Module, ModuleT, Tensor};
use candle_nn::VarBuilder;

use super::BlockDims;
use crate::error::Result;
use crate::filter::{filter_merged, Filter};
use crate::layers::{Dropout, DropoutRng, FeedForward, LayerNorm};

/// Pre-LN block whose token mixing is only the filter F.
#[derive(Clone, Debug)]
pub struct ConvMixerBlock {
    norm1: LayerNorm,
    filter: Arc<dyn Filter>,
    heads: usize,
    norm2: LayerNorm,
    ffn: FeedForward,
    rng: DropoutRng,
}

impl ConvMixerBlock {
    /// Builds the block around `filter` (length-keeping; its weights, if any, are the
    /// caller's, conventionally under `filter`); dropout from a generator of its own.
    pub fn new(dims: &BlockDims, filter: Arc<dyn Filter>, vb: VarBuilder) -> Result<Self> {
        Self::build(dims, filter, &DropoutRng::default(), vb)
    }

    /// The generator of the block's dropout masks.
    pub fn dropout_rng(&self) -> &DropoutRng {
        &self.rng
    }

    pub(crate) fn build(
        dims: &BlockDims,
        filter: Arc<dyn Filter>,
        rng: &DropoutRng,
        vb: VarBuilder,
    ) -> Result<Self> {
        dims.check()?;
        let d = dims.d_model;
        Ok(Self {
            norm1: LayerNorm::new(d, vb.pp("norm1"))?,
            filter,
            heads: dims.num_heads,
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

    /// `x [B, L, d]`, optional `[B, L]` 0/1 mask → `[B, L, d]`.
    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let m = mask.map(|m| m.to_dtype(x.dtype())).transpose()?;
        let mixed = filter_merged(
            self.filter.as_ref(),
            &self.norm1.forward(x)?,
            self.heads,
            m.as_ref(),
        )?;
        let x1 = (x + mixed)?;
        Ok((&x1 + self.ffn.forward_t(&self.norm2.forward(&x1)?, train)?)?)
    }
}
