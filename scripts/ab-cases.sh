#!/usr/bin/env bash
# Side-by-side timing of several cases, one process per measurement, the cases alternating in
# every repetition (the order reverses every other repetition), each printing one JSON line.
#
# A case is a line `label|ENV=VALUE ...|command args`, where command is `convluna`
# (target/release/examples/bench_encoder, stock allocator unless the case adds
# `--tune-malloc`), `convluna=PATH` (another build of bench_encoder copied aside), `pytorch`
# (scripts/reference.py bench, the project's fixture model) or `baseline:VARIANT`
# (scripts/baseline.py --variant VARIANT: eager, sdpa, compile, compile-sdpa — the strongest
# PyTorch baseline, see that script):
#
#   CASES='fused||convluna --family convluna-pool --len 1024 --mode train
#   composite|CONVLUNA_NO_FUSED=pool|convluna --family convluna-pool --len 1024 --mode train' \
#     REPS=3 scripts/ab-cases.sh
#
# Environment: CASES, REPS (3), THREADS (2), ITERS (3), MAX_SECONDS (30), OUT (ab-results.jsonl),
# PYTHON (.venv/bin/python), CONVLUNA_BIN (target/release/examples/bench_encoder), and PAIRS:
# lines `numerator|denominator` (two labels) whose per-repetition ratios of tokens/s are
# summarised (median and range over the repetitions).
# A case that names its own `--threads` keeps it (give a convluna case RAYON_NUM_THREADS=N as
# well: the exported RAYON_NUM_THREADS=$THREADS would win over its --threads).
# Every line goes to $OUT with its label and repetition; a table of medians is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
THREADS=${THREADS:-2}
ITERS=${ITERS:-3}
MAX_SECONDS=${MAX_SECONDS:-30}
OUT=${OUT:-ab-results.jsonl}
PYTHON=${PYTHON:-.venv/bin/python}
CONVLUNA_BIN=${CONVLUNA_BIN:-target/release/examples/bench_encoder}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mapfile -t cases < <(printf '%s\n' "${CASES:?set CASES, see the header}" | sed '/^\s*$/d')
echo "# $(date -u +%FT%TZ) $(nproc) cores, threads=$THREADS, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for rep in $(seq 1 "$REPS"); do
  order=("${cases[@]}")
  if (( rep % 2 == 0 )); then
    order=(); for ((i=${#cases[@]}-1; i>=0; i--)); do order+=("${cases[i]}"); done
  fi
  for c in "${order[@]}"; do
    IFS='|' read -r label envs cmd <<<"$c"
    read -r -a argv <<<"$cmd"
    prog=${argv[0]}; args=("${argv[@]:1}" --iters "$ITERS" --max-seconds "$MAX_SECONDS")
    [[ " $cmd " == *" --threads "* ]] || args+=(--threads "$THREADS")
    read -r -a envv <<<"$envs"
    if [[ $prog == pytorch ]]; then
      line=$(env "${envv[@]}" "$PYTHON" scripts/reference.py bench "${args[@]}" 2>/dev/null | tail -n1) || line='{"failed":true}'
    elif [[ $prog == baseline:* ]]; then
      line=$(env "${envv[@]}" "$PYTHON" scripts/baseline.py --variant "${prog#baseline:}" "${args[@]}" 2>/dev/null | tail -n1) || line='{"failed":true}'
    else
      bin=$CONVLUNA_BIN
      [[ $prog == convluna=* ]] && bin=${prog#convluna=}
      line=$(env "${envv[@]}" "$bin" "${args[@]}" 2>/dev/null | tail -n1) || line='{"failed":true}'
    fi
    echo "${line%\}},\"label\":\"$label\",\"rep\":$rep}" | tee -a "$OUT" >&2
  done
done
"$PYTHON" - "$OUT" "$REPS" "${PAIRS:-}" "${cases[@]}" <<'PY'
import json, statistics, sys
out, reps, pairs, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows = [json.loads(l) for l in open(out) if l.startswith("{")][-reps * len(cases):]
print("| case | tokens/s (median) | range | peak RSS MiB |\n|---|---|---|---|")
for c in cases:
    label = c.split("|")[0]
    r = [x for x in rows if x.get("label") == label and "tokens_per_s" in x]
    if not r:
        print(f"| {label} | failed | | |"); continue
    t = [x["tokens_per_s"] for x in r]
    print(f"| {label} | {statistics.median(t):.0f} | {min(t):.0f}–{max(t):.0f} | {max(x['peak_rss_mib'] for x in r):.0f} |")
pairs = [p.split("|") for p in pairs.splitlines() if p.strip()]
if pairs:
    tps = {(x.get("label"), x.get("rep")): x.get("tokens_per_s") for x in rows}
    print("\n| ratio | median of per-repetition ratios | range | per repetition |\n|---|---|---|---|")
    for a, b in pairs:
        r = [tps[(a, k)] / tps[(b, k)] for k in range(1, reps + 1)
             if tps.get((a, k)) and tps.get((b, k))]
        if not r:
            print(f"| {a} ÷ {b} | failed | | |"); continue
        print(f"| {a} ÷ {b} | {statistics.median(r):.2f} | {min(r):.2f}–{max(r):.2f} | "
              + ", ".join(f"{x:.2f}" for x in r) + " |")
PY
