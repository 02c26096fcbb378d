"""Small tables from `specref evaluate`'s offline_eval.csv and the online sweep (results/learned/README.md).

    python -m training.deferral.tables          # rewrites results/learned/<pair>/lspec_table.{md,csv}
                                                #       and results/learned/online/<pair>/online_table.md
    python -m training.deferral.tables DIR      # the same for another folder laid out like results/learned

Offline: for each cost weight lambda, (1) L_spec of every rule run at knob alpha = lambda (what
`specref evaluate` prints; for OPT, learned heads and the oracle this is the Lemma 4 plug-in prescription),
and (2) "tuned": the rule's best L_spec over its knob grid, min_a [quality_loss(a) + lambda * rejection(a)]
(the lower envelope of its quality-loss vs rejection curve; fairer to chow/diff/token_v* whose knob is not a
cost weight). Reads only committed CSVs; pure stdlib.
"""

import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

#: the committed learned-deferral results of this checkout (training/ sits beside results/)
RESULTS = Path(__file__).resolve().parents[2] / "results" / "learned"
LAMBDAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
ORDER = (
    "draft",
    "specdecode",
    "chow",
    "diff",
    "opt",
    "token_v1",
    "token_v2",
    "token_v3",
    "cascade_argmax",
    "cascade_sampled",
    "token",
    "oracle",
)


def offline(pair_dir: Path) -> None:
    rows = list(csv.DictReader(open(pair_dir / "offline_eval.csv")))
    by = defaultdict(dict)  # (method, loss) -> alpha -> row
    for r in rows:
        by[(r["method"], r["loss"])][round(float(r["alpha"]), 6)] = r
    methods = [m for m in ORDER if any(k[0] == m for k in by)] + sorted({k[0] for k in by} - set(ORDER))
    out_rows, md = [], []
    n = rows[0]["rows"]
    md.append(
        f"Held-out teacher-forced log: {n} positions. L_spec = quality loss + lambda x rejection rate, "
        "reference token as truth (lower is better).\n"
    )
    for loss in ("argmax", "sampled"):
        for mode in ("prescribed", "tuned"):
            md.append(
                f"\n**{loss} 0-1 loss, {mode}** "
                + ("(rule run at alpha = lambda)" if mode == "prescribed" else "(best over the rule's alpha grid)")
                + "\n"
            )
            md.append("| method | " + " | ".join(f"lambda={l:g}" for l in LAMBDAS) + " |")
            md.append("|---|" + "---|" * len(LAMBDAS))
            for m in methods:
                curve = by.get((m, loss), {})
                if not curve:
                    continue
                cells = []
                for lam in LAMBDAS:
                    if mode == "prescribed":
                        r = curve.get(round(lam, 6))
                        v = float(r["l_spec"]) if r else math.nan
                    else:
                        v = min(
                            (float(r["quality_loss"]) + lam * float(r["rejection_rate"]) for r in curve.values()),
                            default=math.nan,
                        )
                    cells.append(v)
                    out_rows.append({"method": m, "loss": loss, "mode": mode, "lambda": lam, "l_spec": v})
                min((c for c in cells), default=math.nan)
                md.append(f"| {m} | " + " | ".join("n/a" if math.isnan(c) else f"{c:.4f}" for c in cells) + " |")
    md.append("\n**Deferral / rejection rate at alpha** (argmax rows; rates do not depend on the loss)\n")
    alphas = (0.0, 0.1, 0.3, 0.5, 1.0)
    md.append("| method | " + " | ".join(f"alpha={a:g}" for a in alphas) + " |")
    md.append("|---|" + "---|" * len(alphas))
    for m in methods:
        curve = by.get((m, "argmax"), {})
        cells = []
        for a in alphas:
            r = curve.get(round(a, 6))
            cells.append("n/a" if r is None else f"{float(r['deferral_rate']):.3f} / {float(r['rejection_rate']):.3f}")
        md.append(f"| {m} | " + " | ".join(cells) + " |")
    (pair_dir / "lspec_table.md").write_text("\n".join(md) + "\n")
    compact(pair_dir, by)
    with open(pair_dir / "lspec_table.csv", "w", newline="") as h:
        w = csv.DictWriter(h, fieldnames=["method", "loss", "mode", "lambda", "l_spec"])
        w.writeheader()
        w.writerows(out_rows)


