"""Lossless SpecDecode on the real zoo pairs: does it sample the target's law? A two-sample test per pair.

The suite proves exactness by enumeration on tiny models; this script checks the same guarantee end to end
on the zoo's trained pairs (their tokenizers, T5 encoder-decoder and Llama caches, EOS handling). For a few
test prompts, each replicated over many rows (row i uses seed + i, so rows are independent draws), it
samples the first ``K`` tokens with the target alone and with SpecDecode, and compares the two samples of
whole ``K``-token prefixes by a chi-square test of homogeneity
(:func:`specref.stats_tests.chi_square_homogeneity`: categories seen fewer than 5 times in the pooled sample
are merged into one cell, dropped if that cell is itself too small). A negative control runs the same test
on lossy SpecDecode (alpha = 0.3), whose law differs from the target's, and must reject it.
Prints one line per (pair, prompt, method).

    python bench/real_pair_exactness.py --device cuda --rows 20000
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from specref import zoo  # noqa: E402
from specref.decode import make_decoder  # noqa: E402
from specref.loading import load_pair  # noqa: E402
from specref.stats_tests import chi_square_homogeneity  # noqa: E402


def prefixes(dec, ids, mask, rows: int, k: int, seed: int, chunk: int) -> collections.Counter:
    """Counts of the first ``k`` generated tokens (shorter rows: padded with -1 after EOS) over ``rows`` draws."""
    counts: collections.Counter = collections.Counter()
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        out = dec.generate(ids.expand(n, -1), mask.expand(n, -1), max_new_tokens=k, temperature=1.0,
                           seed=seed + start)
        counts.update(map(tuple, out.sequences.tolist()))
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--pairs", default=",".join(zoo.list_pairs()))
    ap.add_argument("--prompts", type=int, default=3, help="test prompts per pair (default: 3)")
    ap.add_argument("--rows", type=int, default=20000, help="draws per (prompt, method) (default: 20000)")
    ap.add_argument("--k", type=int, default=3, help="tokens per sampled prefix (default: 3)")
    ap.add_argument("--chunk", type=int, default=2000, help="rows per generate call (default: 2000)")
    ap.add_argument("--gamma", type=int, default=5)
    args = ap.parse_args()
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {name}; rows {args.rows} per sample; prefix of {args.k} tokens; gamma {args.gamma}")
    print("pair            prompt  method      categories  p(homogeneity with target-only)")
    for pair_name in args.pairs.split(","):
        pair = load_pair(pair_name, device=args.device)
        target = make_decoder(pair.draft, pair.target, "target")
        others = {"specdecode": make_decoder(pair.draft, pair.target, "specdecode", gamma=args.gamma),
                  "lossy(0.3)*": make_decoder(pair.draft, pair.target, "lossy", alpha=0.3, gamma=args.gamma)}
        for j, ex in enumerate(pair.task.load("test", limit=args.prompts)):
            enc = pair.tokenizer(pair.task.format_prompt(ex), return_tensors="pt")
            ids, mask = enc["input_ids"].to(pair.device), enc["attention_mask"].to(pair.device)
            # independent seeds for the two samples: the target's rows and the other method's never share one
            ref = prefixes(target, ids, mask, args.rows, args.k, 10**6, args.chunk)
            for label, dec in others.items():
                got = prefixes(dec, ids, mask, args.rows, args.k, 2 * 10**6, args.chunk)
                p = chi_square_homogeneity(ref, got).p_value
                print(f"{pair_name:15s} {j:6d}  {label:11s} {len(ref + got):10d}  {p:.3g}", flush=True)
    print("* negative control: its law differs from the target's, so its p must be small")


if __name__ == "__main__":
    main()
