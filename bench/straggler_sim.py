"""Whole batched calls simulated under a cost model: plain steps, fixed gamma and the block-size policy with and
without its straggler charge, side by side.

Each row of a batch needs ``--new-tokens`` tokens; a round of ``g`` drafts gives each live row 1 + the drafts
accepted before the first rejection (each accepted with probability ``a``, independently), and the batch runs
until its slowest row is done, every round costing the whole batch (as on the static engines): ``(g + 1) c + 1
+ verify_slope g + round_overhead`` target steps, a plain step ``1 + plain_overhead``. The policy is
``specref.decode.gamma_policy.AdaptiveGamma`` itself, fed the simulated counts (overall and per draft
position) as the decoder feeds it. The costs default to the H100 calibration of the 7B / 1B pair at each batch
size (``bench/realistic.py``'s ``calibrate`` on ``bench/results/nvidia-h100-realistic-lean-2026-12-07.json``).
Prints tokens per modeled target step relative to plain steps; no GPU, no model, deterministic for a seed.

    python bench/straggler_sim.py
    python bench/straggler_sim.py --batches 8,32 --acceptances 0.8 --calls 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from specref.decode.gamma_policy import AdaptiveGamma, round_cost  # noqa: E402
from specref.options import float_tuple, int_tuple, positive_int  # noqa: E402

#: (c, verify_slope, round_overhead, plain_overhead) by batch size: the H100 calibration of the 7B / 1B pair
H100_COSTS = {1: (0.275, 0.014, 0.229, 0.060), 8: (0.286, 0.017, 0.198, 0.054),
              32: (0.282, 0.029, 0.238, 0.061), 64: (0.274, 0.053, 0.258, 0.066)}
STRATEGIES = ("plain", "fixed", "policy, no straggler charge", "policy")


def simulate(strategy: str, rows: int, a: float, costs: tuple[float, float, float, float], new_tokens: int,
             gamma: int, calls: int, seed: int) -> dict[str, float]:
    """Modeled target steps and tokens over ``calls`` calls of ``rows`` rows each, and the mean g taken."""
    c, slope, r_over, p_over = costs
    rng = np.random.default_rng(seed)
    policy = None
    if strategy.startswith("policy"):
        policy = AdaptiveGamma(c=c, verify_slope=slope, round_overhead=r_over, plain_overhead=p_over,
                               prior_acceptance=a, stragglers=strategy == "policy")
    steps = tokens = 0.0
    gs: list[int] = []
    for _ in range(calls):
        left = np.full(rows, new_tokens)
        acc_at, ver_at = [0] * gamma, [0] * gamma
        since = 0
        while (left > 0).any():
            if policy is None:
                g = 0 if strategy == "plain" else gamma
            else:
                g = policy.choose(gamma, c, sum(acc_at), sum(ver_at), True, since, by_position=(acc_at, ver_at),
                                  rows=rows, new_tokens=new_tokens)
            since = since + 1 if g == 0 else 0
            gs.append(g)
            steps += round_cost(g, c, slope, r_over, p_over)
            live = left > 0
            passed = rng.random((int(live.sum()), g)) < a  # [live rows, g]
            run = np.cumprod(passed, axis=1).sum(axis=1) if g else np.zeros(int(live.sum()), dtype=int)
            for j in range(g):  # drafts verified at position j: those whose predecessors passed
                ver_at[j] += int((run >= j).sum())
                acc_at[j] += int((run >= j + 1).sum())
            got = np.minimum(run + 1, left[live])
            left[live] -= got
            tokens += float(got.sum())
    return {"steps": steps, "tokens": tokens, "mean_g": float(np.mean(gs))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int_tuple, default=(8, 32, 64),
                    help="batch sizes, from 1, 8, 32, 64 (default 8,32,64)")
    ap.add_argument("--acceptances", type=float_tuple, default=(0.8, 0.75, 0.7),
                    help="acceptance rates in [0, 1] (default 0.8,0.75,0.7)")
    ap.add_argument("--new-tokens", type=positive_int, default=128)
    ap.add_argument("--gamma", type=positive_int, default=5)
    ap.add_argument("--calls", type=positive_int, default=40, help="simulated calls per cell (default 40)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    batches, accs = list(args.batches), list(args.acceptances)
    bad = [b for b in batches if b not in H100_COSTS]
    if bad:
        ap.error(f"--batches: no calibrated costs for {bad}; allowed: {sorted(H100_COSTS)}")
    if not all(0 <= a <= 1 for a in accs):
        ap.error(f"--acceptances must be in [0, 1], got {args.acceptances}")
    print(f"modeled tokens per target step / plain steps' (H100 costs of the 7B / 1B pair, {args.new_tokens} tokens "
          f"per row, gamma {args.gamma}, {args.calls} calls per cell, seed {args.seed})")
    print(f"{'batch':>6}{'accept':>8}" + "".join(f"{s:>30}" for s in STRATEGIES[1:]))
    out: list[dict[str, Any]] = []
    for b in batches:
        for a in accs:
            res = {s: simulate(s, b, a, H100_COSTS[b], args.new_tokens, args.gamma, args.calls, args.seed)
                   for s in STRATEGIES}
            base = res["plain"]["tokens"] / res["plain"]["steps"]
            rel = {s: r["tokens"] / r["steps"] / base for s, r in res.items()}
            print(f"{b:>6}{a:>8.2f}" + "".join(f"{rel[s]:>22.3f}x (g {res[s]['mean_g']:.2f})" for s in STRATEGIES[1:]),
                  flush=True)
            out.append({"batch": b, "acceptance": a, "costs": H100_COSTS[b], "vs_plain": rel,
                        "mean_g": {s: r["mean_g"] for s, r in res.items()}})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": out}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
