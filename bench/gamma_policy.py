"""Fixed block size against the adaptive block-size policy on the embedded zoo pairs, side by side in one run.

For each pair and gamma: SpecDecode with every round drafting gamma, and with ``gamma_policy="adaptive"``
(each round's g in 0..gamma), on the same prompts and seed. Prints the modeled latency relative to
target-only decoding (batch: the forwards the batch needs over its longest row; per row: the mean of the rows'
own), with the cost ratio c it used, the acceptance rate, the mean g, and the wall-clock ratio adaptive/fixed.
Modeled numbers are deterministic; wall-clock ones are this machine's.

    python bench/gamma_policy.py                                  # CPU, 64 test prompts per pair
    python bench/gamma_policy.py --device cuda --examples 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from specref.decode import make_decoder  # noqa: E402
from specref.loading import load_pair  # noqa: E402
from specref.repro.setups import zoo_setup  # noqa: E402


def run(pair_name: str, gammas: list[int], examples: int, max_new: int, device: str) -> list[dict]:
    pair = load_pair(pair_name, device=device)
    setup = zoo_setup(pair_name)
    tok = pair.tokenizer
    tok.padding_side = "left"
    prompts = [setup.task.format_prompt(e) for e in setup.task.load("test")[:examples]]
    enc = tok(prompts, return_tensors="pt", padding=True).to(device)
    rows = []
    for gamma in gammas:
        row = {"pair": pair_name, "gamma": gamma, "examples": len(prompts), "max_new_tokens": max_new}
        for name, policy in (("fixed", None), ("adaptive", "adaptive")):
            dec = make_decoder(pair.draft, pair.target, "specdecode", gamma=gamma, gamma_policy=policy, tokenizer=tok)
            dec.generate(enc.input_ids[:2], enc.attention_mask[:2], max_new_tokens=4, seed=0)  # warm-up
            t0 = time.perf_counter()
            out = dec.generate(enc.input_ids, enc.attention_mask, max_new_tokens=max_new, seed=0)
            wall = time.perf_counter() - t0
            s = out.stats.summary()
            row[name] = {
                "modeled_batch": s["modeled_relative_latency"],
                "modeled_row": float(out.stats.row_modeled_latency().mean()),
                "acceptance": s["acceptance_rate"], "mean_gamma": s.get("mean_gamma", float(gamma)),
                "gamma_rounds": s.get("gamma_rounds", {}), "wall_s": wall, "c": s["c"], "c_source": s["c_source"],
            }
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="bible-en-es-t5,stdlib-doc-t5,arith-llama")
    ap.add_argument("--gammas", default="3,5,8")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
    print(f"device: {device_name}; SpecDecode, {args.examples} test prompts per pair, {args.max_new_tokens} new tokens")
    print(f"{'pair':<16}{'gamma':>6}{'c':>7}{'accept':>8}{'batch fixed':>13}{'adaptive':>10}{'row fixed':>11}"
          f"{'adaptive':>10}{'mean g':>8}{'wall a/f':>10}")
    rows = []
    for name in args.pairs.split(","):
        for r in run(name, [int(g) for g in args.gammas.split(",")], args.examples, args.max_new_tokens, args.device):
            f, a = r["fixed"], r["adaptive"]
            print(f"{name:<16}{r['gamma']:>6}{f['c']:>7.3f}{f['acceptance']:>8.3f}{f['modeled_batch']:>13.3f}"
                  f"{a['modeled_batch']:>10.3f}{f['modeled_row']:>11.3f}{a['modeled_row']:>10.3f}"
                  f"{a['mean_gamma']:>8.2f}{a['wall_s'] / f['wall_s']:>10.2f}", flush=True)
            rows.append(r)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device_name, "torch": torch.__version__, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
