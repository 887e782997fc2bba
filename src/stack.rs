//! The block stack: ConvLuna, Luna or the Transformer over hidden states you bring (guide §4).
//!
//! [`Stack`] is the drop-in layer: it takes hidden states `[B, L, d]` and an optional padding
//! mask `[B, L]`, owns the learned initial memory of the Luna family and threads it from
//! block to block, and returns hidden states `[B, L, d]` with the final memory `[B, m, d]`:
//!
//! ```text
//! P₀ = broadcast(memory)                       (Luna family; learned, [m, d])
//! (Xᵢ₊₁, Pᵢ₊₁) = blockᵢ(Xᵢ, Pᵢ, mask)           i = 0 … n − 1
//! ```
//!
//! It is what [`crate::Encoder`] runs after its embeddings, and what you put on top of your
//! own embeddings (a patch stem, a protein or audio encoder):
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use convluna::{Stack, StackConfig};
//!
//! # fn main() -> convluna::Result<()> {
//! let cfg = StackConfig::convluna().with_d_model(32).with_layers(2).with_memory(8);
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let stack = Stack::new(&cfg, vb.pp("stack"))?;
//! let x = Tensor::randn(0f32, 1., (2, 50, 32), &Device::Cpu)?; // your embeddings
//! let y = stack.forward(&x)?;                                  // [2, 50, 32]
//! let mask = Tensor::ones((2, 50), DType::F32, &Device::Cpu)?;  // 1 = valid, 0 = padding
//! let out = stack.forward_masked(&x, Some(&mask), false)?;
//! assert_eq!(out.hidden.dims(), &[2, 50, 32]);
//! assert_eq!(out.memory.unwrap().dims(), &[2, 8, 32]);
//! # Ok(()) }
//! ```
//!
//! The Transformer family is pre-LN: its output has no final LayerNorm (the crate's heads
//! apply one); put one before your own head. Parameter names under the `VarBuilder`:
//! `memory [m, d]` (Luna family), `layers.{i}.…` (see [`crate::block`]).

use std::sync::Arc;

