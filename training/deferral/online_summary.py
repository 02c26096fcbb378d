"""Online verdicts of learned deferral: every rule's Table-2 numbers with their seed spread, and the learned
rule against the best fixed rule, paired by seed (specref.repro.seed_spread).

    python -m training.deferral.online_summary RUN_DIR [RUN_DIR ...] --out results/learned/online_summary.csv

Each ``RUN_DIR`` is a ``specref reproduce --out`` folder (one subfolder with a ``points.csv`` per pair); the
rows of a pair's folders in several run folders are merged (the first run folder's row wins where two decoded
the same point: the target and draft rows every run has), so a sweep split over processes is summarised as one.
One CSV row per (pair, setting, method); the learned rule's rows also carry, for each of the two numbers, the best
fixed rule on the seed-averaged curve, the mean paired difference, its spread and the verdict ("better" only
when the mean difference exceeds both methods' seed spreads and every seed agrees). A Markdown twin is
written next to the CSV.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections import defaultdict
from pathlib import Path

from specref.atomic import write_atomic
from specref.repro.seed_spread import compare, seed_spread
from specref.repro.store import PointStore, row_key
from specref.repro.summary import CONTEXT_COLUMNS

#: the paper's plug-in rules and cascades a learned rule has to beat (whichever of them a run decoded)
FIXED = ("chow", "diff", "opt", "token_v1", "token_v2", "token_v3", "lossy", "token_cascade", "seq_cascade", "bild")
COLUMNS = (
    "pair", "temperature", "gamma", "n_examples", "rule", "label", "seeds", "speedup_at_target_quality",
    "speedup_spread", "speedup_per_seed", "best_quality_in_budget", "best_quality_spread", "best_delta",
    "best_delta_per_seed", "cost_axis", "best_fixed_by_speedup", "speedup_vs_best_fixed",
    "speedup_vs_best_fixed_spread", "speedup_verdict", "best_fixed_by_quality", "quality_vs_best_fixed",
    "quality_vs_best_fixed_spread", "quality_verdict", "match_level", "noise_se",
)


def _f(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def _best(spreads, key):
    fixed = [s for s in spreads if s.method in FIXED and math.isfinite(getattr(s, key))]
    return max(fixed, key=lambda s: getattr(s, key)) if fixed else None


def merged_rows(points: list[Path]) -> list[dict]:
    """The rows of several ``points.csv`` of one pair, each point once (the first file's copy)."""
    seen, rows = set(), []
    for path in points:
        for r in PointStore(path).read():
            key = row_key(r)
            if key not in seen:
                seen.add(key)
                rows.append(r)
    return rows


def summary_rows(points: Path | list[Path], axis: str = "latency_model") -> list[dict[str, str]]:
    """The CSV rows of one pair's ``points.csv`` (or several, merged): one per (setting, method)."""
    rows = merged_rows(points if isinstance(points, list) else [points])
    by_setting = defaultdict(list)
    for r in rows:
        by_setting[tuple(r.get(c) for c in CONTEXT_COLUMNS)].append(r)
    out = []
    for ctx_rows in by_setting.values():
        if not any(r["method"] == "target" for r in ctx_rows):
            continue
        avg, spreads = seed_spread(ctx_rows, axis=axis)
        ctx = avg.context
        best_speed, best_quality = _best(spreads, "speedup"), _best(spreads, "best_delta")
        for s in spreads:
            row = {
                "pair": ctx["pair"], "temperature": _f(ctx["temperature"]), "gamma": _f(ctx["gamma"]),
                "n_examples": _f(ctx["n_examples"]), "rule": s.method, "label": s.label, "seeds": len(s.seeds),
                "speedup_at_target_quality": _f(s.speedup), "speedup_spread": _f(s.speedup_spread),
                "speedup_per_seed": " ".join(_f(x) or "nan" for x in s.speedup_per_seed),
                "best_quality_in_budget": _f(s.best_quality), "best_quality_spread": _f(s.best_delta_spread),
                "best_delta": _f(s.best_delta),
                "best_delta_per_seed": " ".join(_f(x) or "nan" for x in s.best_delta_per_seed),
                "cost_axis": axis, "match_level": _f(avg.match_level), "noise_se": _f(avg.noise.se),
            }
            if s.method.startswith("learned"):  # the unnamed head (learned) and named ones (learned_NAME)
                pairs = ((best_speed, "speedup", "speedup"), (best_quality, "best_delta", "quality"))
                for best, quantity, name in pairs:
                    if best is None:  # none decoded, or none reaches the target's quality / fits its budget
                        row[f"{name}_verdict"] = "no fixed rule with a value"
                        continue
                    c = compare(s, best, quantity)
                    row.update({f"best_fixed_by_{name}": best.method, f"{name}_vs_best_fixed": _f(c.diff),
                                f"{name}_vs_best_fixed_spread": _f(c.diff_spread), f"{name}_verdict": c.verdict})
            out.append({k: str(row.get(k, "")) for k in COLUMNS})
    return out


def _vs(r: dict[str, str], name: str, by: str) -> str:
    if not r[f"best_fixed_by_{by}"]:
        return r[f"{name}_verdict"]
    return (f"{r[f'{name}_vs_best_fixed'] or 'n/a'} +/- {r[f'{name}_vs_best_fixed_spread'] or 'n/a'} vs "
            f"{r[f'best_fixed_by_{by}']}: {r[f'{name}_verdict']}")


def markdown(rows: list[dict[str, str]]) -> str:
    head = ("| pair | T | rule | seeds | speed-up at target quality (seed SD) | best quality in budget "
            "(gain SD) | vs best fixed: speed-up | vs best fixed: quality |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        vs_s, vs_q = (_vs(r, "speedup", "speedup"), _vs(r, "quality", "quality"))
        lines.append(f"| {r['pair']} | {r['temperature']} | {r['label']} | {r['seeds']} | "
                     f"{r['speedup_at_target_quality'] or 'never'} ({r['speedup_spread'] or '-'}) | "
                     f"{r['best_quality_in_budget'] or '-'} ({r['best_quality_spread'] or '-'}) | {vs_s} | {vs_q} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.deferral.online_summary", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="specref reproduce --out folders")
    ap.add_argument("--out", type=Path, required=True, help="the CSV to write (a .md twin beside it)")
    ap.add_argument("--axis", default="latency_model", choices=("latency_model", "latency_wall", "rejection_rate"),
                    help="cost axis (default: latency_model, deterministic)")
    args = ap.parse_args(argv)
    by_pair: dict[str, list[Path]] = defaultdict(list)
    for run in args.runs:
        for p in sorted(run.glob("*/points.csv")):
            by_pair[p.parent.name].append(p)
    if not by_pair:
        print(f"online_summary: error: no */points.csv under {', '.join(map(str, args.runs))}", file=sys.stderr)
        return 2
    rows = [r for pair in sorted(by_pair) for r in summary_rows(by_pair[pair], args.axis)]
    points = [p for ps in by_pair.values() for p in ps]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, buf.getvalue().encode())
    write_atomic(args.out.with_suffix(".md"), markdown(rows).encode())
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} ({len(rows)} rows from {len(points)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