COMPACT_LAMBDAS = (0.05, 0.1, 0.2, 0.3, 0.5)
COMPACT = (
    "draft",
    "specdecode",
    "opt",
    "token_v3",
    "best fixed rule",
    "cascade_argmax",
    "cascade_sampled",
    "token",
    "oracle",
)
FIXED = ("chow", "diff", "opt", "token_v1", "token_v2", "token_v3")


def compact(pair_dir: Path, by) -> None:
    """The README's table: prescribed L_spec (rule at alpha = lambda) of the main contenders, both losses."""
    md = []
    for loss in ("sampled", "argmax"):
        md.append(
            f"\n{loss} 0-1 loss (rule at alpha = lambda; 'best fixed rule' = lowest of chow/diff/opt/token_v1-3 "
            "at that lambda)\n"
        )
        md.append("| rule | " + " | ".join(f"lambda={l:g}" for l in COMPACT_LAMBDAS) + " |")
        md.append("|---|" + "---|" * len(COMPACT_LAMBDAS))
        for m in COMPACT:
            cells = []
            for lam in COMPACT_LAMBDAS:
                if m == "best fixed rule":
                    cands = [
                        (float(by[(f, loss)][round(lam, 6)]["l_spec"]), f)
                        for f in FIXED
                        if round(lam, 6) in by.get((f, loss), {})
                    ]
                    v, name = min(cands)
                    cells.append(f"{v:.4f} ({name})")
                else:
                    r = by.get((m, loss), {}).get(round(lam, 6))
                    cells.append("n/a" if r is None else f"{float(r['l_spec']):.4f}")
            md.append(f"| {m} | " + " | ".join(cells) + " |")
    (pair_dir / "lspec_compact.md").write_text("\n".join(md).lstrip() + "\n")


def online(pair_dir: Path) -> None:
    pts = pair_dir / "points.csv"
    if not pts.exists():
        return
    rows = [
        r
        for r in csv.DictReader(open(pts))
        if r["method"] in ("target", "draft", "specdecode", "opt", "token_v3", "learned")
    ]
    md = [
        "| method | alpha | quality | latency (model) | latency (wall) | rejection rate | deferral rate "
        "| tokens/target call |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {"target": 0, "draft": 1, "specdecode": 2, "opt": 3, "token_v3": 4, "learned": 5}
    rows.sort(key=lambda r: (order[r["method"]], float(r["alpha"]) if r["alpha"] not in ("", "nan") else 0.0))
    for r in rows:

        def f(k, d=3, r=r):
            v = r.get(k, "")
            try:
                x = float(v)
            except ValueError:
                return "-"
            return "-" if math.isnan(x) else f"{x:.{d}f}"

        md.append(
            f"| {r['label']} | {r['alpha'] or '-'} | {f('quality', 2)} | {f('latency_model')} | {f('latency_wall')} | "
            f"{f('rejection_rate')} | {f('deferral_rate')} | {f('tokens_per_target_call', 2)} |"
        )
    (pair_dir / "online_table.md").write_text("\n".join(md) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0].startswith("-")):
        print("usage: python -m training.deferral.tables [DIR]  (default: results/learned of this checkout)",
              file=sys.stderr)
        return 2
    root = Path(args[0]) if args else RESULTS
    for d in sorted(root.iterdir()):
        if (d / "offline_eval.csv").exists():
            offline(d)
    for sub in ("online", "online-t0"):
        if (root / sub).is_dir():
            for d in sorted((root / sub).iterdir()):
                if d.is_dir():
                    online(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
