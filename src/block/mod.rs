//! The three block families: ConvLuna / Luna ([`LunaBlock`]) and the pre-LN Transformer
//! ([`TransformerBlock`]), plus the attention-free [`ConvMixerBlock`] (a locality control).

mod conv_mixer;
mod luna;
mod transformer;

pub use conv_mixer::ConvMixerBlock;
pub use luna::{LunaBlock, LunaBlockOutput};
pub use transformer::TransformerBlock;

/// The dimensions and regularisation every block shares.
#[derive(Clone, Debug)]
pub struct BlockDims {
    /// Model width d.
    pub d_model: usize,
    /// Heads h.
    pub num_heads: usize,
    /// FFN width f.
    pub ffn_dim: usize,
    /// Dropout in the FFN (and residual dropout where enabled).
    pub dropout: f64,
    /// Dropout on attention weights.
    pub attention_dropout: f64,
}

impl BlockDims {
    /// Head width d / h.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.num_heads
    }

    pub(crate) fn check(&self) -> crate::Result<()> {
        if self.num_heads == 0 || self.d_model == 0 || !self.d_model.is_multiple_of(self.num_heads)
        {
            return Err(crate::Error::config(
                "d_model",
                format!(
                    "{} is not divisible by num_heads = {}",
                    self.d_model, self.num_heads
                ),
            ));
        }
        if self.ffn_dim == 0 {
            return Err(crate::Error::config("ffn_dim", "must be at least 1"));
        }
        Ok(())
    }
}

/// One block of an encoder.
#[derive(Clone, Debug)]
pub enum EncoderBlock {
    /// ConvLuna or Luna.
    Luna(LunaBlock),
    /// Pre-LN Transformer (with or without a filter on its keys and values).
    Transformer(TransformerBlock),
    /// Pre-LN block whose only token mixing is a filter (no attention).
    ConvMixer(ConvMixerBlock),
}

/// What the pre-LN blocks share: `X1 = X + mix(LN₁(X))`, `X' = X1 + FFN(LN₂(X1))`, with the
/// parameters `norm1`, `norm2` and `ffn` under the block's `VarBuilder`.
#[derive(Clone, Debug)]
pub(crate) struct PreLn {
    pub(crate) norm1: crate::layers::LayerNorm,
    norm2: crate::layers::LayerNorm,
    ffn: crate::layers::FeedForward,
}

impl PreLn {
    pub(crate) fn new(
        dims: &BlockDims,
        rng: &crate::layers::DropoutRng,
        vb: &candle_nn::VarBuilder,
    ) -> crate::Result<Self> {
        let d = dims.d_model;
        Ok(Self {
            norm1: crate::layers::LayerNorm::new(d, vb.pp("norm1"))?,
            norm2: crate::layers::LayerNorm::new(d, vb.pp("norm2"))?,
            ffn: crate::layers::FeedForward::new(
                d,
                dims.ffn_dim,
                crate::layers::Dropout::new(dims.dropout, rng.clone()),
                vb.pp("ffn"),
            )?,
        })
    }

    /// `X' = X1 + FFN(LN₂(X1))` with `X1 = x + mixed`, `mixed` the token mixing of `LN₁(x)`.
    pub(crate) fn finish(
        &self,
        x: &candle_core::Tensor,
        mixed: candle_core::Tensor,
        train: bool,
    ) -> crate::Result<candle_core::Tensor> {
        use candle_core::{Module, ModuleT};
        let x1 = (x + mixed)?;
        Ok((&x1 + self.ffn.forward_t(&self.norm2.forward(&x1)?, train)?)?)
    }
}