use candle_core::{ModuleT, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::block::{BlockDims, ConvMixerBlock, EncoderBlock, LunaBlock, TransformerBlock};
pub use crate::config::StackConfig;
use crate::config::{BlockConfig, FilterConfig};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::layers::DropoutRng;

/// The dimensions every block of `cfg` shares.
fn dims(cfg: &StackConfig) -> BlockDims {
    BlockDims {
        d_model: cfg.d_model,
        num_heads: cfg.num_heads,
        ffn_dim: cfg.ffn_dim,
        dropout: cfg.dropout,
        attention_dropout: cfg.attention_dropout,
    }
}

/// What [`Stack::forward_masked`] returns.
#[derive(Clone, Debug)]
pub struct StackOutput {
    /// Hidden states `[B, L, d]`.
    pub hidden: Tensor,
    /// Final memory `[B, m, d]` (Luna family).
    pub memory: Option<Tensor>,
    /// Per-layer memories and pack attention ([`Stack::forward_traced`] only).
    pub trace: Option<Vec<LayerTrace>>,
}

/// What one Luna-family layer did, for memory diagnostics.
#[derive(Clone, Debug)]
pub struct LayerTrace {
    /// Memory entering the layer `[B, m, d]`.
    pub memory_in: Tensor,
    /// Memory leaving the layer `[B, m, d]`.
    pub memory_out: Tensor,
    /// The packed output `Y_p` `[B, m, d]` (what unpacking reads).
    pub packed: Tensor,
    /// Pack-attention weights `[B, h, m, L']`.
    pub pack_attention: Tensor,
    /// The filtered key mask `[B, L']` matching `pack_attention` (all ones when unmasked).
    pub pack_mask: Tensor,
}

/// Builds layer `i`'s filter with its parameters under the given `VarBuilder`
/// ([`Stack::with_filter`], [`crate::Encoder::with_filter`]).
pub type MakeFilter = dyn Fn(usize, VarBuilder) -> Result<Arc<dyn Filter>>;

/// ConvLuna, Luna or Transformer blocks over hidden states `[B, L, d]` (see the module docs).
#[derive(Clone, Debug)]
pub struct Stack {
    cfg: StackConfig,
    memory: Option<Tensor>,
    blocks: Vec<EncoderBlock>,
    rng: DropoutRng,
}

impl Stack {
    /// Builds the stack under `vb` (validates `cfg`). Every dropout of its blocks draws from
    /// one generator, [`Stack::dropout_rng`] (seed 0 until reseeded).
    pub fn new(cfg: &StackConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        Self::build(cfg, None, &DropoutRng::default(), vb)
    }

    /// The stack with a filter of the caller's in every layer that has one (the Luna family
    /// and the locality controls; `cfg`'s filter setting is then ignored): `make_filter(i,
    /// vb)` builds layer i's, with its parameters (if any) under `vb` (`layers.{i}.filter`).
    pub fn with_filter(
        cfg: &StackConfig,
        vb: VarBuilder,
        make_filter: &MakeFilter,
    ) -> Result<Self> {
        cfg.validate()?;
        Self::build(cfg, Some(make_filter), &DropoutRng::default(), vb)
    }

    /// Builds without validating (the caller has), with the caller's dropout generator.
    pub(crate) fn build(
        cfg: &StackConfig,
        make_filter: Option<&MakeFilter>,
        rng: &DropoutRng,
        vb: VarBuilder,
    ) -> Result<Self> {
        let dims = dims(cfg);
        let d = cfg.d_model;
        let memory = match &cfg.block {
            BlockConfig::Luna(l) => {
                let std = l.memory_std(d);
                Some(vb.get_with_hints(
                    (l.memory_len, d),
                    "memory",
                    Init::Randn {
                        mean: 0.0,
                        stdev: std,
                    },
                )?)
            }
            _ => None,
        };
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let lvb = vb.pp(format!("layers.{i}"));
            let filter = |f: &FilterConfig| match make_filter {
                Some(make) => make(i, lvb.pp("filter")),
                None => crate::filter::build(f, cfg.num_heads, dims.head_dim(), lvb.pp("filter")),
            };
            blocks.push(match &cfg.block {
                BlockConfig::Luna(l) => {
                    let f = make_filter.map(|_| filter(&l.filter)).transpose()?;
                    EncoderBlock::Luna(LunaBlock::build(l, &dims, f, rng, lvb)?)
                }
                BlockConfig::Transformer => {
                    EncoderBlock::Transformer(TransformerBlock::build(&dims, None, rng, lvb)?)
                }
                BlockConfig::FilteredTransformer { filter: f } => EncoderBlock::Transformer(
                    TransformerBlock::build(&dims, Some(filter(f)?), rng, lvb)?,
                ),
                BlockConfig::ConvMixer { filter: f } => {
                    EncoderBlock::ConvMixer(ConvMixerBlock::build(&dims, filter(f)?, rng, lvb)?)
                }
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            memory,
            blocks,
            rng: rng.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &StackConfig {
        &self.cfg
    }

    /// The blocks.
    pub fn blocks(&self) -> &[EncoderBlock] {
        &self.blocks
    }

    /// The dropout generator shared by the blocks (reseed it for reproducible training).
    pub fn dropout_rng(&self) -> &DropoutRng {
        &self.rng
    }

    /// The learned initial memory broadcast to `[B, m, d]` (Luna family).
    pub fn initial_memory(&self, batch: usize) -> Result<Option<Tensor>> {
        self.memory
            .as_ref()
            .map(|m| -> Result<Tensor> {
                let (mm, d) = m.dims2()?;
                Ok(m.unsqueeze(0)?.broadcast_as((batch, mm, d))?.contiguous()?)
            })
            .transpose()
    }

    /// Runs the blocks. `x`: hidden states `[B, L, d]`; `mask`: `[B, L]`, non-zero = valid
    /// (`None`: every position valid). Returns the hidden states and the final memory.
    pub fn forward_masked(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<StackOutput> {
        self.run(x, mask, train, false)
    }

    /// As [`Stack::forward_masked`], and records every layer's memory and pack attention.
    pub fn forward_traced(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<StackOutput> {
        self.run(x, mask, train, true)
    }

    fn check(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let d = self.cfg.d_model;
        let (b, l) = match x.dims() {
            [b, l, dd] if *dd == d && *b > 0 && *l > 0 => (*b, *l),
            dims => {
                return Err(Error::shape(
                    "hidden states",
                    format!("non-empty [batch, length, d_model = {d}]"),
                    dims,
                ))
            }
        };
        if !x.dtype().is_float() {
            return Err(Error::shape("hidden states", "a float dtype", x.dtype()));
        }
        match mask {
            Some(m) if m.dims() != [b, l] => Err(Error::shape(
                "mask",
                format!("[{b}, {l}] like the hidden states"),
                m.dims(),
            )),
            Some(m) => Ok(m.ne(0.0f64)?.to_dtype(x.dtype())?),
            None => Ok(Tensor::ones((b, l), x.dtype(), x.device())?),
        }
    }

    fn run(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
        trace: bool,
    ) -> Result<StackOutput> {
        let mask = self.check(x, mask)?;
        self.run_checked(x.clone(), &mask, train, trace)
    }

    /// Runs the blocks on checked inputs (`mask` float 0/1 `[B, L]` of `x`'s dtype).
    pub(crate) fn run_checked(
        &self,
        mut x: Tensor,
        mask: &Tensor,
        train: bool,
        trace: bool,
    ) -> Result<StackOutput> {
        let mut memory = self
            .initial_memory(x.dim(0)?)?
            .map(|m| m.to_dtype(x.dtype()))
            .transpose()?;
        let mut traces = trace.then(Vec::new);
        for block in &self.blocks {
            match block {
                EncoderBlock::Luna(blk) => {
                    let p = memory
                        .as_ref()
                        .ok_or_else(|| Error::config("stack.block", "Luna block without memory"))?;
                    let out = blk.run(&x, p, Some(mask), train, traces.is_some())?;
                    if let Some(t) = traces.as_mut() {
                        let pack_attention = out.pack_attention.clone().ok_or_else(|| {
                            Error::config("stack.block", "traced Luna block without weights")
                        })?;
                        let pm = match &out.pack_mask {
                            Some(m) => m.clone(),
                            None => {
                                let (b, _, _, l) = pack_attention.dims4()?;
                                Tensor::ones((b, l), x.dtype(), x.device())?
                            }
                        };
                        t.push(LayerTrace {
                            memory_in: p.clone(),
                            memory_out: out.memory.clone(),
                            packed: out.packed.clone(),
                            pack_attention,
                            pack_mask: pm,
                        });
                    }
                    x = out.x;
                    memory = Some(out.memory);
                }
                EncoderBlock::Transformer(blk) => x = blk.forward_t(&x, Some(mask), train)?,
                EncoderBlock::ConvMixer(blk) => x = blk.forward_t(&x, Some(mask), train)?,
            }
        }
        Ok(StackOutput {
            hidden: x,
            memory,
            trace: traces,
        })
    }
}

/// `stack.forward_t(&x, train)`: hidden states `[B, L, d]` → `[B, L, d]`, every position
/// valid, dropout on when `train`. (Candle's blanket `impl<M: Module> ModuleT for M` would
/// ignore `train`, so the stack implements `ModuleT` itself; [`Stack::forward`] is the
/// inference shorthand.)
impl ModuleT for Stack {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.forward_masked(xs, None, train)?.hidden)
    }
}

impl Stack {
    /// Inference on hidden states `[B, L, d]`, every position valid (as `Module::forward`).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.forward_masked(xs, None, false)?.hidden)
    }
}
