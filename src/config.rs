//! Validated, serde-serialisable configuration of blocks, encoders and heads.
//!
//! Every option of [guide](crate::guide) §3 is a field here; the named published combinations are in
//! [`crate::preset`]. A config is checked with [`ModelConfig::validate`] (called by every
//! constructor), which names the offending field in a typed [`Error::Config`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The filter applied along time to the keys and values of the packing attention (guide §3.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FilterConfig {
    /// No filtering (kernel 1): ConvLuna without its filter, or plain Luna.
    Identity,
    /// A short convolution along time, no bias. With `per_channel = false` one kernel per
    /// head shared by that head's channels (the authors' grouped conv, weight `[h, k]`);
    /// with `per_channel = true` one kernel per model channel (depthwise, weight `[d, k]`).
    /// Stride 1 uses "same" zero padding (left = ⌊(k−1)/2⌋); stride > 1 uses none.
    Conv {
        /// Kernel length k ≥ 1.
        kernel: usize,
        /// Stride s ≥ 1.
        stride: usize,
        /// Depthwise (one kernel per channel) instead of one kernel per head.
        #[serde(default)]
        per_channel: bool,
    },
    /// Per-channel max over windows of `kernel`, no padding (even with stride 1).
    MaxPool {
        /// Window length k ≥ 1.
        kernel: usize,
        /// Stride s ≥ 1.
        stride: usize,
    },
}

impl FilterConfig {
    /// The authors' default filter: per-head conv, k = 4, s = 1.
    pub fn authors_conv() -> Self {
        FilterConfig::Conv {
            kernel: 4,
            stride: 1,
            per_channel: false,
        }
    }
}

/// Which projections the pack and unpack attentions use (guide §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Projections {
    /// W_q, W_k, W_o shared by pack and unpack, no value projection (ConvLuna, authors).
    SharedNoValue,
    /// W_q, W_k, W_v, W_o shared by pack and unpack (the authors' Luna baseline).
    Shared,
    /// Separate pack (q, k, v; no output) and unpack (q, k, v, o) projections (Ma et al.).
    Separate,
}

/// How attention logits are scaled before the softmax.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScaleConfig {
    /// No scaling (s = 1).
    None,
    /// The usual 1/√d_h.
    InvSqrtHeadDim,
    /// A fixed log-temperature: logits · exp(−τ).
    FixedTemperature {
        /// τ.
        tau: f64,
    },
    /// A learnable scalar log-temperature τ per layer: logits · exp(−τ), τ starts at `init`.
    LearnedTemperature {
        /// Initial τ (the paper uses 0).
        init: f64,
    },
}

