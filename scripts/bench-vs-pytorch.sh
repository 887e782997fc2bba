#!/usr/bin/env bash
# Head to head: the PyTorch reference (scripts/reference.py bench) against convluna
# (examples/bench_encoder.rs) on the same shapes and thread count, one process per
# measurement, alternating the two implementations (the order flips every repetition), under
# the stock glibc allocator and under the GLIBC_TUNABLES setting of issue 7.
#
# Each process prints one JSON line (tokens/s as B·L / median step time, peak RSS from
# VmHWM / ru_maxrss); they are appended to $OUT with the allocator setting and repetition,
# and a side-by-side table (ratio = convluna / pytorch) is printed at the end.
#
#   scripts/bench-vs-pytorch.sh                                   # everything (long)
#   FAMILIES=convluna LENGTHS="1024 16384" ALLOCS=tuned REPS=1 scripts/bench-vs-pytorch.sh
#
# Environment: THREADS (2), FAMILIES ("convluna luna transformer"), LENGTHS
# ("512 1024 2048 4096 8192 16384"), MODES (train), ALLOCS ("stock tuned"), REPS (2),
# ITERS (timed steps, 2), MAX_SECONDS (per process timing budget, 30), TIMEOUT (per process
# hard limit in seconds, 900), TRANSFORMER_MAX_LEN (8192), OUT (bench-results.jsonl),
# PYTHON (.venv/bin/python), CONVLUNA_BIN (target/release/examples/bench_encoder), BUILD (1).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-2}
FAMILIES=${FAMILIES:-"convluna luna transformer"}
LENGTHS=${LENGTHS:-"512 1024 2048 4096 8192 16384"}
MODES=${MODES:-train}
ALLOCS=${ALLOCS:-"stock tuned"}
REPS=${REPS:-2}
ITERS=${ITERS:-2}
MAX_SECONDS=${MAX_SECONDS:-30}
TIMEOUT=${TIMEOUT:-900}
TRANSFORMER_MAX_LEN=${TRANSFORMER_MAX_LEN:-8192}
OUT=${OUT:-bench-results.jsonl}
PYTHON=${PYTHON:-.venv/bin/python}
CONVLUNA_BIN=${CONVLUNA_BIN:-target/release/examples/bench_encoder}
TUNED="glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736:glibc.malloc.top_pad=1073741824"

if [[ "${BUILD:-1}" == 1 ]]; then
  cargo build --release --example bench_encoder
fi
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

echo "# $(date -u +%FT%TZ) $(uname -srm), $(nproc) cores, threads=$THREADS, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

run_one() { # impl alloc family len mode rep
  local impl=$1 alloc=$2 fam=$3 len=$4 mode=$5 rep=$6 envs=() line rc=0
  [[ $alloc == tuned ]] && envs=(GLIBC_TUNABLES=$TUNED)
  local args=(--family "$fam" --len "$len" --mode "$mode" --iters "$ITERS" --max-seconds "$MAX_SECONDS" --threads "$THREADS")
  if [[ $impl == pytorch ]]; then
    line=$(env "${envs[@]}" timeout "$TIMEOUT" "$PYTHON" scripts/reference.py bench "${args[@]}" 2>/dev/null | tail -n1) || rc=$?
  else
    line=$(env "${envs[@]}" timeout "$TIMEOUT" "$CONVLUNA_BIN" "${args[@]}" 2>/dev/null | tail -n1) || rc=$?
  fi
  if [[ $rc != 0 || -z $line ]]; then
    local why=error; [[ $rc == 124 ]] && why=timeout; [[ $rc == 137 ]] && why=killed
    line="{\"impl\":\"$impl\",\"family\":\"$fam\",\"len\":$len,\"mode\":\"$mode\",\"failed\":\"$why\"}"
  fi
  local load; load=$(cut -d' ' -f1 /proc/loadavg)
  echo "${line%\}},\"alloc\":\"$alloc\",\"rep\":$rep,\"load\":$load}" | tee -a "$OUT" >&2
}

for rep in $(seq 1 "$REPS"); do
  for alloc in $ALLOCS; do
    for mode in $MODES; do
      for fam in $FAMILIES; do
        for len in $LENGTHS; do
          if [[ $fam == transformer && $len -gt $TRANSFORMER_MAX_LEN ]]; then continue; fi
          if (( rep % 2 )); then order="pytorch convluna"; else order="convluna pytorch"; fi
          for impl in $order; do run_one "$impl" "$alloc" "$fam" "$len" "$mode" "$rep"; done
        done
      done
    done
  done
done

"$PYTHON" - "$OUT" <<'PY'
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = collections.defaultdict(dict)
for r in rows:
    k = (r.get("alloc"), r.get("mode"), r["family"], r["len"])
    cur = best[k].get(r["impl"])
    if "tokens_per_s" in r and (cur is None or "tokens_per_s" not in cur or r["tokens_per_s"] > cur["tokens_per_s"]):
        best[k][r["impl"]] = r
    elif cur is None:
        best[k][r["impl"]] = r
print("| alloc | mode | family | L | B | PyTorch tok/s | convluna tok/s | ratio | PyTorch peak MiB | convluna peak MiB | convluna GFLOP/s |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for k in sorted(best, key=lambda k: (k[0] or "", k[1] or "", k[2], k[3])):
    p, c = best[k].get("pytorch", {}), best[k].get("convluna", {})
    f = lambda r, key, fmt: (fmt % r[key]) if key in r else r.get("failed", "–")
    ratio = "%.2f×" % (c["tokens_per_s"] / p["tokens_per_s"]) if "tokens_per_s" in p and "tokens_per_s" in c else "–"
    print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {c.get('batch', p.get('batch', '–'))} | {f(p, 'tokens_per_s', '%.0f')} | "
          f"{f(c, 'tokens_per_s', '%.0f')} | {ratio} | {f(p, 'peak_rss_mib', '%.0f')} | {f(c, 'peak_rss_mib', '%.0f')} | {f(c, 'gflops', '%.1f')} |")
PY
