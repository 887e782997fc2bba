#!/usr/bin/env python3
"""Independent PyTorch reference implementation of the convluna model spec.

This file mirrors docs/model.md sections 2-4 (ConvLuna / Luna / Transformer blocks, the
filters, padding masks, the encoder and the classifier / pair heads) with plain
``torch.nn`` modules, and writes small safetensors parity fixtures for the Rust crate.

Everything is computed in float64; fixtures store float tensors as float32 (token ids
as int64).  Parameter names (``state_dict`` keys) are exactly the names the crate uses.

Usage:
    python scripts/reference.py fixtures [--out tests/fixtures]
    python scripts/reference.py selfcheck
    python scripts/reference.py bench --family convluna --len 4096 --mode train --threads 2

See tests/fixtures/README.md for the fixture layout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-6
MASK_VALUE = -1e9  # logit given to masked positions (masked mode only)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, n, d] -> [B, h, n, dh] (view [B, n, h, dh], then transpose)."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, h, n, dh] -> [B, n, h*dh] (inverse of split_heads)."""
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


def layer_norm(d: int) -> nn.LayerNorm:
    return nn.LayerNorm(d, eps=LN_EPS, elementwise_affine=True)


def window_any(mask: torch.Tensor, k: int, s: int, left: int, right: int) -> torch.Tensor:
    """Filtered mask: output t is valid iff its window holds at least one valid input.

    mask: [B, L] float 0/1.  The input is zero-padded (left, right) -- padded positions
    are outside [0, L) and never valid -- then windows of k with stride s are taken.
    """
    m = F.pad(mask[:, None, :], (left, right))
    return F.max_pool1d(m, kernel_size=k, stride=s)[:, 0, :]


def coverage_pad(L: int, k: int, s: int) -> int:
    """Zeros appended on the right in masked mode by an unpadded window filter so that a
    window starts at every t*s < L (then the number of windows, and hence the memory, does
    not depend on how much padding follows the sequence)."""
    starts = (L - 1) // s + 1
    return max(0, (starts - 1) * s + k - L)


class FFN(nn.Module):
    """fc2(GELU_erf(fc1(x))); dropout is 0 here."""

    def __init__(self, d: int, f: int):
        super().__init__()
        self.fc1 = nn.Linear(d, f)
        self.fc2 = nn.Linear(f, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="none"))


class Projections(nn.Module):
    """A bag of d->d Linear layers named q_proj / k_proj / v_proj / o_proj."""

    def __init__(self, d: int, names: list[str]):
        super().__init__()
        for n in names:
            setattr(self, n, nn.Linear(d, d))


# ---------------------------------------------------------------------------
# filters: act on [B, h, L, dh] along time (dim 2); return (filtered, filtered mask)
# ---------------------------------------------------------------------------

@dataclass
class FilterSpec:
    kind: str = "identity"  # identity | conv | maxpool
    k: int = 1
    s: int = 1
    per_channel: bool = False  # conv only: depthwise kernels [d, k] instead of [h, k]


class IdentityFilter(nn.Module):
    def forward(self, x, mask):
        return x, mask


class ConvFilter(nn.Module):
    """Per-head (weight [h, k]) or per-channel (weight [d, k]) conv along time, no bias.

    Cross-correlation like torch conv1d.  s == 1: 'same' zero padding with
    left = floor((k-1)/2), right = k-1-left; s > 1: no padding.
    Channel c of the un-split [B, L, d] layout is head*dh + j.
    """

    def __init__(self, heads: int, d: int, k: int, s: int, per_channel: bool):
        super().__init__()
        self.heads, self.d, self.k, self.s, self.per_channel = heads, d, k, s, per_channel
        self.weight = nn.Parameter(torch.empty(d if per_channel else heads, k))
        bound = 1.0 / math.sqrt(k)
        nn.init.uniform_(self.weight, -bound, bound)

    def padding(self):
        if self.s == 1:
            left = (self.k - 1) // 2
            return left, self.k - 1 - left
        return 0, 0

    def forward(self, x, mask):
        b, h, L, dh = x.shape
        # [B, h, L, dh] -> [B, h*dh, L]; channel index = head*dh + j
        xc = x.permute(0, 1, 3, 2).reshape(b, h * dh, L)
        w = self.weight if self.per_channel else self.weight.repeat_interleave(dh, dim=0)
        left, right = self.padding()
        xc = F.pad(xc, (left, right))
        y = F.conv1d(xc, w.unsqueeze(1), stride=self.s, groups=h * dh)
        lo = y.shape[-1]
        y = y.reshape(b, h, dh, lo).permute(0, 1, 3, 2)
        if mask is None:
            m = None
        elif self.s == 1:
            m = mask  # length kept: the mask is kept (docs/model.md 3.4: only length-changing filters window it)
        else:
            m = window_any(mask, self.k, self.s, left, right)
        return y, m

    def masked_right_pad(self, L: int) -> int:
        return coverage_pad(L, self.k, self.s) if self.s > 1 else 0


class MaxPoolFilter(nn.Module):
    """Per-channel max over windows in[t*s .. t*s+k-1]; no padding even for s == 1."""

    def __init__(self, k: int, s: int):
        super().__init__()
        self.k, self.s = k, s

    def forward(self, x, mask):
        b, h, L, dh = x.shape
        if mask is not None:
            # pads are -inf inside the max (never 0: a zero must not beat negative keys)
            x = x.masked_fill(mask[:, None, :, None] == 0, float("-inf"))
        xc = x.permute(0, 1, 3, 2).reshape(b, h * dh, L)
        y = F.max_pool1d(xc, kernel_size=self.k, stride=self.s)
        lo = y.shape[-1]
        y = y.reshape(b, h, dh, lo).permute(0, 1, 3, 2)
        m = None if mask is None else window_any(mask, self.k, self.s, 0, 0)
        if m is not None:
            # a window of padding only is masked out of the attention; its value is 0
            y = y.masked_fill(m[:, None, :, None] == 0, 0.0)
        return y, m

    def masked_right_pad(self, L: int) -> int:
        return coverage_pad(L, self.k, self.s)


