#!/usr/bin/env bash
# Build convluna with `--features cuda` on a machine WITHOUT a system CUDA toolkit (and without
# a GPU): NVIDIA ships nvcc, the CUDA headers and libraries as PyPI wheels. This installs them
# into ./.cuda (ignored by git) and prints the environment Candle's build needs.
#
#   source scripts/cuda-toolchain.sh            # install (first time) and export the variables
#   cargo build --release --features cuda --all-targets
#
# Variables you may set before sourcing:
#   CUDA_COMPUTE_CAP  target compute capability (default 90: H100 / H200; 80 for A100, 89 for L4/4090)
#   CUDA_WHEELS_VER   major.minor of the toolkit wheels (default 13.0; only the CUDA 13 wheels ship
#                     nvcc itself, the 12.x `nvidia-cuda-nvcc-cu12` wheels hold ptxas and libdevice only)
#   CUDA_PREFIX       install folder (default <repo>/.cuda)
# At run time Candle loads the driver (libcuda.so, from the NVIDIA driver) and cuBLAS / cuRAND /
# NVRTC dynamically; on a GPU machine without a toolkit, add this folder's lib directories to
# LD_LIBRARY_PATH (printed below as CUDA_LIBRARY_PATH).
set -eo pipefail
_here="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
CUDA_PREFIX="${CUDA_PREFIX:-$_here/.cuda}"
CUDA_WHEELS_VER="${CUDA_WHEELS_VER:-13.0}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# the compiler (nvcc, cicc, crt headers), runtime headers and NVRTC follow the toolkit version;
# cuBLAS and cuRAND have their own version numbers (the cu13 releases)
_pkgs="nvidia-cuda-nvcc nvidia-nvvm nvidia-cuda-crt nvidia-cuda-runtime nvidia-cuda-cccl nvidia-cuda-nvrtc"
_root="$CUDA_PREFIX/nvidia/cu13"
if [ ! -x "$_root/bin/nvcc" ]; then
  _spec=""
  for p in $_pkgs; do _spec="$_spec $p==${CUDA_WHEELS_VER}.*"; done
  _spec="$_spec nvidia-cublas nvidia-curand"
  python3 -m pip install --quiet --disable-pip-version-check --target "$CUDA_PREFIX" $_spec
fi
# the wheels install one CUDA root in the usual layout (bin/, include/, lib/, nvvm/)
[ -e "$_root/lib64" ] || ln -sfn lib "$_root/lib64"
# unversioned names for the linker
for f in "$_root"/lib/lib*.so.[0-9]*; do
  b="${f%%.so.*}.so"; [ -e "$b" ] || ln -sf "$f" "$b"
done
# cudarc links the driver API (libcuda), which comes with the NVIDIA driver, not with the
# wheels. Link against a stub that defines every driver entry point named in the headers (as the
# toolkit's lib/stubs/libcuda.so does); at run time the driver's real libcuda.so.1 is loaded
# (same soname). The stub is on LIBRARY_PATH only, never on LD_LIBRARY_PATH.
_stubs="$CUDA_PREFIX/stubs"
if [ ! -e "$_stubs/libcuda.so" ]; then
  mkdir -p "$_stubs"
  { grep -ohE '\bcu[A-Z][A-Za-z0-9_]*' "$_root/include/cuda.h"
    # entry points only named in the typedef headers (e.g. cuProfilerInitialize)
    grep -ohE 'PFN_cu[A-Z][A-Za-z0-9]*' "$_root"/include/cuda*Typedefs.h | sed 's/^PFN_//'
  } | sort -u | awk '{ printf "int %s(void) { return 999; }\n", $1 }' > "$_stubs/libcuda_stub.c"
  cc -shared -fPIC "$_stubs/libcuda_stub.c" -o "$_stubs/libcuda.so" -Wl,-soname,libcuda.so.1
fi
export CUDA_ROOT="$_root" CUDA_PATH="$_root" CUDA_HOME="$_root" CUDA_TOOLKIT_ROOT_DIR="$_root"
export PATH="$_root/bin:$PATH"
export CUDA_LIBRARY_PATH="$_root/lib"
export LIBRARY_PATH="$_root/lib:$_stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
echo "nvcc: $(nvcc --version | tail -1)"
echo "CUDA_ROOT=$CUDA_ROOT CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
echo "now: cargo build --release --features cuda --all-targets"