/// Options of the Luna family of blocks, ConvLuna included (guide §3.1–3.4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LunaConfig {
    /// Memory length m ≥ 1.
    pub memory_len: usize,
    /// Projection sharing.
    pub projections: Projections,
    /// Scale of the packing logits.
    pub pack_scale: ScaleConfig,
    /// Scale of the unpacking logits.
    pub unpack_scale: ScaleConfig,
    /// Filter of the packing keys and values.
    pub filter: FilterConfig,
    /// Exclude padding from packing (guide §3.4). `false` reproduces the authors' code.
    pub mask_padding: bool,
    /// Dropout on Y_x and Y_p before the residual additions (Ma et al.); the authors have none.
    #[serde(default)]
    pub residual_dropout: bool,
    /// Standard deviation of the learned initial memory; `None` means 1 (authors),
    /// Ma et al. use d^−½ (see `memory_init_inv_sqrt_d`).
    #[serde(default)]
    pub memory_init_std: Option<f64>,
    /// Initialise the memory with standard deviation d^−½ of the model width (Ma et al.),
    /// in place of `memory_init_std`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub memory_init_inv_sqrt_d: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl LunaConfig {
    /// ConvLuna as the authors built it (shared q/k/o without value projection, per-head
    /// conv k = 4 s = 1, learned τ from 0 in packing, no unpack scale), memory length m,
    /// padding masked (`mask_padding = false` is the authors' code).
    pub fn convluna(memory_len: usize) -> Self {
        LunaConfig {
            memory_len,
            projections: Projections::SharedNoValue,
            pack_scale: ScaleConfig::LearnedTemperature { init: 0.0 },
            unpack_scale: ScaleConfig::None,
            filter: FilterConfig::authors_conv(),
            mask_padding: true,
            residual_dropout: false,
            memory_init_std: None,
            memory_init_inv_sqrt_d: false,
        }
    }

    /// Luna as the ConvLuna authors ran it (one shared q/k/v/o attention, 1/√d_h in pack and
    /// unpack, no filter), memory length m, padding masked.
    pub fn luna(memory_len: usize) -> Self {
        LunaConfig {
            memory_len,
            projections: Projections::Shared,
            pack_scale: ScaleConfig::InvSqrtHeadDim,
            unpack_scale: ScaleConfig::InvSqrtHeadDim,
            filter: FilterConfig::Identity,
            mask_padding: true,
            residual_dropout: false,
            memory_init_std: None,
            memory_init_inv_sqrt_d: false,
        }
    }

    /// Luna as Ma et al. (2021) define it: separate projections, residual dropout, masked
    /// packing, memory init N(0, d^−½).
    pub fn luna_ma(memory_len: usize) -> Self {
        LunaConfig {
            projections: Projections::Separate,
            residual_dropout: true,
            memory_init_inv_sqrt_d: true,
            ..Self::luna(memory_len)
        }
    }

    /// Standard deviation of the initial memory for model width `d_model`.
    pub fn memory_std(&self, d_model: usize) -> f64 {
        if self.memory_init_inv_sqrt_d {
            1.0 / (d_model as f64).sqrt()
        } else {
            self.memory_init_std.unwrap_or(1.0)
        }
    }
}

/// Which block family the encoder stacks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum BlockConfig {
    /// ConvLuna or Luna (post-LN, with memory).
    Luna(LunaConfig),
    /// The pre-LN softmax Transformer block (guide §3.5).
    Transformer,
    /// Locality control: the pre-LN Transformer whose self-attention keys and values pass
    /// through `filter` (per head along time, as ConvLuna filters its packing keys and
    /// values). The filter must keep the length (a stride-1 conv, or the identity).
    FilteredTransformer {
        /// The filter (weights `layers.{i}.filter.weight`).
        filter: FilterConfig,
    },
    /// Locality control: a pre-LN block without attention whose only token mixing is
    /// `filter`: `X1 = X + F(LN₁(X))`, `X' = X1 + FFN(LN₂(X1))`. The filter must keep the
    /// length (a stride-1 conv).
    ConvMixer {
        /// The filter (weights `layers.{i}.filter.weight`).
        filter: FilterConfig,
    },
}

impl BlockConfig {
    /// The Luna options, if this is a Luna-family block.
    pub fn luna(&self) -> Option<&LunaConfig> {
        match self {
            BlockConfig::Luna(c) => Some(c),
            _ => None,
        }
    }

    /// Whether the blocks are pre-LN (their output needs a final LayerNorm before a head).
    pub fn pre_ln(&self) -> bool {
        !matches!(self, BlockConfig::Luna(_))
    }
}

/// What the encoder reads.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InputConfig {
    /// Token ids in `[0, vocab_size)`, id 0 is padding.
    Tokens {
        /// Vocabulary size including the padding id 0.
        vocab_size: usize,
    },
    /// Raw grey pixel values 0..255, normalised as (x/255 − mean)/std then embedded by value·w + b.
    Pixels {
        /// Mean of x/255.
        mean: f64,
        /// Standard deviation of x/255.
        std: f64,
    },
}

/// Position information added to the embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// Learned absolute positions initialised to zero (authors).
    Learned,
    /// Fixed sinusoidal positions.
    Sinusoidal,
    /// No positions.
    None,
}