def make_filter(spec: FilterSpec, heads: int, d: int) -> nn.Module:
    if spec.kind == "identity":
        return IdentityFilter()
    if spec.kind == "conv":
        return ConvFilter(heads, d, spec.k, spec.s, spec.per_channel)
    if spec.kind == "maxpool":
        return MaxPoolFilter(spec.k, spec.s)
    raise ValueError(spec.kind)


# ---------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------

@dataclass
class BlockConfig:
    family: str = "luna"  # luna | transformer | filtered_transformer | conv_mixer
    d: int = 16
    heads: int = 4
    ffn: int = 32
    masked: bool = True
    # Luna-family only
    projections: str = "shared_no_value"  # shared_no_value | shared | separate
    pack_scale: str = "learned_temperature"  # inv_sqrt_dh | learned_temperature
    unpack_scale: str = "none"  # none | inv_sqrt_dh | learned_temperature
    filter: FilterSpec = field(default_factory=FilterSpec)

    def describe(self) -> dict:
        if self.family == "transformer":
            return {"family": "transformer", "d": self.d, "heads": self.heads,
                    "ffn": self.ffn, "masked": self.masked, "norm": "pre_ln"}
        if self.family in ("filtered_transformer", "conv_mixer"):
            return {"family": self.family, "d": self.d, "heads": self.heads, "ffn": self.ffn,
                    "masked": self.masked, "norm": "pre_ln", "filter": asdict(self.filter)}
        return asdict(self)


