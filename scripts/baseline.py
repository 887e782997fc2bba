#!/usr/bin/env python3
"""The strongest PyTorch baseline we can make for `examples/bench_encoder.rs`.

A straightforward, independent PyTorch implementation of the benchmark's encoder (token
embedding + learned positions, 4 blocks, d = 128, h = 4, FFN 512, m = 256, the same masking
mode: keys/values zeroed at pads and the logits given a key-padding bias, with an all-ones
mask), with no work beyond the math (no dropout, no copies for head splits beyond what
PyTorch needs), timed in several variants so that the comparison is against the fastest:

  eager          plain matmul + softmax
  sdpa           torch.nn.functional.scaled_dot_product_attention for every attention
  compile        torch.compile (inductor) of the eager model
  compile-sdpa   torch.compile of the SDPA model

`--variant best` runs all four in this process (each after its own warm-up, compile
included in the warm-up) and prints one JSON line per variant; the bench scripts take the
fastest. `--mode matmul` prints PyTorch's f32 matmul throughput at 2048³ and on the
encoder's shapes, and the BLAS PyTorch was built with.

  .venv/bin/python scripts/baseline.py --family convluna --len 4096 --mode train --variant best
  .venv/bin/python scripts/baseline.py --mode matmul

The JSON fields match bench_encoder's (impl, family, len, batch, mode, threads, steps,
sec_median, tokens_per_s, gflops, peak_rss_mib), with impl = "pytorch-<variant>".
"""

import argparse
import json
import math
import os
import resource
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

# the FLOP count, the timing loop and the matmul probe are the reference bench's own
from reference import bench_block_fwd_flops, blas_name, cpu_model, matmul_peak, time_steps

MASK_BIAS = -1e9