/// The stack's configuration: width, heads, FFN, depth, dropout and the block family.
///
/// `Default` is the authors' ConvLuna (d = 128, 4 heads, FFN 512, 4 layers, dropout 0.1,
/// m = 256, per-head conv k = 4, learned τ) with padding masked out of packing (the crate's
/// correct default; the authors' code does not mask). Change any field with a `with_*`
/// builder:
///
/// ```
/// use convluna::{FilterConfig, StackConfig};
/// let luna = StackConfig::luna().with_d_model(64).with_memory(16);
/// let pool = StackConfig::default().with_filter(FilterConfig::MaxPool { kernel: 4, stride: 4 });
/// let tf = StackConfig::transformer().with_layers(2);
/// assert_eq!(tf.memory_len(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackConfig {
    /// Model width d.
    pub d_model: usize,
    /// Number of heads h; must divide d.
    pub num_heads: usize,
    /// FFN width f.
    pub ffn_dim: usize,
    /// Number of blocks.
    pub num_layers: usize,
    /// Dropout in the FFN (and on Y_x, Y_p with residual dropout).
    pub dropout: f64,
    /// Dropout on attention weights.
    pub attention_dropout: f64,
    /// Block family and its options.
    pub block: BlockConfig,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self::convluna()
    }
}

impl StackConfig {
    fn with_block_family(block: BlockConfig) -> Self {
        Self {
            d_model: 128,
            num_heads: 4,
            ffn_dim: 512,
            num_layers: 4,
            dropout: 0.1,
            attention_dropout: 0.1,
            block,
        }
    }

    /// The authors' ConvLuna (m = 256) with padding masked (= `Default`).
    pub fn convluna() -> Self {
        Self::with_block_family(BlockConfig::Luna(LunaConfig::convluna(256)))
    }

    /// Luna as the ConvLuna authors ran it (m = 256), padding masked.
    pub fn luna() -> Self {
        Self::with_block_family(BlockConfig::Luna(LunaConfig::luna(256)))
    }

    /// Luna as Ma et al. (2021) define it (m = 256).
    pub fn luna_ma() -> Self {
        Self::with_block_family(BlockConfig::Luna(LunaConfig::luna_ma(256)))
    }

    /// The pre-LN softmax Transformer (no memory).
    pub fn transformer() -> Self {
        Self::with_block_family(BlockConfig::Transformer)
    }

    /// Sets the model width d.
    pub fn with_d_model(mut self, d_model: usize) -> Self {
        self.d_model = d_model;
        self
    }

    /// Sets the number of heads.
    pub fn with_heads(mut self, num_heads: usize) -> Self {
        self.num_heads = num_heads;
        self
    }

    /// Sets the FFN width.
    pub fn with_ffn_dim(mut self, ffn_dim: usize) -> Self {
        self.ffn_dim = ffn_dim;
        self
    }

    /// Sets the number of blocks.
    pub fn with_layers(mut self, num_layers: usize) -> Self {
        self.num_layers = num_layers;
        self
    }

