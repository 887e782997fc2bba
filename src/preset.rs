//! Named published combinations (guide §3) and the per-task LRA settings (guide §6).

use serde::{Deserialize, Serialize};

use crate::config::*;
use crate::error::{Error, Result};

/// The published block combinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockPreset {
    /// ConvLuna as the authors ran it: shared q/k/o without value projection, per-head conv
    /// k = 4 s = 1, learned τ (init 0) in packing, no scale in unpacking, no padding mask.
    Convluna,
    /// ConvLuna with padding masked (the crate's recommended setting).
    ConvlunaMasked,
    /// Luna as the authors ran it: one shared q/k/v/o attention for pack and unpack, 1/√d_h
    /// in both, no filter, post-LN update; **with** the padding mask (the authors' code runs
    /// it unmasked — set `mask_padding = false`, as the `lra` example's paper preset does).
    Luna,
    /// Luna as Ma et al. (2021) define it: separate projections, no output projection on Y_p,
    /// residual dropout, masked packing, memory init N(0, d^−½).
    LunaMa,
    /// The pre-LN softmax Transformer.
    Transformer,
}

/// The name of `value` in `all` (`?` if it is not listed).
pub(crate) fn name_of<T: PartialEq>(all: &[(&'static str, T)], value: &T) -> &'static str {
    all.iter().find(|(_, v)| v == value).map_or("?", |(n, _)| n)
}

/// The entry of `all` called `name`, or [`Error::UnknownPreset`] listing the known names.
pub(crate) fn by_name<T: Copy>(all: &[(&str, T)], name: &str) -> Result<T> {
    all.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| Error::UnknownPreset {
            name: name.to_string(),
            known: all.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        })
}

impl BlockPreset {
    /// Every preset with its name.
    pub const ALL: [(&'static str, BlockPreset); 5] = [
        ("convluna", BlockPreset::Convluna),
        ("convluna-masked", BlockPreset::ConvlunaMasked),
        ("luna", BlockPreset::Luna),
        ("luna-ma", BlockPreset::LunaMa),
        ("transformer", BlockPreset::Transformer),
    ];

    /// Looks a preset up by name (`convluna`, `convluna-masked`, `luna`, `luna-ma`, `transformer`).
    pub fn from_name(name: &str) -> Result<Self> {
        by_name(&Self::ALL, name)
    }

    /// The preset's name.
    pub fn name(&self) -> &'static str {
        name_of(&Self::ALL, self)
    }

    /// The block config with memory length `memory_len` (ignored by the Transformer).
    pub fn block(&self, memory_len: usize) -> BlockConfig {
        match self {
            BlockPreset::Convluna => BlockConfig::Luna(LunaConfig {
                mask_padding: false,
                ..LunaConfig::convluna(memory_len)
            }),
            BlockPreset::ConvlunaMasked => BlockConfig::Luna(LunaConfig::convluna(memory_len)),
            BlockPreset::Luna => BlockConfig::Luna(LunaConfig::luna(memory_len)),
            BlockPreset::LunaMa => BlockConfig::Luna(LunaConfig::luna_ma(memory_len)),
            BlockPreset::Transformer => BlockConfig::Transformer,
        }
    }
}

/// The Long Range Arena tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LraTask {
    /// ListOps, ≤ 2000 tokens, 10 classes.
    Listops,
    /// Byte-level IMDb, 4000 bytes, 2 classes.
    Text,
    /// Byte-level AAN document matching, 4000 bytes per document, 2 classes.
    Retrieval,
    /// Grey CIFAR-10, 1024 pixels, 10 classes.
    Image,
    /// Pathfinder 32×32, 1024 pixels, 2 classes.
    Pathfinder,
    /// Path-X 128×128, 16384 pixels, 2 classes.
    PathX,
}

/// Training settings of the authors' `lra/setups.py` (guide §6).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaperSettings {
    /// Batch size.
    pub batch_size: usize,
    /// Peak learning rate of lr·min(1, t/w)/√max(t, w).
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Warmup steps w.
    pub warmup: usize,
    /// Training steps.
    pub steps: usize,
    /// Dropout.
    pub dropout: f64,
}

