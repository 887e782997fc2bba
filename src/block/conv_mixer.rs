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

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::{BlockDims, PreLn};
use crate::error::Result;
use crate::filter::{filter_merged, Filter};
use crate::layers::DropoutRng;

/// Pre-LN block whose token mixing is only the filter F.
#[derive(Clone, Debug)]
pub struct ConvMixerBlock {
    filter: Arc<dyn Filter>,
    heads: usize,
    pre: PreLn,
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
        Ok(Self {
            filter,
            heads: dims.num_heads,
            pre: PreLn::new(dims, rng, &vb)?,
            rng: rng.clone(),
        })
    }

    /// `x [B, L, d]`, optional `[B, L]` 0/1 mask → `[B, L, d]`.
    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let m = mask.map(|m| m.to_dtype(x.dtype())).transpose()?;
        let mixed = filter_merged(
            self.filter.as_ref(),
            &self.pre.norm1.forward(x)?,
            self.heads,
            m.as_ref(),
        )?;
        self.pre.finish(x, mixed, train)
    }
}
