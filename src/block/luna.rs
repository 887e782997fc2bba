//! The Luna-family block; ConvLuna is the configuration with a filter and a learned τ.
//!
//! ```text
//! Y_p = Pack(X, P)     Y_x = Unpack(X, Y_p)
//! X_A = LN_x(X + Y_x)  P' = LN_p(P + Y_p)  X' = LN_f(X_A + FFN(X_A))
//! ```
//! (Ma et al. add dropout on Y_x and Y_p before the residuals: `residual_dropout`.)
//! Parameter names: `attn.{q,k,v,o}_proj` (shared projections) or `pack.{q,k,v}_proj` and
//! `unpack.{q,k,v,o}_proj` (separate), `filter.weight`, `pack_log_temperature`,
//! `unpack_log_temperature`, `norm_x`, `norm_p`, `norm_ffn`, `ffn.fc1`, `ffn.fc2`.

use std::sync::Arc;

use candle_core::{ModuleT, Tensor};
use candle_nn::VarBuilder;

use super::BlockDims;
use crate::config::{LunaConfig, Projections};
use crate::error::{Error, Result};
use crate::filter::{self, Filter};
use crate::layers::{linear, Dropout, DropoutRng, FeedForward, LayerNorm};
use crate::pack::{PackAttention, Packed};
use crate::temperature::LogitScale;
use crate::unpack::UnpackAttention;

/// Output of a Luna block.
#[derive(Clone, Debug)]
pub struct LunaBlockOutput {
    /// X' `[B, L, d]`.
    pub x: Tensor,
    /// P' `[B, m, d]`.
    pub memory: Tensor,
    /// The packed output Y_p `[B, m, d]` (before residual dropout).
    pub packed: Tensor,
    /// Pack attention `[B, h, m, L']`: [`LunaBlock::forward_traced`] only (`None` from
    /// [`LunaBlock::forward_t`], which stores no weights).
    pub pack_attention: Option<Tensor>,
    /// The filtered mask `[B, L']` of the pack keys (`None` when masking is off).
    pub pack_mask: Option<Tensor>,
}

/// ConvLuna / Luna block.
#[derive(Clone, Debug)]
pub struct LunaBlock {
    pack: PackAttention,
    unpack: UnpackAttention,
    norm_x: LayerNorm,
    norm_p: LayerNorm,
    norm_ffn: LayerNorm,
    ffn: FeedForward,
    residual_drop: Option<Dropout>,
    rng: DropoutRng,
}

impl LunaBlock {
    /// Builds the block described by `cfg` under `vb`. Its dropout draws from a generator of
    /// its own ([`LunaBlock::dropout_rng`]; an [`crate::Encoder`] shares one among its blocks).
    pub fn new(cfg: &LunaConfig, dims: &BlockDims, vb: VarBuilder) -> Result<Self> {
        Self::build(cfg, dims, None, &DropoutRng::default(), vb)
    }

    /// Builds the block with a user-supplied filter (`cfg.filter` is ignored).
    pub fn with_filter(
        cfg: &LunaConfig,
        dims: &BlockDims,
        filter: Arc<dyn Filter>,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::build(cfg, dims, Some(filter), &DropoutRng::default(), vb)
    }

    /// The generator of the block's dropout masks (reseed it for reproducible training).
    pub fn dropout_rng(&self) -> &DropoutRng {
        &self.rng
    }