/// ListOps vocabulary: 0 pad, 1–10 the digits 0–9, 11 `[MIN`, 12 `[MAX`, 13 `[MED`, 14 `[SM`, 15 `]`.
pub const LISTOPS_VOCAB: usize = 16;
/// Byte vocabulary: 0 pad, byte b is id b + 1.
pub const BYTE_VOCAB: usize = 257;

impl LraTask {
    /// Every task with its name.
    pub const ALL: [(&'static str, LraTask); 6] = [
        ("listops", LraTask::Listops),
        ("text", LraTask::Text),
        ("retrieval", LraTask::Retrieval),
        ("image", LraTask::Image),
        ("pathfinder", LraTask::Pathfinder),
        ("path-x", LraTask::PathX),
    ];

    /// Looks a task up by name.
    pub fn from_name(name: &str) -> Result<Self> {
        by_name(&Self::ALL, name)
    }

    /// The task's name.
    pub fn name(&self) -> &'static str {
        name_of(&Self::ALL, self)
    }

    /// Input length (per document).
    pub fn seq_len(&self) -> usize {
        match self {
            LraTask::Listops => 2000,
            LraTask::Text | LraTask::Retrieval => 4000,
            LraTask::Image | LraTask::Pathfinder => 1024,
            LraTask::PathX => 16384,
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        match self {
            LraTask::Listops | LraTask::Image => 10,
            _ => 2,
        }
    }

    /// The input kind with the task's vocabulary or pixel normalisation.
    pub fn input(&self) -> InputConfig {
        match self {
            LraTask::Listops => InputConfig::Tokens {
                vocab_size: LISTOPS_VOCAB,
            },
            LraTask::Text | LraTask::Retrieval => InputConfig::Tokens {
                vocab_size: BYTE_VOCAB,
            },
            LraTask::Image => InputConfig::Pixels {
                mean: 0.48,
                std: 0.24,
            },
            LraTask::Pathfinder | LraTask::PathX => InputConfig::Pixels {
                mean: 0.5,
                std: 0.5,
            },
        }
    }

    /// The authors' training settings (Path-X uses Pathfinder's).
    pub fn paper_settings(&self) -> PaperSettings {
        let (batch_size, lr, weight_decay, warmup, steps, dropout) = match self {
            LraTask::Text => (32, 0.005, 0.01, 8000, 25_000, 0.1),
            LraTask::Listops => (32, 0.005, 0.002, 1000, 50_000, 0.1),
            LraTask::Retrieval => (32, 0.015, 0.04, 8000, 30_000, 0.1),
            LraTask::Image => (64, 0.01, 0.01, 700, 30_000, 0.0),
            LraTask::Pathfinder | LraTask::PathX => (128, 0.01, 0.01, 700, 125_000, 0.0),
        };
        PaperSettings {
            batch_size,
            lr,
            weight_decay,
            warmup,
            steps,
            dropout,
        }
    }

    /// Number of layers in the authors' setups.
    pub fn paper_layers(&self) -> usize {
        match self {
            LraTask::Text => 4,
            LraTask::Image => 8,
            _ => 6,
        }
    }

    /// The paper's model for this task: d = 128, 4 heads, FFN 512, CLS pooling, the task's
    /// layers and dropout, with `block` (e.g. `BlockPreset::Convluna.block(256)`).
    pub fn paper_model(&self, block: BlockConfig) -> ModelConfig {
        let s = self.paper_settings();
        let image = matches!(self, LraTask::Image | LraTask::Pathfinder | LraTask::PathX);
        ModelConfig {
            encoder: EncoderConfig {
                input: self.input(),
                max_len: self.seq_len(),
                positions: Positions::Learned,
                cls: true,
                stack: crate::StackConfig::default()
                    .with_block(block)
                    .with_layers(self.paper_layers())
                    .with_dropout(s.dropout),
            },
            head: HeadConfig {
                num_classes: self.num_classes(),
                hidden_dim: 512,
                pooling: Pooling::Cls,
                extra_layer: image,
                pair: (*self == LraTask::Retrieval).then_some(PairFeatures::Concat),
            },
        }
    }
}