    /// Sets both the FFN and the attention dropout.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self.attention_dropout = p;
        self
    }

    /// Sets the attention dropout alone.
    pub fn with_attention_dropout(mut self, p: f64) -> Self {
        self.attention_dropout = p;
        self
    }

    /// Replaces the block family and its options.
    pub fn with_block(mut self, block: BlockConfig) -> Self {
        self.block = block;
        self
    }

    /// Sets the memory length m (Luna family; a family without memory ignores it).
    pub fn with_memory(mut self, memory_len: usize) -> Self {
        if let BlockConfig::Luna(l) = &mut self.block {
            l.memory_len = memory_len;
        }
        self
    }

    /// Sets the filter of the packing keys and values (Luna family) or of a locality control;
    /// the plain Transformer ignores it.
    pub fn with_filter(mut self, filter: FilterConfig) -> Self {
        match &mut self.block {
            BlockConfig::Luna(l) => l.filter = filter,
            BlockConfig::FilteredTransformer { filter: f }
            | BlockConfig::ConvMixer { filter: f } => *f = filter,
            BlockConfig::Transformer => {}
        }
        self
    }

    /// Sets the scale of the packing logits (Luna family).
    pub fn with_pack_scale(mut self, scale: ScaleConfig) -> Self {
        if let BlockConfig::Luna(l) = &mut self.block {
            l.pack_scale = scale;
        }
        self
    }

    /// Masks padding out of packing (`true`, the default) or not (the authors' code).
    pub fn with_mask_padding(mut self, mask: bool) -> Self {
        if let BlockConfig::Luna(l) = &mut self.block {
            l.mask_padding = mask;
        }
        self
    }

    /// The memory length m, for the families that have a memory.
    pub fn memory_len(&self) -> Option<usize> {
        self.block.luna().map(|l| l.memory_len)
    }

    /// Head width d / h.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.num_heads.max(1)
    }

    /// Checks every field; the error names the field (`stack.d_model`, …).
    pub fn validate(&self) -> Result<()> {
        self.validate_as("stack", None)
    }

    /// Checks every field, naming fields `{prefix}.{field}`; `seq_len` is the longest
    /// sequence the blocks will see, when known (filters must fit it).
    pub(crate) fn validate_as(&self, prefix: &str, seq_len: Option<usize>) -> Result<()> {
        let field = |f: &str| format!("{prefix}.{f}");
        if self.d_model == 0 {
            return Err(Error::config(field("d_model"), "must be at least 1"));
        }
        if self.num_heads == 0 {
            return Err(Error::config(field("num_heads"), "must be at least 1"));
        }
        if !self.d_model.is_multiple_of(self.num_heads) {
            return Err(Error::config(
                field("d_model"),
                format!(
                    "{} is not divisible by num_heads = {}",
                    self.d_model, self.num_heads
                ),
            ));
        }
        if self.ffn_dim == 0 {
            return Err(Error::config(field("ffn_dim"), "must be at least 1"));
        }
        if self.num_layers == 0 {
            return Err(Error::config(field("num_layers"), "must be at least 1"));
        }
        check_prob(&field("dropout"), self.dropout)?;
        check_prob(&field("attention_dropout"), self.attention_dropout)?;
        let len = seq_len.unwrap_or(usize::MAX);
        match &self.block {
            BlockConfig::Luna(l) => l.validate(len).map_err(|e| match e {
                Error::Config { field: f, reason } => Error::Config {
                    field: format!("{prefix}.{f}"),
                    reason,
                },
                e => e,
            })?,
            BlockConfig::FilteredTransformer { filter } | BlockConfig::ConvMixer { filter } => {
                filter.validate(&field("block.filter"), len)?;
                let keeps = matches!(
                    filter,
                    FilterConfig::Identity | FilterConfig::Conv { stride: 1, .. }
                );
                if !keeps {
                    return Err(Error::config(
                        field("block.filter"),
                        "must keep the length here (a stride-1 conv or the identity)",
                    ));
                }
            }
            BlockConfig::Transformer => {}
        }
        Ok(())
    }
}

/// Encoder configuration (guide §4): what it reads (tokens or pixels), positions, CLS, and
/// the block stack (flattened into the same JSON object).
///
/// ```
/// use convluna::{EncoderConfig, StackConfig};
/// let cfg = EncoderConfig::tokens(16, 2000).with_stack(StackConfig::luna().with_d_model(64));
/// assert_eq!(cfg.stack.d_model, 64);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// Input kind.
    pub input: InputConfig,
    /// Longest input (without CLS) the encoder accepts.
    pub max_len: usize,
    /// Positions.
    pub positions: Positions,
    /// Prepend a learned CLS vector (after positions are added).
    pub cls: bool,
    /// The blocks: width, heads, FFN, depth, dropout, family (run by [`crate::Stack`]).
    #[serde(flatten)]
    pub stack: StackConfig,
}

impl EncoderConfig {
    /// Token input (`vocab_size` ids, 0 = padding) up to `max_len`, learned positions, CLS,
    /// and the default stack (the authors' ConvLuna, padding masked).
    pub fn tokens(vocab_size: usize, max_len: usize) -> Self {
        EncoderConfig {
            input: InputConfig::Tokens { vocab_size },
            max_len,
            positions: Positions::Learned,
            cls: true,
            stack: Default::default(),
        }
    }

    /// Grey pixel input (values 0..255, normalised with `mean`, `std` of x/255) up to
    /// `max_len` pixels, learned positions, CLS, the default stack.
    pub fn pixels(mean: f64, std: f64, max_len: usize) -> Self {
        EncoderConfig {
            input: InputConfig::Pixels { mean, std },
            ..Self::tokens(2, max_len)
        }
    }

    /// Replaces the stack.
    pub fn with_stack(mut self, stack: StackConfig) -> Self {
        self.stack = stack;
        self
    }

