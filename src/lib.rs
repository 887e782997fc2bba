//! # convluna
//!
//! ConvLuna (Yorsh et al., *On Difficulties of Attention Factorization through Shared Memory*,
//! arXiv 2404.00798), Luna (Ma et al. 2021) and the pre-LN Transformer as Candle modules, with
//! the Long Range Arena tasks they are measured on.
//!
//! ```
//! use candle_core::{DType, Device, ModuleT, Tensor};
//! use candle_nn::{AdamW, Optimizer, ParamsAdamW};
//! use convluna::{Classifier, EncoderConfig, HeadConfig, ModelConfig, ParamStore, StackConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::Cpu;
//! // ConvLuna (the authors' block, padding masked) over 16 token ids, up to 32 tokens
//! let stack = StackConfig::convluna().with_d_model(32).with_ffn_dim(64).with_layers(2).with_memory(8);
//! let cfg = ModelConfig {
//!     encoder: EncoderConfig::tokens(16, 32).with_stack(stack),
//!     head: HeadConfig::classes(10).with_hidden_dim(64),
//! };
//! let store = ParamStore::new(42);                         // seeded, device independent
//! let model = Classifier::new(&cfg, store.var_builder(DType::F32, &device))?;
//! model.dropout_rng().reseed(7);                           // reproducible dropout masks
//!
//! // Two sequences, the second padded with id 0 (the mask is derived from the ids).
//! let ids = Tensor::new(&[[3u32, 5, 7, 1, 15, 2], [4, 9, 15, 0, 0, 0]], &device)?;
//! let labels = Tensor::new(&[1u32, 7], &device)?;
//! let logits = model.forward_t(&ids, true)?;              // candle's ModuleT: [2, 10]
//! assert_eq!(logits.dims(), &[2, 10]);
//!
//! let mut opt = AdamW::new(store.varmap().all_vars(), ParamsAdamW { lr: 1e-3, ..Default::default() })?;
//! let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
//! opt.backward_step(&loss)?;                                // one AdamW step
//! # Ok(()) }
//! ```
//!
//! On your own embeddings, [`Stack`] is the layer to use: hidden states `[B, L, d]` and an
//! optional padding mask in, `[B, L, d]` and the final memory out (see [`stack`]).
//!
//! ## Features
//! - default features off (`default-features = false`): the model alone — [`config`],
//!   [`preset`], [`filter`], [`pack`], [`unpack`], [`temperature`], [`block`], [`stack`], [`encoder`],
//!   [`head`], [`model`], [`params`], [`kernels`], [`rng`] — on candle-core, candle-nn,
//!   serde, thiserror, safetensors and the kernel crates (gemm, rayon, half, num-traits).
//! - `lra` (on by default): the Long Range Arena toolkit — `data` (readers, generators,
//!   batching), `train` and `optim` (the trainer, AdamW, schedules, checkpoints),
//!   `experiment` (runs as one checked description), `study` (the reproduction study),
//!   `diagnostics` (memory-collapse metrics), `stats`, `plot` and `report` (plots through
//!   `plotters`); adds png, flate2, serde_json's users and plotters.
//! - `hub`: `data::hub`, the real LRA Text (IMDb) and Image (CIFAR-10) data from the Hugging
//!   Face Hub through `candle-datasets` (a large dependency tree; see the README).
//! - `cuda`, `cudnn`, `metal`, `mkl`, `accelerate`: Candle's backends.
//! - `avx512`: does nothing any more (kept so that builds naming it still work): `gemm`'s
//!   AVX-512 matmul kernels are always built and picked at run time on CPUs with AVX-512F,
//!   with the same bits as the AVX2/FMA kernels ([`kernels`]).
//!
//! ## Modules
//! - [`config`]: validated serde configuration; [`preset`]: published combinations and LRA
//!   settings.
//! - [`pack`], [`unpack`], [`attention`]: the attentions; [`filter`]: F and the [`Filter`]
//!   trait; [`temperature`]: the learnable log-temperature.
//! - [`block`]: ConvLuna / Luna, Transformer and conv-mixer blocks; [`encoder`]; [`head`];
//!   [`model`].
//! - [`params`]: the seeded parameter store and safetensors I/O; [`rng`]: the one seeded
//!   generator and the seeding scheme; [`layers`]: Linear, LayerNorm, dropout, the FFN.
//!
//! The equations, the authors' choices and the crate's choices where the papers are silent are
//! in [`guide`] (the repository's `docs/model.md`), which the modules cite as "guide §n".
//!
//! ## Parameter names
//! PyTorch style, Linear weights `[out, in]`: `embed.weight`, `embed.bias` (pixels),
//! `pos.weight`, `cls`, `memory`, `layers.{i}.attn.{q,k,v,o}_proj.{weight,bias}` (or
//! `layers.{i}.pack.*` / `layers.{i}.unpack.*` with separate projections),
//! `layers.{i}.filter.weight`, `layers.{i}.pack_log_temperature`,
//! `layers.{i}.unpack_log_temperature`, `layers.{i}.norm_{x,p,ffn}.{weight,bias}`
//! (Transformer and conv mixer: `norm1`, `norm2`), `layers.{i}.ffn.fc{1,2}.{weight,bias}`,
//! `head.norm.{weight,bias}`, `head.fc1`, `head.fc2`, `head.out`.
//!
//! ## Choices where the paper is silent
//! - Token id 0 is padding: its embedding is multiplied by zero, so neither it nor its gradient
//!   matters (as `nn.Embedding(padding_idx = 0)`), though the stored row is not zero.
//! - Masked logits get −1e9 (−3·10⁴ in f16); a sequence with no valid position packs uniformly
//!   over its (filtered) positions instead of producing NaN.
//! - Mean pooling excludes the CLS position; memory pooling normalises each memory slot with the
//!   head's LayerNorm, then averages.
//! - Dropout masks come from the crate's seeded generator ([`DropoutRng`], see [`rng`])
//!   because Candle's CPU generator cannot be seeded.

