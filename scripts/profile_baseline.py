#!/usr/bin/env python3
"""Two probes behind BENCHMARKS.md's "PyTorch's Luna step beside ours":

  steps   a bare training loop of `baseline.py`'s encoder (no timing harness), to run under
          `perf record`:  perf record -F 999 -g .venv/bin/python scripts/profile_baseline.py
          steps --family luna --len 4096 --variant sdpa --steps 6
  shapes  MKL's single-thread GFLOP/s on the attention's thin products and the linear layers'
          shapes (M × K × N), through torch.bmm over enough matrices to hide the call.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baseline  # noqa: E402

SHAPES = [(256, 256, 32), (4096, 256, 32), (256, 4096, 32), (256, 32, 256), (4096, 32, 256),
          (16384, 128, 128), (16384, 128, 512), (16384, 512, 128)]


def steps(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(7)
    b = max(1, a.tokens // a.len)
    model = baseline.Encoder(a.family, a.len, 128, 4, 512, 256, 4, a.variant == "sdpa")
    ids = (1 + (torch.arange(b * a.len) * 7919) % 255).reshape(b, a.len)
    mask = torch.ones(b, a.len)

    def step():
        loss = model(ids, mask).mean()
        model.zero_grad(set_to_none=True)
        loss.backward()

    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    print(f"{(time.perf_counter() - t) / a.steps:.4f} s/step", file=sys.stderr)


def shapes(_a):
    torch.set_num_threads(1)
    for m, k, n in SHAPES:
        nb = max(1, int(2e8 / (m * n * k)))
        x, y, out = torch.randn(nb, m, k), torch.randn(nb, k, n), torch.empty(nb, m, n)
        for _ in range(3):
            torch.bmm(x, y, out=out)
        best = min(timed(lambda: torch.bmm(x, y, out=out)) for _ in range(5))
        print(f"{m} x {k} x {n}: {2 * m * n * k * nb / best / 1e9:.1f} GFLOP/s ({nb} matrices)")


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=["steps", "shapes"])
    ap.add_argument("--family", default="luna", choices=["convluna", "convluna-pool", "luna"])
    ap.add_argument("--len", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--variant", default="sdpa", choices=["eager", "sdpa"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    (steps if a.probe == "steps" else shapes)(a)


if __name__ == "__main__":
    main()