    /// Sets the positions.
    pub fn with_positions(mut self, positions: Positions) -> Self {
        self.positions = positions;
        self
    }

    /// With or without a CLS vector.
    pub fn with_cls(mut self, cls: bool) -> Self {
        self.cls = cls;
        self
    }
}

/// How the classifier pools the encoder output into one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The CLS position (needs `cls = true`).
    Cls,
    /// Mean over valid (unmasked) tokens, CLS excluded.
    Mean,
    /// Mean of the final memory (Luna family only).
    Memory,
}

/// How the two-document head combines the pooled vectors u and v.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairFeatures {
    /// [u; v] without a LayerNorm on u, v: the ConvLuna authors' `DualClassifier`.
    Concat,
    /// [u, v, u⊙v, u−v] after a LayerNorm: the LRA paper's head.
    Interaction,
}

/// Classifier head configuration (guide §4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Number of classes.
    pub num_classes: usize,
    /// Hidden width of the MLP (the paper uses the FFN width).
    pub hidden_dim: usize,
    /// Pooling.
    pub pooling: Pooling,
    /// Image tasks add one more Linear(f→f) GELU.
    #[serde(default)]
    pub extra_layer: bool,
    /// `Some` for two-document (retrieval) tasks.
    #[serde(default)]
    pub pair: Option<PairFeatures>,
}

/// A whole model: encoder plus head. Serialises to the JSON written beside checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The encoder.
    pub encoder: EncoderConfig,
    /// The head.
    pub head: HeadConfig,
}

pub(crate) fn check_prob(field: &str, p: f64) -> Result<()> {
    if !(0.0..1.0).contains(&p) || !p.is_finite() {
        return Err(Error::config(field, format!("must be in [0, 1), got {p}")));
    }
    Ok(())
}

fn check_scale(field: &str, s: &ScaleConfig) -> Result<()> {
    match *s {
        ScaleConfig::FixedTemperature { tau } | ScaleConfig::LearnedTemperature { init: tau }
            if !tau.is_finite() =>
        {
            Err(Error::config(
                field,
                format!("temperature must be finite, got {tau}"),
            ))
        }
        _ => Ok(()),
    }
}

impl FilterConfig {
    /// Checks kernel and stride; `max_len` is the longest sequence the filter will see.
    pub fn validate(&self, field: &str, max_len: usize) -> Result<()> {
        let (kernel, stride, shortens) = match *self {
            FilterConfig::Identity => return Ok(()),
            FilterConfig::Conv { kernel, stride, .. } => (kernel, stride, stride > 1),
            FilterConfig::MaxPool { kernel, stride } => (kernel, stride, true),
        };
        if kernel == 0 {
            return Err(Error::config(
                format!("{field}.kernel"),
                "must be at least 1",
            ));
        }
        if stride == 0 {
            return Err(Error::config(
                format!("{field}.stride"),
                "must be at least 1",
            ));
        }
        if stride > max_len {
            return Err(Error::config(
                format!("{field}.stride"),
                format!("{stride} is larger than the input length {max_len}"),
            ));
        }
        if shortens && kernel > max_len {
            return Err(Error::config(
                format!("{field}.kernel"),
                format!("{kernel} is larger than the input length {max_len}"),
            ));
        }
        Ok(())
    }

    /// Length of the filtered sequence for an input of length `len`.
    pub fn output_len(&self, len: usize) -> Result<usize> {
        match *self {
            FilterConfig::Identity => Ok(len),
            FilterConfig::Conv { stride: 1, .. } => Ok(len),
            FilterConfig::Conv { kernel, stride, .. }
            | FilterConfig::MaxPool { kernel, stride } => {
                if len < kernel {
                    Err(Error::SequenceTooShort {
                        len,
                        kernel,
                        stride,
                    })
                } else {
                    Ok((len - kernel) / stride + 1)
                }
            }
        }
    }
}