#![warn(missing_docs)]

pub mod attention;
pub mod block;
#[doc = include_str!("../docs/model.md")]
pub mod guide {}
pub mod config;
pub mod dropout;
pub mod encoder;
pub mod error;
pub mod filter;
pub mod head;
pub mod kernels;
pub mod layers;
pub mod model;
pub mod ops;
pub mod pack;
pub mod params;
pub mod preset;
pub mod rng;
pub mod stack;
pub mod temperature;
pub mod unpack;

#[cfg(feature = "lra")]
pub mod data;
#[cfg(feature = "lra")]
pub mod diagnostics;
#[cfg(feature = "lra")]
pub mod experiment;
#[cfg(feature = "lra")]
pub mod optim;
#[cfg(feature = "lra")]
pub mod plot;
#[cfg(feature = "lra")]
pub mod report;
#[cfg(feature = "lra")]
pub mod stats;
#[cfg(feature = "lra")]
pub mod study;
#[cfg(feature = "lra")]
pub mod train;

pub use block::{
    BlockDims, ConvMixerBlock, EncoderBlock, LunaBlock, LunaBlockOutput, TransformerBlock,
};
pub use config::{
    BlockConfig, EncoderConfig, FilterConfig, HeadConfig, InputConfig, LunaConfig, ModelConfig,
    PairFeatures, Pooling, Positions, Projections, ScaleConfig,
};
pub use encoder::{Encoder, EncoderOutput, LayerTrace};
pub use error::{Error, Result};
pub use filter::{ConvFilter, Filter, IdentityFilter, MaxPoolFilter, Window};
pub use head::{ClassifierHead, PairHead, Pooler};
pub use layers::{DropoutRng, FeedForward};
pub use model::{load_model, save_model, Classifier, PairClassifier, TaskInputs, TaskModel};
pub use pack::{PackAttention, Packed};
pub use params::ParamStore;
pub use preset::{BlockPreset, LraTask, PaperSettings};
pub use stack::{Stack, StackConfig, StackOutput};
pub use temperature::LogitScale;
pub use unpack::UnpackAttention;
