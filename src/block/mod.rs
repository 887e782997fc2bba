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
