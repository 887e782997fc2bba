//! The encoder (guide §4): embeddings, positions and CLS, then the block [`Stack`] (which owns
//! the learned initial memory).
//!
//! Parameter names: `embed.weight` (`[vocab, d]` for tokens; `[d, 1]` with `embed.bias [d]` for
//! pixels), `pos.weight [max_len, d]` (learned positions), `cls [d]`, `memory [m, d]`
//! (Luna family), `layers.{i}.…` (see [`crate::block`]).

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::block::EncoderBlock;
use crate::config::{EncoderConfig, InputConfig, Positions};
use crate::error::{Error, Result};
use crate::layers::DropoutRng;
use crate::stack::Stack;
pub use crate::stack::{LayerTrace, MakeFilter};

/// Encoder output.
#[derive(Clone, Debug)]
pub struct EncoderOutput {
    /// Hidden states `[B, L', d]` (L' = L + 1 with CLS at position 0).
    pub hidden: Tensor,
    /// Validity of each hidden position `[B, L']`, float 0/1 (CLS valid).
    pub mask: Tensor,
    /// Final memory `[B, m, d]` (Luna family).
    pub memory: Option<Tensor>,
    /// Per-layer memories and pack attention, when asked for.
    pub trace: Option<Vec<LayerTrace>>,
}

/// ConvLuna, Luna or Transformer encoder.
#[derive(Clone, Debug)]
pub struct Encoder {
    cfg: EncoderConfig,
    embed_w: Tensor,
    embed_b: Option<Tensor>,
    pos: Option<Tensor>,
    cls: Option<Tensor>,
    stack: Stack,
}

/// Sinusoidal table `[len, d]`: `pe[p, 2i] = sin(p / 10000^(2i/d))`, `pe[p, 2i+1] = cos(…)`.
pub fn sinusoidal_positions(len: usize, d: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut v = vec![0f64; len * d];
    for p in 0..len {
        for i in 0..d / 2 {
            let angle = p as f64 / 10000f64.powf(2.0 * i as f64 / d as f64);
            v[p * d + 2 * i] = angle.sin();
            v[p * d + 2 * i + 1] = angle.cos();
        }
    }
    Ok(Tensor::from_vec(v, (len, d), device)?.to_dtype(dtype)?)
}

