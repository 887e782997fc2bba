//! # convluna
//!
//! ConvLuna (Yorsh et al., *On Difficulties of Attention Factorization through Shared Memory*,
//! arXiv 2404.00798), Luna (Ma et al. 2021) and the pre-LN Transformer as Candle modules, with
//! the Long Range Arena tasks they are measured on.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{AdamW, Optimizer, ParamsAdamW};
//! use convluna::{BlockPreset, Classifier, DropoutRng, EncoderConfig, HeadConfig, InputConfig,
//!                ModelConfig, ParamStore, Pooling, Positions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::Cpu;
//! let cfg = ModelConfig {
//!     encoder: EncoderConfig {
//!         input: InputConfig::Tokens { vocab_size: 16 },
//!         max_len: 32, d_model: 32, num_heads: 4, ffn_dim: 64, num_layers: 2,
//!         dropout: 0.1, attention_dropout: 0.1, positions: Positions::Learned, cls: true,
//!         block: BlockPreset::ConvlunaMasked.block(8, 32),   // m = 8 memory slots
//!     },
//!     head: HeadConfig { num_classes: 10, hidden_dim: 64, pooling: Pooling::Cls,
//!                        extra_layer: false, pair: None },
//! };
//! let store = ParamStore::new(42);                         // seeded, device independent
//! let model = Classifier::new(&cfg, &DropoutRng::new(42), store.var_builder(DType::F32, &device))?;
//!
//! // Two sequences, the second padded with id 0 (the mask is derived from the ids).
//! let ids = Tensor::new(&[[3u32, 5, 7, 1, 15, 2], [4, 9, 15, 0, 0, 0]], &device)?;
//! let labels = Tensor::new(&[1u32, 7], &device)?;
//! let logits = model.forward_t(&ids, None, true)?;          // [2, 10]
//! assert_eq!(logits.dims(), &[2, 10]);
//!
//! let mut opt = AdamW::new(store.varmap().all_vars(), ParamsAdamW { lr: 1e-3, ..Default::default() })?;
//! let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
//! opt.backward_step(&loss)?;                                // one AdamW step
//! # Ok(()) }
//! ```
//!
//! ## Modules
//! - [`config`]: validated serde configuration; [`preset`]: published combinations and LRA settings.
//! - [`pack`], [`unpack`], [`attention`]: the attentions; [`filter`]: F and the [`Filter`] trait;
//!   [`temperature`]: the learnable log-temperature.
//! - [`block`]: ConvLuna / Luna and Transformer blocks; [`encoder`]; [`head`]; [`model`].
//! - [`params`]: the seeded parameter store and safetensors I/O.
//! - [`data`]: LRA readers (official formats and offline substitutes), seeded ListOps and
//!   Pathfinder generators, batching.
//! - [`train`]: the trainer (AdamW from [`optim`], schedules, clipping, accumulation, atomic
//!   resumable checkpoints); [`diagnostics`]: memory-collapse metrics; [`stats`]: confidence
//!   intervals and Welch's t-test; [`plot`] and [`report`]: SVG plots of runs.
//!
//! ## Parameter names
//! PyTorch style, Linear weights `[out, in]`: `embed.weight`, `embed.bias` (pixels),
//! `pos.weight`, `cls`, `memory`, `layers.{i}.attn.{q,k,v,o}_proj.{weight,bias}` (or
//! `layers.{i}.pack.*` / `layers.{i}.unpack.*` with separate projections),
//! `layers.{i}.filter.weight`, `layers.{i}.pack_log_temperature`,
//! `layers.{i}.unpack_log_temperature`, `layers.{i}.norm_{x,p,ffn}.{weight,bias}`
//! (Transformer: `norm1`, `norm2`), `layers.{i}.ffn.fc{1,2}.{weight,bias}`,
//! `head.norm.{weight,bias}`, `head.fc1`, `head.fc2`, `head.out`.
//!
//! ## Choices where the spec is silent
//! - Token id 0 is padding: its embedding is multiplied by zero, so neither it nor its gradient
//!   matters (as `nn.Embedding(padding_idx = 0)`), though the stored row is not zero.
//! - Masked logits get −1e9 (−3·10⁴ in f16); a sequence with no valid position packs uniformly
//!   over its (filtered) positions instead of producing NaN.
//! - Mean pooling excludes the CLS position; memory pooling normalises each memory slot with the
//!   head's LayerNorm, then averages.
//! - Dropout masks come from a seeded generator ([`DropoutRng`]) because Candle's CPU generator
//!   cannot be seeded.

#![warn(missing_docs)]

pub mod attention;
pub mod block;
pub mod config;
pub mod data;
pub mod diagnostics;
pub mod encoder;
pub mod error;
pub mod experiment;
pub mod filter;
pub mod head;
pub mod kernels;
pub mod layers;
pub mod model;
pub mod optim;
pub mod pack;
pub mod params;
pub mod plot;
pub mod preset;
pub mod report;
pub mod rng;
pub mod stats;
pub mod study;
pub mod temperature;
pub mod train;
pub mod unpack;

pub use block::{Block, BlockDims, ConvMixerBlock, LunaBlock, LunaBlockOutput, TransformerBlock};
pub use config::{
    BlockConfig, EncoderConfig, FilterConfig, HeadConfig, InputConfig, LunaConfig, ModelConfig,
    PairFeatures, Pooling, Positions, Projections, Scale,
};
pub use encoder::{Encoder, EncoderOutput, LayerTrace};
pub use error::{Error, Result};
pub use filter::{ConvFilter, Filter, IdentityFilter, MaxPoolFilter, Window};
pub use head::{ClassifierHead, PairHead, Pooler};
pub use layers::{Dropout, DropoutRng, FeedForward, LayerNorm, Linear};
pub use model::{load_model, save_model, Classifier, Inputs, Model, PairClassifier};
pub use pack::{PackAttention, Packed};
pub use params::ParamStore;
pub use preset::{BlockPreset, LraTask, PaperSettings};
pub use temperature::LogitScale;
pub use unpack::UnpackAttention;
