#!/usr/bin/env bash
# What produced this folder (2-core CPU sandbox, one torch thread, 2026-12-04): the first 256 test examples of
# each zoo pair (evenly spaced), seeds 0, 1, 2, T = 1, gamma = 5, the shipped sampled-loss heads.
# online-cpu256-vhead/ is the same bible run with the argmax-loss head trained on held-out books
# (results/learned/hidden-states/RECIPE.md, group bible-v), its non-learned rows copied from here.
set -euo pipefail
alphas="chow=0,0.2,0.4,0.6,0.8,1;diff=-0.3,-0.1,0,0.1,0.3,0.5;opt=-1,-0.5,-0.25,0,0.25,0.5,1"
alphas="$alphas;token_v3=0,0.2,0.4,0.6,0.8,0.9;learned=-2,-1,-0.5,-0.25,-0.1,0,0.1,0.25,0.5,1,2"
for pair in bible-en-es-t5 stdlib-doc-t5 arith-llama; do
  specref reproduce --pair "$pair" --full --seed 0,1,2 --methods specdecode,chow,diff,opt,token_v3,learned \
      --alphas "$alphas" --head "results/learned/$pair/head" --no-plot --out results/learned/online-cpu256 \
      --max-examples 256 --device cpu --threads 1 --no-progress
done
python -m training.deferral.online_summary results/learned/online-cpu256 --out results/learned/online-cpu256/online_summary.csv
