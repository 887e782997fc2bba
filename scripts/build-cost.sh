#!/usr/bin/env bash
# What each feature set costs: dependencies (distinct crates in `cargo tree -e normal`) and the
# wall time of a clean release build of the library, each in a fresh target folder.
# Usage: scripts/build-cost.sh [TARGET_ROOT]   (default: a temporary folder, removed after)
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-$(mktemp -d)}"
for set in "--no-default-features" "" "--features hub"; do
  name="${set:-default}"
  deps=$(cargo tree $set -e normal --prefix none 2>/dev/null | sed 's/ (\*)//' | sort -u | wc -l)
  dir="$root/${name//[^a-z]/}"
  rm -rf "$dir"
  start=$(date +%s)
  CARGO_TARGET_DIR="$dir" cargo build --release --lib $set >/dev/null 2>&1
  end=$(date +%s)
  echo "$name: $deps crates, clean release build of the library $((end - start)) s"
  rm -rf "$dir"
done
