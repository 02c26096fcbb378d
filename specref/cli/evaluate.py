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
import sys
from pathlib import Path
from typing import Any

from specref.options import add_plugins, float_tuple

#: The baseline names (kept here so ``--help`` needs no torch; a test checks they equal the library's).
BASELINES = ("draft", "specdecode", "chow", "diff", "opt", "token_v1", "token_v2", "token_v3", "oracle")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("evaluate", help="offline L_spec of deferral rules and learned heads on logs",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--logs", nargs="+", required=True,
                   help="log directories (held-out data); each example must appear in only one of them")
    p.add_argument("--head", action="append", default=[], metavar="[NAME=]PATH",
                   help="a saved head to evaluate (repeatable); NAME defaults to the folder name and may not be "
                        "a baseline's name (default: no heads)")
    p.add_argument("--alphas", type=float_tuple,
                   help="comma-separated alphas, each finite and >= 0 (default: the logs' token-rule grid)")
    p.add_argument("--holdout", type=float, metavar="F",
                   help="evaluate only the examples a training run with val_fraction=F held out; F in (0, 1) "
                        "(default: every example)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the --holdout split (default: 0)")
    p.add_argument("--methods", help=f"comma-separated baselines, or rules registered by a --plugin (default: all of "
                                     f"{','.join(BASELINES)})")
    add_plugins(p)
    p.add_argument("--plot-loss", choices=("argmax", "sampled"), default="sampled",
                   help="the loss the printed table and the plot show (default: sampled)")
    p.add_argument("--out", required=True, help="output folder for the CSV and the plot")
    p.set_defaults(func=run)


def _head_specs(specs: list[str]) -> dict[str, str]:
    """``[NAME=]PATH`` -> {name: path}, refusing duplicate, empty and baseline names before anything loads."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name or spec, spec
        if not name or not path:
            raise ValueError(f"--head {spec!r}: expected [NAME=]PATH with a non-empty NAME and PATH")
        if name in BASELINES:
            raise ValueError(f"--head {spec!r}: a head may not be named {name!r}, it would replace that baseline's "
                             f"rows; use NAME=PATH with a NAME not in {', '.join(BASELINES)}")
        if name in out:
            raise ValueError(f"two heads are named {name!r}; use NAME=PATH")
        out[name] = path
    return out


def _check_args(args: argparse.Namespace) -> None:
    """Everything that can be refused without reading a file, refused before anything is read or written."""
    from specref.logs.evaluate import check_alphas, check_methods

    if args.holdout is not None and not (math.isfinite(args.holdout) and 0 < args.holdout < 1):
        raise ValueError(f"--holdout must be a fraction in (0, 1), got {args.holdout!r}")
    if args.methods is not None:
        check_methods(args.methods.split(","))
    if args.alphas is not None:
        check_alphas(args.alphas)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out!r} exists and is not a folder; give a folder for the CSV and plot")


def run(args: argparse.Namespace) -> int:
    from specref import heads as heads_mod
    from specref.logs.evaluate import evaluate, plot, write_csv
    from specref.logs.split import holdout_mask
    from specref.logs.store import read_summary

    _check_args(args)
    specs = _head_specs(args.head)
    summary, layout = read_summary(args.logs)
    heads = {name: heads_mod.load(path) for name, path in specs.items()}
    if args.holdout is not None:
        idx = holdout_mask(summary["example_id"], args.holdout, args.split_seed).nonzero().squeeze(-1)
        if not len(idx):
            raise ValueError(f"no examples are held out at fraction {args.holdout}")
        summary = {k: ([v[i] for i in idx.tolist()] if isinstance(v, list) else v[idx]) for k, v in summary.items()}
    alphas = args.alphas or layout.alphas
    if not alphas:
        raise ValueError("these logs have no alpha grid; pass --alphas")
    methods = args.methods.split(",") if args.methods else None
    rows = evaluate(summary, alphas, heads=heads, log_alphas=layout.alphas,
                    vocab_size=layout.vocab_size, methods=methods)
    if not rows:
        raise ValueError("nothing to evaluate: no method produced a row at these alphas")
    above = [a for a in alphas if a > 1]
    if above:
        print(f"note: at alpha > 1 ({', '.join(f'{a:g}' for a in above)}) chow, diff, opt and the token "
              "rules never defer (they keep the draft); only the oracle and learned heads can still defer there",
              file=sys.stderr)
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
