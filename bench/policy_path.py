"""Does the block-size policy's round cost more than a fixed-gamma round at the same block size? A diagnostic.

The 7B / 1B shapes of ``bench/realistic.py`` at batch 1 on the ``graph`` engine (``static`` with ``--smoke``),
SpecDecode at T = 3.1: fixed gamma 5, then a policy that always answers 5 (the policy path: per-position
counts, separate cache summaries, the choice), then both again, so that order and drift show as a difference
between the two timings of the same configuration. Prints each configuration's ms per round (best of 3 calls)
and, for the first pair, the CUDA runtime calls and ops per round whose host time differs most.

    python bench/policy_path.py            # a GPU
    python bench/policy_path.py --smoke    # tiny shapes on the CPU (seconds)
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.realistic import SHAPES, build, every_width_policy, random_prompts  # noqa: E402
from bench.timing import left_pad  # noqa: E402
from specref.decode import make_decoder  # noqa: E402
from specref.decode.gamma_policy import AdaptiveGamma  # noqa: E402


@dataclass(frozen=True)
class Constant(AdaptiveGamma):
    """The policy path with the fixed path's block size."""

    g: int = 5

    def choose(self, gamma_max: int, c: float, accepted: int, verified: int, allow_zero: bool = False,
               since_draft: int = 0, **kw: Any) -> int:
        return self.g


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (or --smoke)")
    shapes = SHAPES["smoke" if args.smoke else "full"]
    dev, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", torch.bfloat16)
    engine = "static" if args.smoke else "graph"
    target = build(*shapes["target"], vocab=shapes["vocab"], device=dev, dtype=dtype)
    draft = build(*shapes["drafts"]["1b"], vocab=shapes["vocab"], device=dev, dtype=dtype)
    ids, mask = left_pad(random_prompts(1, 64, shapes["vocab"], 0))
    ids, mask = ids.to(dev), mask.to(dev)

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    def run(name: str, policy: Any) -> tuple[str, int, collections.Counter, collections.Counter]:
        if policy is not None:  # every block width's graph captured before timing, as the bench does
            make_decoder(draft, target, "specdecode", gamma=5, engine=engine, gamma_policy=every_width_policy()
                         ).generate(ids, mask, max_new_tokens=128, temperature=3.1, seed=999)
        dec = make_decoder(draft, target, "specdecode", gamma=5, engine=engine, gamma_policy=policy)
        dec.generate(ids, mask, max_new_tokens=128, temperature=3.1, seed=998)
        per_round = []
        for r in range(3):
            sync()
            t0 = time.perf_counter()
            out = dec.generate(ids, mask, max_new_tokens=128, temperature=3.1, seed=r)
            sync()
            per_round.append((time.perf_counter() - t0) / int(out.stats.num_rounds))
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
        with profile(activities=acts) as prof:
            out = dec.generate(ids, mask, max_new_tokens=128, temperature=3.1, seed=0)
            sync()
        count, host_us = collections.Counter(), collections.Counter()
        for e in prof.key_averages():
            count[e.key], host_us[e.key] = e.count, e.self_cpu_time_total
        print(f"== {name}: {1000 * min(per_round):.2f} ms/round (best of 3), rounds {int(out.stats.num_rounds)}",
              flush=True)
        return name, int(out.stats.num_rounds), count, host_us

    print(torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (smoke)")
    rows = [run("fixed g5", None), run("policy const 5", Constant()), run("fixed g5 again", None),
            run("policy const 5 again", Constant())]
    (na, ra, ca, ha), (nb, rb, cb, hb) = rows[0], rows[1]
    print(f"-- per round: {na} vs {nb} (calls, self host us)")
    keys = sorted(set(ca) | set(cb), key=lambda k: -abs(hb[k] / rb - ha[k] / ra))
    for k in [k for k in keys if k.startswith("cuda")][:8] + keys[:12]:
        print(f"  {k[:60]:60s} {ca[k] / ra:8.2f} {cb[k] / rb:8.2f}   {ha[k] / ra:9.1f} {hb[k] / rb:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
