#!/usr/bin/env bash
# A/B: the binary before the deterministic reductions (98883d2) and after (HEAD), alternating.
set -u
OLD=${OLD:?path to bench_encoder built from 98883d2}
NEW=${NEW:-target/release/examples/bench_encoder}
for rep in 1 2 3 4 5; do
  for side in old new; do
    bin=$OLD; [ $side = new ] && bin=$NEW
    out=$(RAYON_NUM_THREADS=2 $bin --family convluna --len 1024 --mode train --iters 6 --warmup 2 --max-seconds 30 --tune-malloc 2>/dev/null | tail -1)
    echo "$rep $side $out"
  done
done
