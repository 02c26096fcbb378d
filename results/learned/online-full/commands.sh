#!/usr/bin/env bash
# Online evaluation of the learned rule against the paper's fixed rules: whole test split of each zoo pair,
# seeds 0, 1, 2, T = 1, gamma = 5, the shipped sampled-loss heads (results/learned/PAIR/head).
# Usage: bash results/learned/online-full/commands.sh OUT [extra reproduce options, e.g. --device cuda]
# (SPECREF="python -m specref" where the package is on PYTHONPATH but not installed)
# Then: python -m training.deferral.online_summary OUT --out results/learned/online_summary.csv
set -euo pipefail
out=${1:?usage: commands.sh OUT [options]}
shift
alphas="chow=0,0.2,0.4,0.6,0.8,1;diff=-0.3,-0.1,0,0.1,0.3,0.5;opt=-1,-0.5,-0.25,0,0.25,0.5,1"
alphas="$alphas;token_v3=0,0.2,0.4,0.6,0.8,0.9;learned=-2,-1,-0.5,-0.25,-0.1,0,0.1,0.25,0.5,1,2"
for pair in arith-llama bible-en-es-t5 stdlib-doc-t5; do
  ${SPECREF:-specref} reproduce --pair "$pair" --full --seed 0,1,2 --methods specdecode,chow,diff,opt,token_v3,learned \
      --alphas "$alphas" --head "results/learned/$pair/head" --no-plot --out "$out" "$@"
done