    /// The block with `filter` (or the one `cfg` names) and dropout drawing from `rng`.
    pub(crate) fn build(
        cfg: &LunaConfig,
        dims: &BlockDims,
        filter: Option<Arc<dyn Filter>>,
        rng: &DropoutRng,
        vb: VarBuilder,
    ) -> Result<Self> {
        dims.check()?;
        let filter = match filter {
            Some(f) => f,
            None => {
                cfg.filter.validate("filter", usize::MAX)?;
                filter::build(
                    &cfg.filter,
                    dims.num_heads,
                    dims.head_dim(),
                    vb.pp("filter"),
                )?
            }
        };
        if cfg.memory_len == 0 {
            return Err(Error::config("memory_len", "must be at least 1"));
        }
        let d = dims.d_model;
        let h = dims.num_heads;
        let dh = dims.head_dim();
        let attn_drop = Dropout::new(dims.attention_dropout, rng.clone());
        let pack_scale = LogitScale::new(&cfg.pack_scale, dh, "pack_log_temperature", vb.clone())?;
        let unpack_scale =
            LogitScale::new(&cfg.unpack_scale, dh, "unpack_log_temperature", vb.clone())?;
        let (pack, unpack) = match cfg.projections {
            Projections::SharedNoValue | Projections::Shared => {
                let a = vb.pp("attn");
                let q = linear(d, d, a.pp("q_proj"))?;
                let k = linear(d, d, a.pp("k_proj"))?;
                let v = if cfg.projections == Projections::Shared {
                    Some(linear(d, d, a.pp("v_proj"))?)
                } else {
                    None
                };
                let o = linear(d, d, a.pp("o_proj"))?;
                (
                    PackAttention::new(
                        q.clone(),
                        k.clone(),
                        v.clone(),
                        Some(o.clone()),
                        filter,
                        pack_scale,
                        h,
                        cfg.mask_padding,
                        attn_drop.clone(),
                    ),
                    UnpackAttention::new(q, k, v, o, unpack_scale, h, attn_drop),
                )
            }
            Projections::Separate => {
                let p = vb.pp("pack");
                let u = vb.pp("unpack");
                (
                    PackAttention::new(
                        linear(d, d, p.pp("q_proj"))?,
                        linear(d, d, p.pp("k_proj"))?,
                        Some(linear(d, d, p.pp("v_proj"))?),
                        None,
                        filter,
                        pack_scale,
                        h,
                        cfg.mask_padding,
                        attn_drop.clone(),
                    ),
                    UnpackAttention::new(
                        linear(d, d, u.pp("q_proj"))?,
                        linear(d, d, u.pp("k_proj"))?,
                        Some(linear(d, d, u.pp("v_proj"))?),
                        linear(d, d, u.pp("o_proj"))?,
                        unpack_scale,
                        h,
                        attn_drop,
                    ),
                )
            }
        };
        let drop = Dropout::new(dims.dropout, rng.clone());
        Ok(Self {
            pack,
            unpack,
            norm_x: LayerNorm::new(d, vb.pp("norm_x"))?,
            norm_p: LayerNorm::new(d, vb.pp("norm_p"))?,
            norm_ffn: LayerNorm::new(d, vb.pp("norm_ffn"))?,
            ffn: FeedForward::new(d, dims.ffn_dim, drop.clone(), vb.pp("ffn"))?,
            residual_drop: cfg.residual_dropout.then_some(drop),
            rng: rng.clone(),
        })
    }

    /// The pack attention (filter and τ).
    pub fn pack(&self) -> &PackAttention {
        &self.pack
    }

    /// The unpack attention.
    pub fn unpack(&self) -> &UnpackAttention {
        &self.unpack
    }

    /// `x [B, L, d]`, `memory [B, m, d]`, optional `mask [B, L]` (float 0/1). The pack
    /// attention weights are not kept ([`LunaBlockOutput::pack_attention`] is `None`); see
    /// [`Self::forward_traced`].
    pub fn forward_t(
        &self,
        x: &Tensor,
        memory: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<LunaBlockOutput> {
        self.run(x, memory, mask, train, false)
    }

    /// [`Self::forward_t`] with the pack attention weights `[B, h, m, L']` in the output, for
    /// diagnostics (the same values and gradients).
    pub fn forward_traced(
        &self,
        x: &Tensor,
        memory: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<LunaBlockOutput> {
        self.run(x, memory, mask, train, true)
    }

    /// [`Self::forward_traced`] when `traced`, else [`Self::forward_t`].
    pub(crate) fn run(
        &self,
        x: &Tensor,
        memory: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
        traced: bool,
    ) -> Result<LunaBlockOutput> {
        let Packed {
            memory: yp,
            attention,
            mask: pack_mask,
        } = self.pack.run(x, memory, mask, train, traced)?;
        let yx = self.unpack.forward_t(x, &yp, train)?;
        let (yx, ypr) = match &self.residual_drop {
            Some(d) => (d.forward_t(&yx, train)?, d.forward_t(&yp, train)?),
            None => (yx, yp.clone()),
        };
        let xa = self.norm_x.forward_residual(x, &yx)?;
        let p = self.norm_p.forward_residual(memory, &ypr)?;
        let x = self
            .norm_ffn
            .forward_residual(&xa, &self.ffn.forward_t(&xa, train)?)?;
        Ok(LunaBlockOutput {
            x,
            memory: p,
            packed: yp,
            pack_attention: attention,
            pack_mask,
        })
    }
}
