#!/usr/bin/env bash
# The GPU verification of issue 6, as one prepared script.
#
# 1. Here (CPU machine, no toolkit needed):
#      source scripts/cuda-toolchain.sh
#      scripts/gpu-check.sh stage          # builds with --features cuda, strips, copies to gpu-bundle/
# 2. On the GPU machine (device tool: carry ["gpu-bundle"], the tree itself brings tests/fixtures
#    and scripts/reference.py; PyTorch is installed there, nothing else is needed):
#      bash scripts/gpu-check.sh run       # writes everything under $OUT (or ./gpu-results)
#
# `run` does: nvidia-smi; the PyTorch parity tests on CUDA in f32 (tolerance 1e-5, as on CPU)
# and in bf16 (documented tolerance 5e-2 of the scale); a short `lra` training run on CUDA;
# then the encoder benchmark (4 layers, d = 128, m = 256, 16,384 tokens a step,
# forward+backward) for ConvLuna / Luna / Transformer at L = 1K…16K against PyTorch eager on
# the same GPU, alternating the two (LENS="1024 4096" picks the lengths). Results: $OUT/*.log and
# $OUT/bench-gpu.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
TARGET="${CARGO_TARGET_DIR:-target-cuda}"
BUNDLE=gpu-bundle

if [ "$mode" = stage ]; then
  set -e
  CARGO_TARGET_DIR="$TARGET" cargo build --release --features cuda --tests --example lra --example bench_encoder
  rm -rf "$BUNDLE"; mkdir -p "$BUNDLE"
  # the newest parity test binary
  parity=$(ls -t "$TARGET"/release/deps/parity-* | grep -v '\.d$' | head -1)
  cp "$parity" "$BUNDLE/parity"
  cp "$TARGET/release/examples/lra" "$TARGET/release/examples/bench_encoder" "$BUNDLE/"
  strip "$BUNDLE"/*
  # ~52 MB each stripped (the kernels' PTX is embedded); the PTX compresses ~8x, which keeps the
  # bundle well under the device tool's 64 MiB carry limit
  tar -C "$BUNDLE" -cf - parity lra bench_encoder | xz -T0 -6 > "$BUNDLE.tar.xz"
  rm -rf "$BUNDLE"; mkdir -p "$BUNDLE"; mv "$BUNDLE.tar.xz" "$BUNDLE/"
  du -sh "$BUNDLE"/*
  echo "carry: [\"$BUNDLE\"]   then: bash scripts/gpu-check.sh run"
  exit 0
fi
if [ -f "$BUNDLE/$BUNDLE.tar.xz" ] && [ ! -x "$BUNDLE/parity" ]; then
  tar -C "$BUNDLE" -xJf "$BUNDLE/$BUNDLE.tar.xz"
fi

OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
# cuBLAS / cuRAND / NVRTC: a system toolkit, or the wheels that PyTorch brought
libs=$("$PY" - <<'PYEOF' 2>/dev/null
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for pat in ("nvidia/*/lib", "nvidia/cu13/lib", "torch/lib"):
        dirs.update(glob.glob(os.path.join(sp, pat)))
print(":".join(sorted(dirs)))
PYEOF
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{ nvidia-smi; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; } > "$OUT/device.log" 2>&1

echo "== parity f32 on CUDA" | tee "$OUT/parity-f32.log"
CONVLUNA_TEST_DEVICE=cuda CONVLUNA_FIXTURES=tests/fixtures timeout 300 "$BUNDLE/parity" --nocapture >> "$OUT/parity-f32.log" 2>&1
echo "exit $?" >> "$OUT/parity-f32.log"
echo "== parity bf16 on CUDA" | tee "$OUT/parity-bf16.log"
CONVLUNA_TEST_DEVICE=cuda CONVLUNA_TEST_DTYPE=bf16 CONVLUNA_FIXTURES=tests/fixtures timeout 300 "$BUNDLE/parity" --nocapture >> "$OUT/parity-bf16.log" 2>&1
echo "exit $?" >> "$OUT/parity-bf16.log"

echo "== lra on CUDA" | tee "$OUT/lra.log"
timeout 300 "$BUNDLE/lra" --device cuda --steps 300 --out "$OUT/lra-run" >> "$OUT/lra.log" 2>&1
echo "exit $?" >> "$OUT/lra.log"

echo "== encoder benchmark, CUDA, convluna vs PyTorch eager" | tee "$OUT/bench.log"
for L in ${LENS:-1024 2048 4096 8192 16384}; do
  for fam in convluna luna transformer; do
    for impl in convluna pytorch; do
      if [ "$impl" = convluna ]; then
        timeout 120 "$BUNDLE/bench_encoder" --device cuda --family "$fam" --len "$L" --mode train >> "$OUT/bench-gpu.jsonl" 2>> "$OUT/bench.log"
      else
        timeout 120 "$PY" scripts/reference.py bench --device cuda --family "$fam" --len "$L" --mode train >> "$OUT/bench-gpu.jsonl" 2>> "$OUT/bench.log"
      fi
    done
  done
done
echo "done: $(ls "$OUT")"
