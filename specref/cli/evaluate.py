"""``specref evaluate``: offline L_spec of deferral rules and learned heads on held-out logs.

    specref evaluate --logs runs/logs/translation-val --head cascade=runs/deferral/cascade/head --out runs/eval
    specref evaluate --logs runs/logs/translation-train --holdout 0.1 --head runs/head --out runs/eval

Writes ``offline_eval.csv`` (every method x alpha x loss) and ``offline_eval_<loss>.png`` into ``--out`` and
prints L_spec per method and alpha. ``--holdout F`` evaluates only the examples a training run with
``val_fraction=F`` (and the same ``--split-seed``) held out.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from specref.cli._args import float_tuple


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("evaluate", help="offline L_spec of deferral rules and learned heads on logs",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--logs", nargs="+", required=True, help="log directories (held-out data)")
    p.add_argument("--head", action="append", default=[], metavar="[NAME=]PATH",
                   help="a saved head to evaluate (repeatable); NAME defaults to the folder name")
    p.add_argument("--alphas", type=float_tuple, help="alpha grid (default: the logs' token-rule grid)")
    p.add_argument("--holdout", type=float, help="evaluate only the examples held out at this fraction")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--methods", help="comma-separated baselines (default: all of "
                   "draft,specdecode,chow,diff,opt,token_v1,token_v2,token_v3,oracle)")
    p.add_argument("--plot-loss", choices=("argmax", "sampled"), default="sampled")
    p.add_argument("--out", required=True, help="output folder for the CSV and the plot")
    p.set_defaults(func=run)


def _heads(specs: list[str]) -> dict[str, Any]:
    from specref import heads

    out: dict[str, Any] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name or spec, spec
        if name in out:
            raise ValueError(f"two heads are named {name!r}; use NAME=PATH")
        out[name] = heads.load(path)
    return out


def run(args: argparse.Namespace) -> int:
    from specref.logs.evaluate import evaluate, plot, write_csv
    from specref.logs.split import holdout_mask
    from specref.logs.store import read_summary

    summary, layout = read_summary(args.logs)
    if args.holdout is not None:
        idx = holdout_mask(summary["example_id"], args.holdout, args.split_seed).nonzero().squeeze(-1)
        if not len(idx):
            raise ValueError(f"no examples are held out at fraction {args.holdout}")
        summary = {k: ([v[i] for i in idx.tolist()] if isinstance(v, list) else v[idx]) for k, v in summary.items()}
    alphas = args.alphas or layout.alphas
    if not alphas:
        raise ValueError("these logs have no alpha grid; pass --alphas")
    methods = args.methods.split(",") if args.methods else None
    rows = evaluate(summary, alphas, heads=_heads(args.head), log_alphas=layout.alphas,
                    vocab_size=layout.vocab_size, methods=methods)
    out = Path(args.out)
    csv_path = write_csv(rows, out / "offline_eval.csv")
    png_path = plot(rows, out / f"offline_eval_{args.plot_loss}.png", loss=args.plot_loss)
    _print_table(rows, args.plot_loss)
    n = rows[0]["rows"] if rows else 0
    print(f"{n} positions; wrote {csv_path} and {png_path}")
    return 0


def _print_table(rows: list[dict[str, Any]], loss: str) -> None:
    picked = [r for r in rows if r["loss"] == loss]
    alphas = sorted({r["alpha"] for r in picked})
    methods = list(dict.fromkeys(r["method"] for r in picked))
    cell = {(r["method"], r["alpha"]): r["l_spec"] for r in picked}
    print(f"L_spec ({loss} 0-1 loss) by alpha")
    print(f"{'method':<14}" + "".join(f"{a:>9.3g}" for a in alphas))
    for m in methods:
        vals = [cell.get((m, a), math.nan) for a in alphas]
        print(f"{m:<14}" + "".join("      n/a" if math.isnan(v) else f"{v:>9.4f}" for v in vals))