def heads(x, h):
    b, n, d = x.shape
    return x.view(b, n, h, d // h).transpose(1, 2)


def merge(x):
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


def attend(q, k, v, scale, bias, sdpa):
    """softmax(scale·q·kᵀ + bias)·v on [B, h, n, dh] tensors; scale a float or a 1-element
    tensor (a learned temperature, folded into q for SDPA, whose scale must be a float)."""
    if sdpa:
        if torch.is_tensor(scale):
            q, scale = q * scale, 1.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    logits = (q @ k.transpose(-1, -2)) * scale
    if bias is not None:
        logits = logits + bias
    return torch.softmax(logits, dim=-1) @ v


class FFN(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(f, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class LunaBlock(nn.Module):
    """ConvLuna (shared q/k/o projections, raw values, learned pack temperature, per-head
    time filter: conv k=4 s=1 'same' or max-pool k=4 s=2) or Luna as the authors share it
    (q/k/v/o, 1/√d_h both ways). Post-LN: x' = LN(LN(x + Y_x) + FFN(·)), p' = LN(p + Y_p)."""

    def __init__(self, d, h, f, filt, sdpa):
        super().__init__()
        self.h, self.filt, self.sdpa = h, filt, sdpa
        self.q, self.k, self.o = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.v = nn.Linear(d, d) if filt == "luna" else None
        if filt == "conv":
            self.w = nn.Parameter(torch.randn(h, 4) * 0.5)
        self.tau = nn.Parameter(torch.zeros(1)) if filt != "luna" else None
        self.ln_x, self.ln_p, self.ln_f = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = FFN(d, f)

    def time_filter(self, x):
        """x [B, L, d] → [B, L', d], per head along time."""
        if self.filt == "conv":
            b, L, d = x.shape
            w = self.w.repeat_interleave(d // self.h, dim=0).unsqueeze(1)  # [d, 1, 4]
            y = F.conv1d(F.pad(x.transpose(1, 2), (1, 2)), w, groups=d)
            return y.transpose(1, 2)
        if self.filt == "pool":
            b, L, d = x.shape
            pad = max(0, ((L - 1) // 2) * 2 + 4 - L)  # a window starts at every 2t < L
            y = F.max_pool1d(F.pad(x.transpose(1, 2), (0, pad), value=-math.inf), 4, 2)
            return y.transpose(1, 2)
        return x

    def forward(self, x, p, mask, keep):
        h = self.h
        dh = x.shape[-1] // h
        k = self.k(x) * keep
        v = (x if self.v is None else self.v(x)) * keep
        if self.filt == "pool":  # pads are −inf inside a max
            k = k.masked_fill(keep == 0, -math.inf)
            v = v.masked_fill(keep == 0, -math.inf)
        kf, vf = self.time_filter(k), self.time_filter(v)
        fmask = mask if self.filt != "pool" else F.max_pool1d(
            F.pad(mask[:, None], (0, kf.shape[1] * 2 + 2 - mask.shape[1])), 4, 2)[:, 0, : kf.shape[1]]
        if self.filt == "pool":  # a window of pads only is masked out; its value is 0
            kf = kf.masked_fill(fmask[:, :, None] == 0, 0.0)
            vf = vf.masked_fill(fmask[:, :, None] == 0, 0.0)
        bias = ((1.0 - fmask) * MASK_BIAS)[:, None, None, :]
        s = torch.exp(-self.tau) if self.tau is not None else 1.0 / math.sqrt(dh)
        yp = self.o(merge(attend(heads(self.q(p), h), heads(kf, h), heads(vf, h), s, bias, self.sdpa)))
        # unpack: the sequence attends over the packed memory
        v2 = yp if self.v is None else self.v(yp)
        s2 = 1.0 if self.tau is not None else 1.0 / math.sqrt(dh)
        yx = self.o(merge(attend(heads(self.q(x), h), heads(self.k(yp), h), heads(v2, h), s2, None, self.sdpa)))
        xa = self.ln_x(x + yx)
        return self.ln_f(xa + self.ffn(xa)), self.ln_p(p + yp)


class TransformerBlock(nn.Module):
    """Pre-LN: x1 = x + MHA(LN(x)); x' = x1 + FFN(LN(x1))."""

    def __init__(self, d, h, f, sdpa):
        super().__init__()
        self.h, self.sdpa = h, sdpa
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln1, self.ln2, self.ffn = nn.LayerNorm(d), nn.LayerNorm(d), FFN(d, f)

    def forward(self, x, p, mask, keep):
        h = self.h
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        bias = ((1.0 - mask) * MASK_BIAS)[:, None, None, :]
        a = attend(heads(q, h), heads(k, h), heads(v, h), 1.0 / math.sqrt(q.shape[-1] // h), bias, self.sdpa)
        x1 = x + self.o(merge(a))
        return x1 + self.ffn(self.ln2(x1)), p


class Encoder(nn.Module):
    def __init__(self, family, L, d, h, f, m, layers, sdpa):
        super().__init__()
        self.embed, self.pos = nn.Embedding(256, d), nn.Embedding(L, d)
        filt = {"convluna": "conv", "convluna-pool": "pool", "luna": "luna"}.get(family)
        self.memory = nn.Parameter(torch.randn(m, d)) if filt else None
        self.blocks = nn.ModuleList(
            LunaBlock(d, h, f, filt, sdpa) if filt else TransformerBlock(d, h, f, sdpa)
            for _ in range(layers))

    def forward(self, ids, mask):
        x = self.embed(ids) + self.pos.weight[None, : ids.shape[1]]
        keep = mask[:, :, None]
        p = self.memory[None].expand(ids.shape[0], -1, -1) if self.memory is not None else None
        for blk in self.blocks:
            x, p = blk(x, p, mask, keep)
        return x


def vm_hwm_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(a, variant):
    sdpa = variant.endswith("sdpa")
    torch.manual_seed(7)
    L, b = a.len, max(1, a.tokens // a.len)
    model = Encoder(a.family, L, a.d, a.heads, a.ffn, a.memory, a.layers, sdpa)
    ids = (1 + (torch.arange(b * L) * 7919) % 255).reshape(b, L)
    mask = torch.ones(b, L)
    train = a.mode == "train"
    fn = torch.compile(model) if variant.startswith("compile") else model

    def step():
        if train:
            loss = fn(ids, mask).mean()
            model.zero_grad(set_to_none=True)
            loss.backward()
        else:
            with torch.inference_mode():
                loss = fn(ids, mask).mean()
        return float(loss.detach())

    times, warm = time_steps(step, a.warmup, a.iters, a.max_seconds)
    med = times[len(times) // 2]
    n = b * L
    fl = bench_block_fwd_flops(a.family, n, b, L, a.d, a.ffn, a.memory, 4) * a.layers * (3 if train else 1)
    return {
        "impl": f"pytorch-{variant}", "family": a.family, "len": L, "batch": b, "mode": a.mode,
        "threads": torch.get_num_threads(), "steps": len(times), "warmup_s": round(warm, 2),
        "sec_median": round(med, 5), "sec_best": round(times[0], 5),
        "tokens_per_s": round(n / med, 1), "gflop_per_step": round(fl / 1e9, 3),
        "gflops": round(fl / med / 1e9, 2), "peak_rss_mib": round(vm_hwm_mib(), 1),
        "torch": torch.__version__, "blas": blas_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_model(),
    }



def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="convluna", choices=["convluna", "convluna-pool", "luna", "transformer"])
    ap.add_argument("--len", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--mode", default="train", choices=["train", "fwd", "matmul"])
    ap.add_argument("--variant", default="best", choices=["best", "eager", "sdpa", "compile", "compile-sdpa"])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation happens here)")
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RAYON_NUM_THREADS", "2")))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.mode == "matmul":
        return matmul_peak()
    variants = ["eager", "sdpa", "compile", "compile-sdpa"] if a.variant == "best" else [a.variant]
    for v in variants:
        try:
            print(json.dumps(run_variant(a, v)), flush=True)
        except Exception as e:  # a variant that does not compile is reported, not fatal
            print(json.dumps({"impl": f"pytorch-{v}", "family": a.family, "len": a.len, "mode": a.mode,
                              "failed": f"{type(e).__name__}: {str(e)[:200]}"}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
