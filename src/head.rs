//! Classification heads (guide §4).
//!
//! Single document: `LN → pool → fc1 (d→f) GELU [→ fc2 (f→f) GELU] → out (f→classes)`.
//! Two documents (the same encoder on both), pooled to u and v, then `fc1 (→f) GELU →
//! fc2 (f→f/2) GELU → out (f/2→classes)` on the features:
//! - [`PairFeatures::Concat`], the ConvLuna authors' `DualClassifier`: `[u; v]` of the CLS
//!   vectors **without** a LayerNorm (the post-LN Luna blocks already end in one; a pre-LN
//!   Transformer encoder keeps the head's LayerNorm as its final norm);
//! - [`PairFeatures::Interaction`], the LRA paper's head: `[u, v, u⊙v, u−v]` after the head's
//!   LayerNorm (LRA's encoder norm). LRA uses ReLU in this MLP; the crate uses GELU in every
//!   head, as the ConvLuna authors do.
//!
//! Parameter names `head.norm` (where there is one), `head.fc1`, `head.fc2`, `head.out`.

use candle_core::{Module, Tensor, D};
use candle_nn::VarBuilder;

use crate::config::{HeadConfig, PairFeatures, Pooling};
use crate::encoder::EncoderOutput;
use crate::error::{Error, Result};
use crate::layers::{linear, LayerNorm, Linear};

/// Normalises the encoder output with the head's LayerNorm (where it has one) and pools it to
/// `[B, d]`.
#[derive(Clone, Debug)]
pub struct Pooler {
    norm: Option<LayerNorm>,
    pooling: Pooling,
    cls: bool,
}

impl Pooler {
    /// `cls` tells whether position 0 of the hidden states is a CLS token.
    pub fn new(d: usize, pooling: Pooling, cls: bool, vb: VarBuilder) -> Result<Self> {
        Self::with_norm(d, pooling, cls, true, vb)
    }

    /// As [`Pooler::new`], with (`head.norm`) or without a LayerNorm before pooling.
    pub fn with_norm(
        d: usize,
        pooling: Pooling,
        cls: bool,
        norm: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        if pooling == Pooling::Cls && !cls {
            return Err(Error::config(
                "head.pooling",
                "`cls` pooling needs an encoder with a CLS token",
            ));
        }
        Ok(Self {
            norm: if norm {
                Some(LayerNorm::new(d, vb.pp("norm"))?)
            } else {
                None
            },
            pooling,
            cls,
        })
    }

    fn normed(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.norm {
            Some(n) => n.forward(x)?,
            None => x.clone(),
        })
    }

    /// `[B, d]` from the encoder output: CLS vector, mean over valid tokens (CLS excluded), or
    /// mean of the normalised final memory.
    pub fn pool(&self, out: &EncoderOutput) -> Result<Tensor> {
        match self.pooling {
            Pooling::Cls => Ok(self.normed(&out.hidden.narrow(1, 0, 1)?)?.squeeze(1)?),
            Pooling::Mean => {
                let h = self.normed(&out.hidden)?;
                let (h, m) = if self.cls {
                    let l = h.dim(1)?;
                    (h.narrow(1, 1, l - 1)?, out.mask.narrow(1, 1, l - 1)?)
                } else {
                    (h, out.mask.clone())
                };
                let m = m.to_dtype(h.dtype())?;
                let sum = h.broadcast_mul(&m.unsqueeze(2)?)?.sum(1)?;
                let count = m.sum_keepdim(1)?.clamp(1.0, f64::INFINITY)?;
                Ok(sum.broadcast_div(&count)?)
            }
            Pooling::Memory => {
                let mem = out.memory.as_ref().ok_or_else(|| {
                    Error::config(
                        "head.pooling",
                        "`memory` pooling needs a Luna-family encoder",
                    )
                })?;
                Ok(self.normed(mem)?.mean(1)?)
            }
        }
    }
}

/// Single-document classifier head.
#[derive(Clone, Debug)]
pub struct ClassifierHead {
    pooler: Pooler,
    fc1: Linear,
    fc2: Option<Linear>,
    out: Linear,
}

impl ClassifierHead {
    /// Builds the head for width `d` (the encoder's) under `vb`.
    pub fn new(cfg: &HeadConfig, d: usize, cls: bool, vb: VarBuilder) -> Result<Self> {
        let f = cfg.hidden_dim;
        Ok(Self {
            pooler: Pooler::new(d, cfg.pooling, cls, vb.clone())?,
            fc1: linear(d, f, vb.pp("fc1"))?,
            fc2: if cfg.extra_layer {
                Some(linear(f, f, vb.pp("fc2"))?)
            } else {
                None
            },
            out: linear(f, cfg.num_classes, vb.pp("out"))?,
        })
    }

    /// Logits `[B, classes]`.
    pub fn forward(&self, enc: &EncoderOutput) -> Result<Tensor> {
        let mut h = self.fc1.forward(&self.pooler.pool(enc)?)?.gelu_erf()?;
        if let Some(fc2) = &self.fc2 {
            h = fc2.forward(&h)?.gelu_erf()?;
        }
        Ok(self.out.forward(&h)?)
    }
}

/// Two-document (retrieval) head.
#[derive(Clone, Debug)]
pub struct PairHead {
    pooler: Pooler,
    features: PairFeatures,
    fc1: Linear,
    fc2: Linear,
    out: Linear,
}

impl PairHead {
    /// Builds the head for width `d` under `vb`. `pre_ln_encoder` tells that the encoder's
    /// blocks are pre-LN (the Transformer): its output then needs the head's LayerNorm as the
    /// encoder's final norm whatever the features.
    pub fn new(
        cfg: &HeadConfig,
        features: PairFeatures,
        d: usize,
        cls: bool,
        pre_ln_encoder: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let f = cfg.hidden_dim;
        if f < 2 {
            return Err(Error::config(
                "head.hidden_dim",
                "must be at least 2 for a pair head (its second layer is f/2 wide)",
            ));
        }
        let (in_dim, norm) = match features {
            PairFeatures::Concat => (2 * d, pre_ln_encoder),
            PairFeatures::Interaction => (4 * d, true),
        };
        Ok(Self {
            pooler: Pooler::with_norm(d, cfg.pooling, cls, norm, vb.clone())?,
            features,
            fc1: linear(in_dim, f, vb.pp("fc1"))?,
            fc2: linear(f, f / 2, vb.pp("fc2"))?,
            out: linear(f / 2, cfg.num_classes, vb.pp("out"))?,
        })
    }

    /// Logits `[B, classes]` from the two encoder outputs.
    pub fn forward(&self, a: &EncoderOutput, b: &EncoderOutput) -> Result<Tensor> {
        let u = self.pooler.pool(a)?;
        let v = self.pooler.pool(b)?;
        let feats = match self.features {
            PairFeatures::Concat => Tensor::cat(&[&u, &v], D::Minus1)?,
            PairFeatures::Interaction => {
                Tensor::cat(&[&u, &v, &(&u * &v)?, &(&u - &v)?], D::Minus1)?
            }
        };
        let h = self.fc1.forward(&feats)?.gelu_erf()?;
        let h = self.fc2.forward(&h)?.gelu_erf()?;
        Ok(self.out.forward(&h)?)
    }
}