class LunaBlock(nn.Module):
    """ConvLuna / Luna (authors' shared projections) / Luna (Ma et al., separate)."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d
        if cfg.projections == "shared_no_value":
            self.attn = Projections(d, ["q_proj", "k_proj", "o_proj"])
        elif cfg.projections == "shared":
            self.attn = Projections(d, ["q_proj", "k_proj", "v_proj", "o_proj"])
        elif cfg.projections == "separate":
            self.pack = Projections(d, ["q_proj", "k_proj", "v_proj"])
            self.unpack = Projections(d, ["q_proj", "k_proj", "v_proj", "o_proj"])
        else:
            raise ValueError(cfg.projections)
        self.filter = make_filter(cfg.filter, cfg.heads, d)
        if cfg.pack_scale == "learned_temperature":
            self.pack_log_temperature = nn.Parameter(torch.zeros(1))
        if cfg.unpack_scale == "learned_temperature":
            self.unpack_log_temperature = nn.Parameter(torch.zeros(1))
        self.norm_x = layer_norm(d)
        self.norm_p = layer_norm(d)
        self.norm_ffn = layer_norm(d)
        self.ffn = FFN(d, cfg.ffn)

    def _scale(self, kind: str, log_temp_name: str):
        dh = self.cfg.d // self.cfg.heads
        if kind == "none":
            return 1.0
        if kind == "inv_sqrt_dh":
            return 1.0 / math.sqrt(dh)
        if kind == "learned_temperature":
            return torch.exp(-getattr(self, log_temp_name))
        raise ValueError(kind)

    def forward(self, x, p, mask):
        """x [B, L, d], p [B, m, d], mask [B, L] (1 real, 0 pad).

        Returns (x', p', pack attention A [B, h, m, L'])."""
        cfg, h = self.cfg, self.cfg.heads
        if cfg.projections == "separate":
            pq, pk, pv = self.pack.q_proj, self.pack.k_proj, self.pack.v_proj
            uq, uk, uv, uo = (self.unpack.q_proj, self.unpack.k_proj,
                              self.unpack.v_proj, self.unpack.o_proj)
            po = None  # no output projection on Y_p
        else:
            pq = uq = self.attn.q_proj
            pk = uk = self.attn.k_proj
            pv = uv = getattr(self.attn, "v_proj", None)  # None: values are the raw inputs
            po = uo = self.attn.o_proj

        # ---- pack: memory attends over the (filtered) sequence
        q = pq(p)
        k = pk(x)
        v = x if pv is None else pv(x)
        if cfg.masked:
            k = k * mask[:, :, None]
            v = v * mask[:, :, None]
        qh, kh, vh = split_heads(q, h), split_heads(k, h), split_heads(v, h)
        fmask = mask if cfg.masked else None
        if cfg.masked and hasattr(self.filter, "masked_right_pad"):
            pad = self.filter.masked_right_pad(x.shape[1])
            if pad > 0:
                kh = F.pad(kh, (0, 0, 0, pad))
                vh = F.pad(vh, (0, 0, 0, pad))
                fmask = F.pad(fmask, (0, pad))
        kf, mask_f = self.filter(kh, fmask)
        vf, _ = self.filter(vh, fmask)
        logits = qh @ kf.transpose(-1, -2) * self._scale(cfg.pack_scale, "pack_log_temperature")
        if cfg.masked:
            logits = logits.masked_fill(mask_f[:, None, None, :] == 0, MASK_VALUE)
        a = torch.softmax(logits, dim=-1)  # [B, h, m, L']
        yp = merge_heads(a @ vf)
        if po is not None:
            yp = po(yp)

        # ---- unpack: the sequence attends over the packed memory (no mask)
        q2 = split_heads(uq(x), h)
        k2 = split_heads(uk(yp), h)
        v2 = split_heads(yp if uv is None else uv(yp), h)
        logits2 = q2 @ k2.transpose(-1, -2) * self._scale(cfg.unpack_scale, "unpack_log_temperature")
        bx = torch.softmax(logits2, dim=-1)  # [B, h, L, m]
        yx = uo(merge_heads(bx @ v2))

        # ---- post-LN update
        xa = self.norm_x(x + yx)
        p_new = self.norm_p(p + yp)
        x_new = self.norm_ffn(xa + self.ffn(xa))
        return x_new, p_new, a


def filter_time(filt: nn.Module, x: torch.Tensor, heads: int, mask, masked: bool):
    """A length-keeping filter on [B, L, d] per head along time (pads zeroed when masked)."""
    if masked:
        x = x * mask[:, :, None]
    y, _ = filt(split_heads(x, heads), mask if masked else None)
    return merge_heads(y)


class TransformerBlock(nn.Module):
    """Pre-LN: X1 = X + MHA(LN1(X)); X' = X1 + FFN(LN2(X1)).

    family "filtered_transformer": the keys and values of the attention pass through the
    (length-keeping) filter first -- a locality control."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d
        self.norm1 = layer_norm(d)
        self.attn = Projections(d, ["q_proj", "k_proj", "v_proj", "o_proj"])
        if cfg.family == "filtered_transformer":
            self.filter = make_filter(cfg.filter, cfg.heads, d)
        self.norm2 = layer_norm(d)
        self.ffn = FFN(d, cfg.ffn)

    def forward(self, x, p, mask):
        h = self.cfg.heads
        dh = self.cfg.d // h
        y = self.norm1(x)
        q = split_heads(self.attn.q_proj(y), h)
        k, v = self.attn.k_proj(y), self.attn.v_proj(y)
        if hasattr(self, "filter"):
            k = filter_time(self.filter, k, h, mask, self.cfg.masked)
            v = filter_time(self.filter, v, h, mask, self.cfg.masked)
        k, v = split_heads(k, h), split_heads(v, h)
        logits = q @ k.transpose(-1, -2) / math.sqrt(dh)
        if self.cfg.masked:
            logits = logits.masked_fill(mask[:, None, None, :] == 0, MASK_VALUE)
        a = torch.softmax(logits, dim=-1)
        x1 = x + self.attn.o_proj(merge_heads(a @ v))
        return x1 + self.ffn(self.norm2(x1)), p, a


class ConvMixerBlock(nn.Module):
    """No attention: X1 = X + F(LN1(X)); X' = X1 + FFN(LN2(X1)) -- a locality control."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.cfg = cfg
        self.norm1 = layer_norm(cfg.d)
        self.filter = make_filter(cfg.filter, cfg.heads, cfg.d)
        self.norm2 = layer_norm(cfg.d)
        self.ffn = FFN(cfg.d, cfg.ffn)

    def forward(self, x, p, mask):
        x1 = x + filter_time(self.filter, self.norm1(x), self.cfg.heads, mask, self.cfg.masked)
        return x1 + self.ffn(self.norm2(x1)), p, None


def make_block(cfg: BlockConfig) -> nn.Module:
    if cfg.family in ("transformer", "filtered_transformer"):
        return TransformerBlock(cfg)
    if cfg.family == "conv_mixer":
        return ConvMixerBlock(cfg)
    return LunaBlock(cfg)


# ---------------------------------------------------------------------------
# encoder + heads
# ---------------------------------------------------------------------------

@dataclass
class ModelConfig:
    block: BlockConfig
    layers: int = 2
    memory: int = 3  # m (Luna family only)
    input: str = "tokens"  # tokens | pixels
    vocab: int = 20
    pixel_mean: float = 0.5
    pixel_std: float = 0.5
    max_len: int = 10
    positions: str = "learned"  # learned | sinusoidal
    cls: bool = True
    pooling: str = "cls"  # cls | mean | memory
    head: str = "classifier"  # classifier | image | pair
    pair_features: str = "interaction"  # concat | interaction
    classes: int = 3
    head_ffn: int = 32

    def describe(self) -> dict:
        out = asdict(self)
        out["block"] = self.block.describe()
        return out


def sinusoidal_positions(n: int, d: int) -> torch.Tensor:
    """pe[p, 2i] = sin(p / 10000^(2i/d)), pe[p, 2i+1] = cos(p / 10000^(2i/d))."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d, 2, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), two_i / d)
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d // 2])
    return pe


class Model(nn.Module):
    """Encoder (embedding, positions, CLS, blocks) + classifier or pair head.

    Parameter names: embed.*, pos.weight, cls, memory, layers.{i}.*, head.*"""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.block.d
        if cfg.input == "tokens":
            self.embed = nn.Embedding(cfg.vocab, d, padding_idx=0)
        else:
            self.embed = nn.Linear(1, d)  # embed.weight [d, 1], embed.bias [d]
        if cfg.positions == "learned":
            self.pos = nn.Embedding(cfg.max_len, d)
        else:
            self.register_buffer("pe", sinusoidal_positions(cfg.max_len, d), persistent=False)
        if cfg.cls:
            self.cls = nn.Parameter(torch.zeros(d))
        if cfg.block.family == "luna":
            self.memory = nn.Parameter(torch.zeros(cfg.memory, d))
        self.layers = nn.ModuleList(make_block(cfg.block) for _ in range(cfg.layers))
        self.head = nn.Module()
        # The authors' DualClassifier ([u; v]) has no LayerNorm: their post-LN blocks end in
        # one. A pre-LN Transformer keeps it as the encoder's final norm.
        self.head_norm = not (cfg.head == "pair" and cfg.pair_features == "concat"
                              and cfg.block.family == "luna")
        if self.head_norm:
            self.head.norm = layer_norm(d)
        f = cfg.head_ffn
        if cfg.head == "pair":
            feat = 2 * d if cfg.pair_features == "concat" else 4 * d
            self.head.fc1 = nn.Linear(feat, f)
            self.head.fc2 = nn.Linear(f, f // 2)
            self.head.out = nn.Linear(f // 2, 2)
        else:
            self.head.fc1 = nn.Linear(d, f)
            if cfg.head == "image":
                self.head.fc2 = nn.Linear(f, f)
            self.head.out = nn.Linear(f, cfg.classes)

    # -- encoder ------------------------------------------------------------
    def encode(self, inp: torch.Tensor, mask: torch.Tensor):
        """inp: ids [B, L] int64 or pixels [B, L] float (0..255); mask [B, L].

        Returns (hidden [B, L(+1), d], memory [B, m, d] or None, mask [B, L(+1)])."""
        cfg = self.cfg
        b, L = inp.shape
        if cfg.input == "tokens":
            x = self.embed(inp)
        else:
            z = (inp / 255.0 - cfg.pixel_mean) / cfg.pixel_std
            x = self.embed(z[..., None].to(self.embed.weight.dtype))
        if cfg.positions == "learned":
            x = x + self.pos.weight[:L][None]
        else:
            x = x + self.pe[:L].to(x.dtype)[None]
        if cfg.cls:  # prepended after positions: CLS gets no position
            x = torch.cat([self.cls.expand(b, 1, -1), x], dim=1)
            mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        p = None
        if cfg.block.family == "luna":
            p = self.memory[None].expand(b, -1, -1)
        for layer in self.layers:
            x, p, _ = layer(x, p, mask)
        return x, p, mask

    def norm(self, x):
        return self.head.norm(x) if self.head_norm else x

    def pool(self, x, p, mask):
        cfg = self.cfg
        if cfg.pooling == "cls":
            return self.norm(x)[:, 0]
        if cfg.pooling == "mean":
            xn = self.norm(x)
            w = mask.clone()
            if cfg.cls:
                w[:, 0] = 0  # exclude the CLS position
            return (xn * w[:, :, None]).sum(1) / w.sum(1, keepdim=True)
        if cfg.pooling == "memory":
            return self.norm(p).mean(1)
        raise ValueError(cfg.pooling)

    def _mlp(self, z):
        z = F.gelu(self.head.fc1(z))
        if hasattr(self.head, "fc2"):
            z = F.gelu(self.head.fc2(z))
        return self.head.out(z)

    def forward(self, inp, mask, inp2=None, mask2=None):
        u = self.pool(*self.encode(inp, mask))
        if self.cfg.head != "pair":
            return self._mlp(u)
        v = self.pool(*self.encode(inp2, mask2))
        if self.cfg.pair_features == "concat":
            feat = torch.cat([u, v], dim=-1)
        else:
            feat = torch.cat([u, v, u * v, u - v], dim=-1)
        return self._mlp(feat)


# ---------------------------------------------------------------------------
# random initialisation for fixtures (keeps activations O(1))
# ---------------------------------------------------------------------------

PACK_LOG_TEMPERATURE = 0.3
UNPACK_LOG_TEMPERATURE = -0.2


@torch.no_grad()
def init_random(module: nn.Module):
    for mod in module.modules():
        if isinstance(mod, nn.Linear):
            mod.weight.normal_(0.0, 1.0 / math.sqrt(mod.in_features))  # variance 1/fan_in
            mod.bias.normal_(0.0, 0.1)
        elif isinstance(mod, nn.LayerNorm):
            mod.weight.copy_(1.0 + 0.1 * torch.randn_like(mod.weight))
            mod.bias.normal_(0.0, 0.1)
        elif isinstance(mod, ConvFilter):
            bound = 1.0 / math.sqrt(mod.k)
            mod.weight.uniform_(-bound, bound)
        elif isinstance(mod, LunaBlock):
            if hasattr(mod, "pack_log_temperature"):
                mod.pack_log_temperature.fill_(PACK_LOG_TEMPERATURE)
            if hasattr(mod, "unpack_log_temperature"):
                mod.unpack_log_temperature.fill_(UNPACK_LOG_TEMPERATURE)
        elif isinstance(mod, Model):
            if isinstance(mod.embed, nn.Embedding):
                mod.embed.weight.normal_(0.0, 1.0)
                mod.embed.weight[0].zero_()  # padding id 0
            if hasattr(mod, "pos"):
                mod.pos.weight.normal_(0.0, 0.1)
            if hasattr(mod, "cls"):
                mod.cls.normal_(0.0, 1.0)
            if hasattr(mod, "memory"):
                mod.memory.normal_(0.0, 1.0)


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------

DT = torch.float64
BLOCK_DIMS = dict(B=2, L=12, d=16, heads=4, m=3, ffn=32)
BLOCK_VALID = [12, 8]
ENC_DIMS = dict(B=2, L=10, d=16, heads=4, m=3, ffn=32, layers=2, max_len=10)
ENC_VALID = [10, 6]
PAIR_VALID2 = [7, 10]  # valid lengths of the second document of the pair case


def convluna(filter_spec: FilterSpec, unpack_scale: str = "none") -> dict:
    return dict(family="luna", projections="shared_no_value", pack_scale="learned_temperature",
                unpack_scale=unpack_scale, filter=filter_spec)


BLOCK_CASES = {
    "convluna_conv4s1": convluna(FilterSpec("conv", 4, 1)),
    "convluna_conv4s2": convluna(FilterSpec("conv", 4, 2)),
    "convluna_pool4s2": convluna(FilterSpec("maxpool", 4, 2)),
    "convluna_identity": convluna(FilterSpec("identity", 1, 1)),
    "convluna_depthwise3s1": convluna(FilterSpec("conv", 3, 1, per_channel=True),
                                      unpack_scale="learned_temperature"),
    "luna_authors": dict(family="luna", projections="shared", pack_scale="inv_sqrt_dh",
                         unpack_scale="inv_sqrt_dh", filter=FilterSpec()),
    "luna_ma": dict(family="luna", projections="separate", pack_scale="inv_sqrt_dh",
                    unpack_scale="inv_sqrt_dh", filter=FilterSpec()),
    "transformer": dict(family="transformer"),
    "transformer_conv4s1": dict(family="filtered_transformer", filter=FilterSpec("conv", 4, 1)),
    "convmixer_conv4s1": dict(family="conv_mixer", filter=FilterSpec("conv", 4, 1)),
}


def block_config(name: str, masked: bool, d=16, heads=4, ffn=32) -> BlockConfig:
    return BlockConfig(d=d, heads=heads, ffn=ffn, masked=masked, **BLOCK_CASES[name])


def length_mask(valid: list[int], L: int) -> torch.Tensor:
    return (torch.arange(L)[None, :] < torch.tensor(valid)[:, None]).to(DT)


def case_seed(name: str) -> int:
    # fixed, readable seeds; _mask and _nomask variants share parameters and inputs
    return 1000 + sorted(list(BLOCK_CASES) + ["encoder_convluna", "encoder_transformer_image",
                                              "encoder_pair_luna_ma",
                                              "encoder_pair_convluna"]).index(name)


def to_store(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.dtype in (torch.int64, torch.int32):
        return t.to(torch.int64).contiguous()
    return t.to(torch.float32).contiguous()


def save(path: str, case: str, description: dict, tensors: dict):
    """safetensors.torch.save, then the header JSON is rewritten in a fixed key order
    (the library's metadata map has no stable order), so reruns are byte-identical."""
    import struct

    from safetensors.torch import save

    blob = save({k: to_store(v) for k, v in tensors.items()},
                metadata={"case": case, "description": json.dumps(description, sort_keys=True)})
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__")
    ordered = {"__metadata__": dict(sorted(meta.items()))}
    ordered.update(sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    assert len(text) <= n
    text += b" " * (n - len(text))  # same header length: data offsets stay valid
    with open(path, "wb") as fh:
        fh.write(blob[:8] + text + blob[8 + n:])


def run_block_case(name: str, masked: bool):
    """Returns (case name, description, tensors) for one block fixture."""
    torch.manual_seed(case_seed(name))
    B, L, d, h, m, f = (BLOCK_DIMS[k] for k in ("B", "L", "d", "heads", "m", "ffn"))
    cfg = block_config(name, masked, d, h, f)
    block = make_block(cfg).to(DT)
    init_random(block)
    x = torch.randn(B, L, d, dtype=DT)
    mem = torch.randn(B, m, d, dtype=DT)
    mask = length_mask(BLOCK_VALID, L)
    rx = torch.randn(B, L, d, dtype=DT)
    rp = torch.randn(B, m, d, dtype=DT)
    luna = cfg.family == "luna"

    x.requires_grad_(True)
    mem.requires_grad_(True)
    out_x, out_p, a = block(x, mem if luna else None, mask)
    loss = (out_x * rx).sum()
    if luna:
        loss = loss + (out_p * rp).sum()
    loss.backward()

    t = {"input.x": x, "input.mask": mask, "input.rx": rx,
         "output.x": out_x, "grad.x": x.grad, "output.loss": loss.reshape(1)}
    if luna:
        t.update({"input.memory": mem, "input.rp": rp, "output.memory": out_p,
                  "output.pack_attention": a, "grad.memory": mem.grad})
    for pname, p in block.named_parameters():
        t[f"param.{pname}"] = p
        t[f"grad.param.{pname}"] = p.grad
    case = f"{name}_{'mask' if masked else 'nomask'}"
    desc = {"block": cfg.describe(), "B": B, "L": L, "m": m if luna else None,
            "valid_lengths": BLOCK_VALID, "ln_eps": LN_EPS, "mask_value": MASK_VALUE,
            "loss": "sum(output.x*rx)" + (" + sum(output.memory*rp)" if luna else ""),
            "seed": case_seed(name)}
    return case, desc, t


def encoder_config(name: str, masked: bool) -> ModelConfig:
    e = ENC_DIMS
    if name == "encoder_convluna":
        blk = block_config("convluna_conv4s1", masked, e["d"], e["heads"], e["ffn"])
        return ModelConfig(block=blk, layers=e["layers"], memory=e["m"], input="tokens",
                           vocab=20, max_len=e["max_len"], positions="learned", cls=True,
                           pooling="cls", head="classifier", classes=3, head_ffn=e["ffn"])
    if name == "encoder_transformer_image":
        blk = block_config("transformer", masked, e["d"], e["heads"], e["ffn"])
        return ModelConfig(block=blk, layers=e["layers"], memory=0, input="pixels",
                           pixel_mean=0.5, pixel_std=0.5, max_len=e["max_len"],
                           positions="sinusoidal", cls=False, pooling="mean", head="image",
                           classes=4, head_ffn=e["ffn"])
    if name == "encoder_pair_luna_ma":
        blk = block_config("luna_ma", masked, e["d"], e["heads"], e["ffn"])
        return ModelConfig(block=blk, layers=e["layers"], memory=e["m"], input="tokens",
                           vocab=20, max_len=e["max_len"], positions="learned", cls=True,
                           pooling="memory", head="pair", pair_features="interaction",
                           classes=2, head_ffn=e["ffn"])
    if name == "encoder_pair_convluna":
        # the paper preset's retrieval model: ConvLuna with the authors' DualClassifier
        blk = block_config("convluna_conv4s1", masked, e["d"], e["heads"], e["ffn"])
        return ModelConfig(block=blk, layers=e["layers"], memory=e["m"], input="tokens",
                           vocab=20, max_len=e["max_len"], positions="learned", cls=True,
                           pooling="cls", head="pair", pair_features="concat",
                           classes=2, head_ffn=e["ffn"])
    raise ValueError(name)


def random_ids(valid: list[int], L: int, vocab: int) -> torch.Tensor:
    ids = torch.randint(1, vocab, (len(valid), L))
    return ids * length_mask(valid, L).to(torch.int64)  # id 0 at pads


def run_encoder_case(name: str, masked: bool):
    torch.manual_seed(case_seed(name))
    cfg = encoder_config(name, masked)
    model = Model(cfg).to(DT)
    init_random(model)
    B, L = ENC_DIMS["B"], ENC_DIMS["L"]
    classes = 2 if cfg.head == "pair" else cfg.classes
    mask = length_mask(ENC_VALID, L)
    t = {}
    if cfg.head == "pair":
        mask2 = length_mask(PAIR_VALID2, L)
        ids1 = random_ids(ENC_VALID, L, cfg.vocab)
        ids2 = random_ids(PAIR_VALID2, L, cfg.vocab)
        r = torch.randn(B, classes, dtype=DT)
        logits = model(ids1, mask, ids2, mask2)
        t.update({"input.ids1": ids1, "input.mask1": mask, "input.ids2": ids2,
                  "input.mask2": mask2})
    elif cfg.input == "pixels":
        pixels = torch.randint(0, 256, (B, L)).to(DT) * mask  # raw 0..255, 0 at pads
        r = torch.randn(B, classes, dtype=DT)
        logits = model(pixels, mask)
        t.update({"input.pixels": pixels, "input.mask": mask})
    else:
        ids = random_ids(ENC_VALID, L, cfg.vocab)
        r = torch.randn(B, classes, dtype=DT)
        logits = model(ids, mask)
        t.update({"input.ids": ids, "input.mask": mask})
    loss = (logits * r).sum()
    loss.backward()
    t.update({"input.r": r, "output.logits": logits, "output.loss": loss.reshape(1)})
    for pname, p in model.named_parameters():
        t[f"param.{pname}"] = p
        # parameters the loss does not reach (e.g. the last layer's norm_p under CLS
        # pooling) get no .grad from autograd; their gradient is stored as zeros
        t[f"grad.param.{pname}"] = p.grad if p.grad is not None else torch.zeros_like(p)
    case = name if masked else f"{name}_nomask"
    desc = {"model": cfg.describe(), "B": B, "L": L, "valid_lengths": ENC_VALID,
            "ln_eps": LN_EPS, "mask_value": MASK_VALUE, "loss": "sum(output.logits*r)",
            "seed": case_seed(name)}
    if cfg.head == "pair":
        desc["valid_lengths2"] = PAIR_VALID2
    return case, desc, t


def write_fixtures(out_dir: str):
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(run_block_case, n, mk) for n in BLOCK_CASES for mk in (True, False)]
    jobs += [(run_encoder_case, "encoder_convluna", True),
             (run_encoder_case, "encoder_convluna", False),
             (run_encoder_case, "encoder_transformer_image", True),
             (run_encoder_case, "encoder_pair_luna_ma", True),
             (run_encoder_case, "encoder_pair_convluna", False)]
    total = 0
    for fn, name, masked in jobs:
        case, desc, tensors = fn(name, masked)
        path = os.path.join(out_dir, f"{case}.safetensors")
        save(path, case, desc, tensors)
        size = os.path.getsize(path)
        total += size
        print(f"{path}  {len(tensors)} tensors  {size} bytes")
    print(f"total {total} bytes")


# ---------------------------------------------------------------------------
# self-checks
# ---------------------------------------------------------------------------

def explicit_filter(x, weight, kind, k, s, per_channel, mask=None):
    """Slow, loop-based reference of the filters on [B, h, L, dh].

    maxpool with a mask: the max over the window's valid positions only, 0 where it has none."""
    b, h, L, dh = x.shape
    if kind == "maxpool":
        lo = (L - k) // s + 1
        out = torch.zeros(b, h, lo, dh, dtype=x.dtype)
        for bi in range(b):
            for t in range(lo):
                idx = [i for i in range(t * s, t * s + k) if mask is None or mask[bi, i] > 0]
                if idx:
                    out[bi, :, t] = x[bi][:, idx].max(dim=1).values
        return out
    left = (k - 1) // 2 if s == 1 else 0
    lo = L if s == 1 else (L - k) // s + 1
    out = torch.zeros(b, h, lo, dh, dtype=x.dtype)
    for hd in range(h):
        for j in range(dh):
            w = weight[hd * dh + j] if per_channel else weight[hd]
            for t in range(lo):
                acc = torch.zeros(b, dtype=x.dtype)
                for i in range(k):
                    src = t * s + i - left
                    if 0 <= src < L:
                        acc = acc + w[i] * x[:, hd, src, j]
                out[:, hd, t, j] = acc
    return out


def explicit_mask(mask, k, left):
    """Stride-1 'same' conv: output t reads inputs t-left .. t-left+k-1 clipped to [0, L)."""
    b, L = mask.shape
    out = torch.zeros(b, L, dtype=mask.dtype)
    for t in range(L):
        lo_i, hi_i = max(t - left, 0), min(t - left + k, L)
        out[:, t] = (mask[:, lo_i:hi_i].sum(1) > 0).to(mask.dtype)
    return out


def selfcheck():
    torch.manual_seed(0)
    ok = True

    def report(label, err, tol):
        nonlocal ok
        good = err <= tol
        ok &= good
        print(f"[{'ok' if good else 'FAIL'}] {label}: max err {err:.3e} (tol {tol:.0e})")

    # 1. filters vs explicit loops
    B, h, L, dh = 2, 3, 11, 4
    x = torch.randn(B, h, L, dh, dtype=DT)
    mask = length_mask([11, 6], L)
    for k, s, per_channel in [(4, 1, False), (3, 1, False), (4, 2, False), (5, 3, False),
                              (3, 1, True), (4, 2, True), (1, 1, False)]:
        filt = ConvFilter(h, h * dh, k, s, per_channel).to(DT)
        y, m = filt(x, mask)
        ref = explicit_filter(x, filt.weight.detach(), "conv", k, s, per_channel)
        mref = mask if s == 1 else explicit_mask_strided(mask, k, s)
        report(f"conv k={k} s={s} per_channel={per_channel} vs loop", (y - ref).abs().max().item(), 1e-12)
        report(f"conv k={k} s={s} filtered mask vs loop", (m - mref).abs().max().item(), 0)
    for k, s in [(4, 2), (4, 1), (2, 2)]:
        y, m = MaxPoolFilter(k, s)(x, mask)
        ref = explicit_filter(x, None, "maxpool", k, s, False, mask)
        report(f"maxpool k={k} s={s} (masked) vs loop", (y - ref).abs().max().item(), 0)
        y0, _ = MaxPoolFilter(k, s)(x, None)
        ref0 = explicit_filter(x, None, "maxpool", k, s, False)
        report(f"maxpool k={k} s={s} (unmasked) vs loop", (y0 - ref0).abs().max().item(), 0)
        report(f"maxpool k={k} s={s} filtered mask vs loop",
               (m - explicit_mask_strided(mask, k, s)).abs().max().item(), 0)
    # per-head conv equals per-channel conv with the head kernel repeated over dh channels
    filt = ConvFilter(h, h * dh, 4, 1, False).to(DT)
    dw = ConvFilter(h, h * dh, 4, 1, True).to(DT)
    with torch.no_grad():
        dw.weight.copy_(filt.weight.repeat_interleave(dh, 0))
    report("per-head conv == depthwise with repeated kernels",
           (filt(x, mask)[0] - dw(x, mask)[0]).abs().max().item(), 1e-14)

    # 2. padding invariance in masked mode (example 1 has 4 trailing pads; append 5 more)
    extra = 5
    for name in BLOCK_CASES:
        torch.manual_seed(case_seed(name))
        Bb, Lb, d, hh, m_, f = (BLOCK_DIMS[k] for k in ("B", "L", "d", "heads", "m", "ffn"))
        block = make_block(block_config(name, True, d, hh, f)).to(DT)
        init_random(block)
        xb = torch.randn(Bb, Lb, d, dtype=DT)
        mem = torch.randn(Bb, m_, d, dtype=DT)
        mk = length_mask(BLOCK_VALID, Lb)
        xe = torch.cat([xb, torch.randn(Bb, extra, d, dtype=DT)], 1)
        mke = torch.cat([mk, torch.zeros(Bb, extra, dtype=DT)], 1)
        with torch.no_grad():
            o1 = block(xb, mem, mk)
            o2 = block(xe, mem, mke)
        n1 = BLOCK_VALID[1]
        err = (o1[0][1, :n1] - o2[0][1, :n1]).abs().max().item()
        if o1[1] is not None:
            err = max(err, (o1[1][1] - o2[1][1]).abs().max().item())
        report(f"{name}_mask: padded example unchanged by {extra} more pads", err, 1e-12)
        # and the same for a fully valid example after it first gets k-1 pads
        kk = BLOCK_CASES[name].get("filter", FilterSpec()).k
        base = torch.cat([xb, torch.randn(Bb, kk - 1, d, dtype=DT)], 1)
        mbase = torch.cat([mk, torch.zeros(Bb, kk - 1, dtype=DT)], 1)
        with torch.no_grad():
            o3 = block(base, mem, mbase)
            o4 = block(torch.cat([base, torch.randn(Bb, extra, d, dtype=DT)], 1), mem,
                       torch.cat([mbase, torch.zeros(Bb, extra, dtype=DT)], 1))
            diff_unpadded = (o1[0][0] - o3[0][0, :Lb]).abs().max().item()
        err = (o3[0][0, :Lb] - o4[0][0, :Lb]).abs().max().item()
        if o3[1] is not None:
            err = max(err, (o3[1][0] - o4[1][0]).abs().max().item())
        report(f"{name}_mask: full example with k-1 pads unchanged by {extra} more pads", err, 1e-12)
        if o1[1] is not None:
            diff_unpadded = max(diff_unpadded, (o1[1][0] - o3[1][0]).abs().max().item())
        report(f"{name}_mask: full example unchanged by its first k-1 pads", diff_unpadded, 1e-12)

    # 3. gradcheck (float64) on small blocks, inputs and all parameters
    from torch.func import functional_call
    for name in BLOCK_CASES:
        for masked in (True, False):
            torch.manual_seed(7)
            cfg = block_config(name, masked, d=8, heads=2, ffn=8)
            block = make_block(cfg).to(DT)
            init_random(block)
            Bs, Ls, ms = 2, 7, 2
            xs = torch.randn(Bs, Ls, 8, dtype=DT, requires_grad=True)
            ps = torch.randn(Bs, ms, 8, dtype=DT, requires_grad=True)
            mks = length_mask([7, 5], Ls)
            names = [n for n, _ in block.named_parameters()]
            params = tuple(p.detach().clone().requires_grad_(True) for _, p in block.named_parameters())
            luna = cfg.family == "luna"

            def fn(xx, pp, *prm):
                o = functional_call(block, dict(zip(names, prm)), (xx, pp if luna else None, mks))
                return (o[0], o[1]) if luna else (o[0],)

            good = torch.autograd.gradcheck(fn, (xs, ps, *params),
                                            eps=1e-6, atol=1e-6, rtol=1e-5, raise_exception=False,
                                            check_undefined_grad=False)
            ok &= good
            print(f"[{'ok' if good else 'FAIL'}] gradcheck {name}_{'mask' if masked else 'nomask'}")

    # gradcheck a whole (tiny) encoder: pair head with Luna (Ma) blocks, and the ConvLuna one
    for name in ["encoder_convluna", "encoder_pair_luna_ma", "encoder_transformer_image"]:
        torch.manual_seed(3)
        cfg = encoder_config(name, True)
        cfg.block.d, cfg.block.heads, cfg.block.ffn, cfg.head_ffn = 8, 2, 8, 8
        model = Model(cfg).to(DT)
        init_random(model)
        L = 6
        mk = length_mask([6, 4], L)
        if cfg.input == "pixels":
            args = ((torch.randint(0, 256, (2, L)).to(DT) * mk), mk)
        elif cfg.head == "pair":
            args = (random_ids([6, 4], L, cfg.vocab), mk, random_ids([5, 6], L, cfg.vocab),
                    length_mask([5, 6], L))
        else:
            args = (random_ids([6, 4], L, cfg.vocab), mk)
        names = [n for n, _ in model.named_parameters()]
        params = tuple(p.detach().clone().requires_grad_(True) for _, p in model.named_parameters())

        def fn(*prm):
            return functional_call(model, dict(zip(names, prm)), args)

        good = torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-6, rtol=1e-5,
                                        raise_exception=False)
        ok &= good
        print(f"[{'ok' if good else 'FAIL'}] gradcheck {name} (all parameters)")

    # 4. embedding row 0 gets no gradient; fixtures are reproducible
    _, _, t = run_encoder_case("encoder_convluna", True)
    report("grad of embed.weight row 0 is zero", t["grad.param.embed.weight"][0].abs().max().item(), 0)
    _, _, t2 = run_encoder_case("encoder_convluna", True)
    report("fixture generation is deterministic",
           (t["output.logits"] - t2["output.logits"]).abs().max().item(), 0)

    print("ALL OK" if ok else "SOME CHECKS FAILED")
    return ok


def explicit_mask_strided(mask, k, s):
    b, L = mask.shape
    lo = (L - k) // s + 1
    out = torch.zeros(b, lo, dtype=mask.dtype)
    for t in range(lo):
        out[:, t] = (mask[:, t * s:t * s + k].sum(1) > 0).to(mask.dtype)
    return out



# ---------------------------------------------------------------------------
# bench: throughput of the reference in float32, for scripts/bench-vs-pytorch.sh
# ---------------------------------------------------------------------------

def _vm_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def bench_block_fwd_flops(family: str, n, b, L, d, f, m, k) -> float:
    """Forward matmul + conv FLOPs of one block (same count as examples/bench_encoder.rs)."""
    if family == "transformer":
        return n * (8 * d * d + 4 * d * f) + 4 * n * L * d
    if family == "luna":
        return n * (8 * d * d + 4 * d * f + 8 * m * d) + b * 8 * m * d * d
    return n * (6 * d * d + 4 * d * f + 8 * m * d + 4 * k * d) + b * 6 * m * d * d


def time_steps(step, warmup: int, iters: int, max_seconds: float):
    """Runs `warmup` untimed steps, then at least one and up to `iters` timed ones (fewer once
    `max_seconds` have passed). Returns (sorted step times, seconds of the warm-up)."""
    import time

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    warm = time.perf_counter() - t0
    times, t_all = [], time.perf_counter()
    while len(times) < max(1, iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - t_all > max_seconds:
            break
    return sorted(times), warm


def blas_name() -> str:
    """The BLAS PyTorch was built with (MKL or other)."""
    cfg = torch.__config__.show()
    return "MKL" if "BLAS_INFO=mkl" in cfg or "USE_MKL=ON" in cfg else "other"


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), for the record of a measurement."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def matmul_peak() -> None:
    """Prints PyTorch's f32 matmul throughput at 2048³, on the encoder's linear shapes and on
    the attention's thin ones (d_h = 32 deep or wide, as batches of enough products to hide
    the call: the same shapes and batches as `bench_encoder --mode matmul`), best of 10, with
    the BLAS it was built with and the CPU capability it dispatches to."""
    import time

    blas = blas_name()
    for (m, k, n) in [(2048, 2048, 2048), (16384, 128, 512), (16384, 512, 128), (16384, 128, 128),
                      (256, 256, 32), (4096, 256, 32), (256, 4096, 32), (256, 32, 256), (4096, 32, 256)]:
        batch = max(1, (1 << 27) // (m * k * n))
        lead = (batch,) if batch > 1 else ()
        x, y = torch.randn(*lead, m, k), torch.randn(*lead, k, n)
        x @ y
        best = float("inf")
        for _ in range(10):
            t = time.perf_counter()
            x @ y
            best = min(best, time.perf_counter() - t)
        print(json.dumps({"impl": "pytorch", "mode": "matmul", "shape": f"{m}x{k}x{n}", "batch": batch,
                          "threads": torch.get_num_threads(),
                          "gflops": round(2 * batch * m * k * n / best / 1e9, 2),
                          "blas": blas, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_model(),
                          "torch": torch.__version__,
                          "mkl_enable_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS", "")}),
              flush=True)


def bench(args) -> None:
    """Times forward (no grad) or forward+backward of mean(hidden) of a float32 encoder and
    prints one JSON line with the same fields as `cargo run --example bench_encoder`."""
    import resource

    torch.set_num_threads(args.threads)
    if args.mode == "matmul":
        matmul_peak()
        return
    fam = args.family
    cases = {"convluna": "convluna_conv4s1", "convluna-unmasked": "convluna_conv4s1",
             "convluna-pool": "convluna_pool4s2", "convluna-pool-unmasked": "convluna_pool4s2",
             "luna": "luna_authors", "transformer": "transformer"}
    masked = not fam.endswith("-unmasked")
    blk = BlockConfig(d=args.d, heads=args.heads, ffn=args.ffn, masked=masked, **BLOCK_CASES[cases[fam]])
    L = args.len
    b = max(1, args.tokens // L)
    cfg = ModelConfig(block=blk, layers=args.layers, memory=args.memory, vocab=256, max_len=L,
                      positions="learned", cls=False)
    torch.manual_seed(7)
    dev = torch.device(args.device)
    model = Model(cfg).float()
    with torch.no_grad():
        if hasattr(model, "memory"):
            model.memory.normal_()
    model = model.to(dev)
    ids = (1 + (torch.arange(b * L) * 7919) % 255).reshape(b, L).to(dev)
    mask = torch.ones(b, L, device=dev)
    train = args.mode == "train"
    rss0 = _vm_kib("VmRSS:")

    def step():
        if train:
            x, _, _ = model.encode(ids, mask)
            loss = x.mean()
            model.zero_grad(set_to_none=True)
            loss.backward()
        else:
            with torch.no_grad():
                x, _, _ = model.encode(ids, mask)
                loss = x.mean()
        return float(loss)

    times, _ = time_steps(step, args.warmup, args.iters, args.max_seconds)
    med = times[len(times) // 2]
    n = b * L
    fl = bench_block_fwd_flops(fam, n, b, L, args.d, args.ffn, args.memory, 4) * args.layers * (3 if train else 1)
    print(json.dumps({
        "impl": "pytorch", "family": fam, "len": L, "batch": b, "mode": args.mode,
        "threads": torch.get_num_threads(), "steps": len(times),
        "sec_median": round(med, 5), "sec_best": round(times[0], 5),
        "tokens_per_s": round(n / med, 1), "gflop_per_step": round(fl / 1e9, 3),
        "gflops": round(fl / med / 1e9, 2), "rss_start_mib": round(rss0 / 1024, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": args.device,
        **({"gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if dev.type == "cuda" else {}),
    }))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    fx = sub.add_parser("fixtures", help="write the safetensors parity fixtures")
    fx.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    sub.add_parser("selfcheck", help="filters vs loops, padding invariance, gradcheck")
    bp = sub.add_parser("bench", help="float32 encoder throughput (JSON line), see scripts/bench-vs-pytorch.sh")
    bp.add_argument("--family", default="convluna", choices=["convluna", "convluna-unmasked", "convluna-pool", "convluna-pool-unmasked", "luna", "transformer"])
    bp.add_argument("--len", type=int, default=1024)
    bp.add_argument("--tokens", type=int, default=16384)
    bp.add_argument("--memory", type=int, default=256)
    bp.add_argument("--d", type=int, default=128)
    bp.add_argument("--heads", type=int, default=4)
    bp.add_argument("--ffn", type=int, default=512)
    bp.add_argument("--layers", type=int, default=4)
    bp.add_argument("--mode", default="train", choices=["fwd", "train", "matmul"])
    bp.add_argument("--iters", type=int, default=3)
    bp.add_argument("--warmup", type=int, default=1)
    bp.add_argument("--max-seconds", type=float, default=20.0)
    bp.add_argument("--threads", type=int, default=int(os.environ.get("RAYON_NUM_THREADS", "2")))
    bp.add_argument("--device", default="cpu", help="cpu or cuda (PyTorch eager on the same GPU)")
    args = ap.parse_args(argv)
    if args.cmd == "bench":
        bench(args)
        return
    torch.set_num_threads(1)  # bit-stable results independent of the core count
    if args.cmd == "fixtures":
        write_fixtures(os.path.normpath(args.out))
    else:
        sys.exit(0 if selfcheck() else 1)


if __name__ == "__main__":
    main()
