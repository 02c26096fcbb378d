"""Fit a scikit-learn baseline head on logs and export it like any head (safetensors + JSON).

    python -m training.deferral.baselines --logs runs/logs/train --kind cascade --model logreg --out runs/lr-head

Uses the same train/validation split as the data module (hash of the example id) and prints validation
log loss, ECE and AUC per output.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from specref.heads import FeatureSpec, fit_sklearn_head, save, training_arrays
from specref.logs.split import holdout_mask
from training.deferral.data import load_summary, select
from training.deferral.metrics import auc, ece


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fit a scikit-learn deferral head on logs")
    parser.add_argument("--logs", nargs="+", required=True, help="log directories to train on")
    parser.add_argument("--kind", choices=("cascade", "token"), default="cascade")
    parser.add_argument("--model", choices=("logreg", "gbt"), default="logreg")
    parser.add_argument("--loss", choices=("argmax", "sampled"), default="argmax")
    parser.add_argument("--truth", choices=("reference", "target"), default="reference")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--max-rows", type=int, default=200000, help="cap on training rows (gbt is slow)")
    parser.add_argument("--params", default="{}", help="JSON dict of estimator parameters")
    parser.add_argument("--out", required=True, help="output directory of the exported head")
    args = parser.parse_args(argv)

    summary, layout = load_summary(args.logs)
    spec = FeatureSpec(kind=args.kind, k=args.k, candidates=args.candidates if args.kind == "token" else 0)
    if layout.top_k < spec.top_k:
        print(f"error: the head needs top-{spec.top_k} lists, the logs keep top-{layout.top_k}", file=sys.stderr)
        return 2
    held = holdout_mask(summary["example_id"], args.val_fraction, args.split_seed)
    train, val = select(summary, ~held), select(summary, held)
    fitted = fit_sklearn_head(train, spec, args.model, loss=args.loss, truth=args.truth, max_rows=args.max_rows,
                              seed=args.split_seed, **json.loads(args.params))
    head = fitted.to_torch()
    head.info.update({"logs": list(args.logs), "val_fraction": args.val_fraction, "split_seed": args.split_seed})
    save(head, args.out)
    if int(val["q_max"].shape[0]):
        x, y = training_arrays(val, spec, args.loss, args.truth)
        with torch.no_grad():
            prob = head.predict(x) if spec.kind == "cascade" else head.predict(x.unsqueeze(-2)).reshape(-1, 1)
        for o in range(y.shape[1]):
            p = prob[:, o].double().clamp(1e-7, 1 - 1e-7)
            t = y[:, o].double()
            nll = float(-(t * p.log() + (1 - t) * (1 - p).log()).mean())
            a = auc(p, t)
            shown = "n/a" if math.isnan(a) else f"{a:.4f}"
            print(f"output {o}: val log loss {nll:.4f}  ECE {ece(p, t):.4f}  AUC {shown}")
    print(f"exported {args.model} head to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
