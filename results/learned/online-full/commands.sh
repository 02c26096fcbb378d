#!/usr/bin/env bash
# Online evaluation of learned deferral against the paper's fixed rules: the whole test split of each zoo
# pair, seeds 0, 1, 2, T = 1, gamma = 5, modeled latency (c = the per-step parameter ratio).
# Heads (results/learned/PAIR/): head = cascade_sampled (method learned), heads/token (learned_token: token
# head fitted on train-split logs), heads/token_v (learned_token_v: token head fitted on validation-split logs,
# text the models were not trained on), heads/mixture_v (learned_mixture_v: mixture weight, validation logs).
# Six processes share one GPU (the zoo models are launch-bound): per pair one for the fixed rules, one for the
# learned rules, each writing its own folder; online_summary merges a pair's folders.
# Usage: bash results/learned/online-full/commands.sh OUT [extra reproduce options, e.g. --device cuda]
# (SPECREF="python -m specref" where the package is on PYTHONPATH but not installed; LIMIT=SECONDS stops
# each process after that long, keeping the points it finished; PAIRS="a b" runs only those pairs)
set -euo pipefail
out=${1:?usage: commands.sh OUT [options]}
shift
specref=${SPECREF:-specref}
fixed="chow=0,0.2,0.4,0.6,0.8,1;diff=-0.3,-0.1,0,0.1,0.3,0.5;opt=-1,-0.5,-0.25,0,0.25,0.5,1"
fixed="$fixed;token_v3=0,0.2,0.4,0.6,0.8,0.9,0.95,0.98,0.99,0.995"
token="-0.1,0,0.05,0.1,0.15,0.2,0.3,0.4,0.5,0.7"
learned="learned=-2,-1,-0.5,-0.25,-0.1,0,0.1,0.25,0.5,1,2;learned_token=$token;learned_token_v=$token"
learned="$learned;learned_mixture_v=-1,0,0.25,0.5,1,2,4"
run() { if [ -n "${LIMIT:-}" ]; then timeout "$LIMIT" "$@" || true; else "$@"; fi; }
for pair in ${PAIRS:-arith-llama bible-en-es-t5 stdlib-doc-t5}; do
  h=results/learned/$pair
  run $specref reproduce --pair "$pair" --full --seed 0,1,2 --methods specdecode,chow,diff,opt,token_v3 \
      --alphas "$fixed" --no-plot --no-progress --out "$out/fixed" "$@" > "$out/$pair-fixed.log" 2>&1 &
  run $specref reproduce --pair "$pair" --full --seed 0,1,2 --methods learned --head "$h/head" \
      --head "token=$h/heads/token" --head "token_v=$h/heads/token_v" --head "mixture_v=$h/heads/mixture_v" \
      --alphas "$learned" --no-plot --no-progress --out "$out/learned" "$@" > "$out/$pair-learned.log" 2>&1 &
done
wait
python -m training.deferral.online_summary "$out/fixed" "$out/learned" --out "$out/online_summary.csv"