impl LunaConfig {
    /// Checks the Luna options for sequences up to `max_len` (CLS included).
    pub fn validate(&self, max_len: usize) -> Result<()> {
        if self.memory_len == 0 {
            return Err(Error::config("block.memory_len", "must be at least 1"));
        }
        check_scale("block.pack_scale", &self.pack_scale)?;
        check_scale("block.unpack_scale", &self.unpack_scale)?;
        if let Some(std) = self.memory_init_std {
            if !(std.is_finite() && std > 0.0) {
                return Err(Error::config(
                    "block.memory_init_std",
                    format!("must be positive, got {std}"),
                ));
            }
        }
        self.filter.validate("block.filter", max_len)
    }
}

impl EncoderConfig {
    /// Head dimension d / h.
    pub fn head_dim(&self) -> usize {
        self.stack.head_dim()
    }

    /// Sequence length seen by the blocks (CLS included).
    pub fn seq_len(&self) -> usize {
        self.max_len + usize::from(self.cls)
    }

    /// Checks every field; the error names the field and the reason.
    pub fn validate(&self) -> Result<()> {
        if self.max_len == 0 {
            return Err(Error::config("encoder.max_len", "must be at least 1"));
        }
        match self.input {
            InputConfig::Tokens { vocab_size } if vocab_size < 2 => {
                return Err(Error::config(
                    "encoder.input.vocab_size",
                    format!("must be at least 2 (id 0 is padding), got {vocab_size}"),
                ))
            }
            InputConfig::Pixels { mean, std } => {
                if !mean.is_finite() {
                    return Err(Error::config("encoder.input.mean", "must be finite"));
                }
                if !(std.is_finite() && std > 0.0) {
                    return Err(Error::config(
                        "encoder.input.std",
                        format!("must be positive, got {std}"),
                    ));
                }
            }
            _ => {}
        }
        self.stack.validate_as("encoder", Some(self.seq_len()))?;
        if self.positions == Positions::Sinusoidal && !self.stack.d_model.is_multiple_of(2) {
            return Err(Error::config(
                "encoder.positions",
                "sinusoidal positions need an even d_model",
            ));
        }
        Ok(())
    }
}

impl HeadConfig {
    /// A classifier of `num_classes` classes: an MLP of width 512 (the paper's FFN width) on
    /// the CLS position, no extra layer, one document.
    pub fn classes(num_classes: usize) -> Self {
        HeadConfig {
            num_classes,
            hidden_dim: 512,
            pooling: Pooling::Cls,
            extra_layer: false,
            pair: None,
        }
    }

    /// Sets the MLP width.
    pub fn with_hidden_dim(mut self, hidden_dim: usize) -> Self {
        self.hidden_dim = hidden_dim;
        self
    }

    /// Sets the pooling.
    pub fn with_pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = pooling;
        self
    }

    /// A two-document (retrieval) head combining the documents by `pair`.
    pub fn with_pair(mut self, pair: PairFeatures) -> Self {
        self.pair = Some(pair);
        self
    }

    /// Checks the head against its encoder.
    pub fn validate(&self, enc: &EncoderConfig) -> Result<()> {
        if self.num_classes < 2 {
            return Err(Error::config(
                "head.num_classes",
                format!("must be at least 2, got {}", self.num_classes),
            ));
        }
        if self.hidden_dim == 0 {
            return Err(Error::config("head.hidden_dim", "must be at least 1"));
        }
        match self.pooling {
            Pooling::Cls if !enc.cls => Err(Error::config(
                "head.pooling",
                "`cls` pooling needs `encoder.cls = true`",
            )),
            Pooling::Memory if enc.stack.block.luna().is_none() => Err(Error::config(
                "head.pooling",
                "`memory` pooling needs a Luna-family block",
            )),
            _ => Ok(()),
        }
    }
}

impl ModelConfig {
    /// Checks encoder and head.
    pub fn validate(&self) -> Result<()> {
        self.encoder.validate()?;
        self.head.validate(&self.encoder)
    }

    /// The config as pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::format("<config>", e.to_string()))
    }

    /// Parses and validates a JSON config.
    pub fn from_json(s: &str) -> Result<Self> {
        let c: Self = serde_json::from_str(s).map_err(|e| {
            Error::format(
                "<config>",
                format!("line {} column {}: {e}", e.line(), e.column()),
            )
        })?;
        c.validate()?;
        Ok(c)
    }
}