impl Encoder {
    /// Builds the encoder under `vb` (validates `cfg`). Every dropout of its blocks draws from
    /// one generator, [`Encoder::dropout_rng`] (seed 0 until reseeded).
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(cfg, None, vb)
    }

    /// The encoder with a filter of the caller's in every layer that has one (the Luna family
    /// and the locality controls; `cfg`'s filter setting is then ignored): `make_filter(i, vb)`
    /// builds layer i's, with its parameters (if any) under `vb` (`layers.{i}.filter`).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use candle_core::{DType, Device, Tensor};
    /// # use convluna::{Encoder, EncoderConfig, Filter, IdentityFilter, ParamStore, StackConfig};
    /// # fn main() -> convluna::Result<()> {
    /// let stack = StackConfig::convluna().with_d_model(16).with_heads(2).with_layers(2).with_memory(4);
    /// let cfg = EncoderConfig::tokens(16, 20).with_stack(stack.with_dropout(0.0));
    /// let store = ParamStore::new(0);
    /// let enc = Encoder::with_filter(&cfg, store.var_builder(DType::F32, &Device::Cpu),
    ///     &|_layer, _vb| Ok(Arc::new(IdentityFilter) as Arc<dyn Filter>))?;
    /// let out = enc.encode(&Tensor::new(&[[3u32, 4, 5]], &Device::Cpu)?, None, false)?;
    /// assert_eq!(out.hidden.dims(), &[1, 4, 16]);
    /// # Ok(()) }
    /// ```
    pub fn with_filter(
        cfg: &EncoderConfig,
        vb: VarBuilder,
        make_filter: &MakeFilter,
    ) -> Result<Self> {
        Self::build(cfg, Some(make_filter), vb)
    }

    fn build(
        cfg: &EncoderConfig,
        make_filter: Option<&MakeFilter>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let rng = &DropoutRng::default();
        cfg.validate()?;
        let d = cfg.stack.d_model;
        let (embed_w, embed_b) = match cfg.input {
            InputConfig::Tokens { vocab_size } => (
                vb.pp("embed").get_with_hints(
                    (vocab_size, d),
                    "weight",
                    Init::Randn {
                        mean: 0.0,
                        stdev: 1.0,
                    },
                )?,
                None,
            ),
            InputConfig::Pixels { .. } => (
                vb.pp("embed").get_with_hints(
                    (d, 1),
                    "weight",
                    Init::Randn {
                        mean: 0.0,
                        stdev: 1.0,
                    },
                )?,
                Some(vb.pp("embed").get_with_hints(
                    d,
                    "bias",
                    Init::Randn {
                        mean: 0.0,
                        stdev: 0.1,
                    },
                )?),
            ),
        };
        let pos = match cfg.positions {
            Positions::Learned => Some(vb.pp("pos").get_with_hints(
                (cfg.max_len, d),
                "weight",
                Init::Const(0.0),
            )?),
            Positions::Sinusoidal => Some(sinusoidal_positions(
                cfg.max_len,
                d,
                vb.dtype(),
                vb.device(),
            )?),
            Positions::None => None,
        };
        let cls = if cfg.cls {
            // The authors' initialisations: `xavier_uniform_` on a [1, 1, d] tensor for token
            // inputs (fan_in = fan_out = d, so U(±√(3/d))), N(0, 1) for pixel inputs.
            let init = match cfg.input {
                InputConfig::Tokens { .. } => {
                    let bound = (3.0 / d as f64).sqrt();
                    Init::Uniform {
                        lo: -bound,
                        up: bound,
                    }
                }
                InputConfig::Pixels { .. } => Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            };
            Some(vb.get_with_hints(d, "cls", init)?)
        } else {
            None
        };
        let stack = Stack::build(&cfg.stack, make_filter, rng, vb)?;
        Ok(Self {
            cfg: cfg.clone(),
            embed_w,
            embed_b,
            pos,
            cls,
            stack,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// The block stack.
    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// The blocks.
    pub fn blocks(&self) -> &[EncoderBlock] {
        self.stack.blocks()
    }

    /// The dropout generator shared by the blocks.
    pub fn dropout_rng(&self) -> &DropoutRng {
        self.stack.dropout_rng()
    }

    /// Checks `input` and `mask` and returns `(B, L)` and the float mask `[B, L]`.
    /// For token input without a mask, the mask is `ids ≠ 0` (id 0 is padding);
    /// for pixels without a mask every position is valid.
    pub fn prepare_mask(
        &self,
        input: &Tensor,
        mask: Option<&Tensor>,
        dtype: DType,
    ) -> Result<Tensor> {
        let (b, l) = match input.dims() {
            [b, l] => (*b, *l),
            d => return Err(Error::shape("input", "[batch, length]", d)),
        };
        if l == 0 || b == 0 {
            return Err(Error::shape(
                "input",
                "non-empty [batch, length]",
                input.dims(),
            ));
        }
        if l > self.cfg.max_len {
            return Err(Error::shape(
                "input",
                format!("length at most max_len = {}", self.cfg.max_len),
                input.dims(),
            ));
        }
        match (self.cfg.input, input.dtype()) {
            (InputConfig::Tokens { .. }, DType::U8 | DType::U32 | DType::I64) => {}
            (InputConfig::Tokens { .. }, dt) => {
                return Err(Error::shape(
                    "input",
                    "integer token ids (u8, u32 or i64)",
                    dt,
                ))
            }
            (InputConfig::Pixels { .. }, DType::F16 | DType::BF16 | DType::F32 | DType::F64) => {}
            (InputConfig::Pixels { .. }, dt) => {
                return Err(Error::shape("input", "float pixel values 0..255", dt))
            }
        }
        match mask {
            Some(m) => {
                if m.dims() != [b, l] {
                    return Err(Error::shape(
                        "mask",
                        format!("[{b}, {l}] like the input"),
                        m.dims(),
                    ));
                }
                Ok(m.ne(0.0f64)?.to_dtype(dtype)?)
            }
            None => match self.cfg.input {
                InputConfig::Tokens { .. } => Ok(input.ne(0u32)?.to_dtype(dtype)?),
                InputConfig::Pixels { .. } => Ok(Tensor::ones((b, l), dtype, input.device())?),
            },
        }
    }

    /// Embeddings plus positions plus CLS: `[B, L(+1), d]` and the mask `[B, L(+1)]`.
    pub fn embed(&self, input: &Tensor, mask: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let dtype = self.embed_w.dtype();
        let mask = self.prepare_mask(input, mask, dtype)?;
        let (b, l) = mask.dims2()?;
        let d = self.cfg.stack.d_model;
        let x = match self.cfg.input {
            InputConfig::Tokens { vocab_size } => {
                let ids = input.to_dtype(DType::I64)?;
                let (lo, hi) = (
                    ids.min_all()?.to_scalar::<i64>()?,
                    ids.max_all()?.to_scalar::<i64>()?,
                );
                if lo < 0 || hi >= vocab_size as i64 {
                    return Err(Error::shape(
                        "input",
                        format!("token ids in [0, {vocab_size})"),
                        format!("ids in [{lo}, {hi}]"),
                    ));
                }
                let ids = ids.to_dtype(DType::U32)?;
                let e = self
                    .embed_w
                    .index_select(&ids.flatten_all()?, 0)?
                    .reshape((b, l, d))?;
                // id 0 is padding: zero its embedding and its gradient, as nn.Embedding(padding_idx=0).
                crate::ops::mask_rows(&e, &ids.ne(0u32)?)?
            }
            InputConfig::Pixels { mean, std } => {
                let z = ((input.to_dtype(dtype)? / 255.0)? - mean)? / std;
                let w = self.embed_w.reshape((1, 1, d))?;
                let bias = self.embed_b.as_ref().ok_or_else(|| {
                    Error::config("encoder.input", "pixel embedding without bias")
                })?;
                z?.unsqueeze(2)?.broadcast_mul(&w)?.broadcast_add(bias)?
            }
        };
        let x = match &self.pos {
            Some(p) => x.broadcast_add(&p.narrow(0, 0, l)?.to_dtype(dtype)?)?,
            None => x,
        };
        match &self.cls {
            Some(c) => {
                let c = c
                    .reshape((1, 1, d))?
                    .broadcast_as((b, 1, d))?
                    .contiguous()?;
                let x = Tensor::cat(&[&c, &x], 1)?;
                let ones = Tensor::ones((b, 1), dtype, mask.device())?;
                Ok((x, Tensor::cat(&[&ones, &mask], 1)?))
            }
            None => Ok((x, mask)),
        }
    }

    /// The learned initial memory broadcast to `[B, m, d]` (Luna family).
    pub fn initial_memory(&self, batch: usize) -> Result<Option<Tensor>> {
        self.stack.initial_memory(batch)
    }

    /// Runs the encoder. `input`: token ids `[B, L]` (integer) or raw pixels `[B, L]` (float);
    /// `mask`: `[B, L]`, non-zero = valid (see [`Encoder::prepare_mask`] for `None`).
    pub fn encode(
        &self,
        input: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<EncoderOutput> {
        self.run(input, mask, train, false)
    }

    /// As [`Encoder::encode`], and records every layer's memory and pack attention.
    pub fn forward_traced(
        &self,
        input: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<EncoderOutput> {
        self.run(input, mask, train, true)
    }

    fn run(
        &self,
        input: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
        trace: bool,
    ) -> Result<EncoderOutput> {
        let (x, mask) = self.embed(input, mask)?;
        let out = self.stack.run_checked(x, &mask, train, trace)?;
        Ok(EncoderOutput {
            hidden: out.hidden,
            mask,
            memory: out.memory,
            trace: out.trace,
        })
    }
}

impl ModuleT for Encoder {
    /// Hidden states `[B, L(+1), d]`, the mask derived from the input.
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.encode(xs, None, train)?.hidden)
    }
}
