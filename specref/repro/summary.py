"""Table-2 summaries of cost-quality curves (THEORY.md section 8), with explicit tie and interpolation rules.

A method's curve is its set of (cost, quality) points over the swept alphas, each averaged over seeds. The
paper's Table 2 reads two numbers off each curve; we define them exactly:

1. **Frontier.** Sort the points by cost ascending, then quality descending; walk them and keep a point
   only if its quality is STRICTLY higher than every point kept before it. This drops dominated points,
   keeps the highest quality among equal costs and the lowest cost among equal qualities. The frontier is
   strictly increasing in both cost and quality.
2. **Interpolation** (default on). Between consecutive frontier points the curve is the straight segment.
   Why that is fair: any point on it is reached, in expectation, by running one of the two configurations
   per example at random, since cost and per-example metrics (accuracy, ROUGE) are averages (corpus BLEU
   only approximately). The segment lies below the convex hull, so it never overstates the curve. With
   ``interpolate=False`` only measured points count.
3. **(a) cost to match** the target's quality ``y_T``: the smallest cost at which the frontier reaches
   ``y_T - tol`` (``>=``: equality matches). Reported as ``reduction = 1 - cost / ref_cost`` and
   ``speedup = ref_cost / cost``; for the latency axes ``ref_cost`` is 1.0, the target's own latency. NaN
   when the curve never reaches ``y_T - tol``. A reduction below 0 means it matches only above the target's
   latency.
4. **(b) best quality within** ``ref_cost``: the frontier's quality at cost ``ref_cost`` (``<=``: equal cost
   does not exceed); beyond the last frontier point the quality stays at its level. NaN when even the
   cheapest point costs more than ``ref_cost``.

``ref_cost`` is the target-only row's value on the cost axis when that is finite (1.0 for both latencies, 1.0
target calls per token); for ``rejection_rate``, where target-only has no drafts, it is SpecDecode's, the
lossless reference whose quality equals the target's in expectation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COST_AXES",
    "CurvePoint",
    "MethodSummary",
    "Summary",
    "cost_to_match",
    "frontier",
    "quality_within",
    "summarize",
    "average_seeds",
]

#: Cost columns a summary can be read on; the first is the default (deterministic across reruns).
COST_AXES = ("latency_model", "latency_wall", "target_calls_per_token", "rejection_rate")

#: Columns that fix a curve's setting (a summary is computed per distinct value of these).
CONTEXT_COLUMNS = ("task", "pair", "temperature", "gamma", "top_p", "split", "n_examples", "max_new_tokens")


@dataclass(frozen=True)
class CurvePoint:
    """One operating point of a method: its cost, its quality and what produced it."""

    cost: float
    quality: float
    alpha: float | None = None
    options: str = ""


def _finite(x: float) -> bool:
    return x is not None and not math.isnan(x) and not math.isinf(x)


def frontier(points: Iterable[CurvePoint]) -> list[CurvePoint]:
    """Non-dominated points, cost ascending, quality strictly increasing (rule 1 of the module docstring)."""
    pts = [p for p in points if _finite(p.cost) and _finite(p.quality)]
    pts.sort(key=lambda p: (p.cost, -p.quality))
    out: list[CurvePoint] = []
    for p in pts:
        if not out or p.quality > out[-1].quality:
            out.append(p)
    return out


def cost_to_match(front: Sequence[CurvePoint], level: float, interpolate: bool = True) -> float:
    """Smallest cost at which the frontier's quality is ``>= level``; NaN if it never gets there."""
    for i, p in enumerate(front):
        if p.quality >= level:
            if i == 0 or not interpolate:
                return p.cost
            a = front[i - 1]
            return a.cost + (level - a.quality) * (p.cost - a.cost) / (p.quality - a.quality)
    return math.nan


def quality_within(front: Sequence[CurvePoint], budget: float, interpolate: bool = True) -> float:
    """Best frontier quality at cost ``<= budget``; NaN if the cheapest point costs more."""
    if not front or front[0].cost > budget:
        return math.nan
    best = front[0].quality
    for i, p in enumerate(front):
        if p.cost <= budget:
            best = p.quality
            continue
        if interpolate:
            a = front[i - 1]
            best = a.quality + (budget - a.cost) * (p.quality - a.quality) / (p.cost - a.cost)
        break
    return best


@dataclass(frozen=True)
class MethodSummary:
    """Table-2 numbers of one method on one cost axis."""

    label: str
    method: str
    points: int
    cost_at_match: float
    reduction: float
    speedup: float
    best_quality: float
    best_delta: float
    frontier: tuple[CurvePoint, ...] = field(repr=False)


@dataclass(frozen=True)
class Summary:
    """Table-2 summary of one setting (context) on one cost axis."""

    context: dict[str, Any]
    axis: str
    metric: str
    target_quality: float
    draft_quality: float
    ref_cost: float
    seeds: int
    tol: float
    interpolate: bool
    methods: list[MethodSummary]


def _group_key(row: Mapping[str, Any], cols: Sequence[str]) -> tuple:
    return tuple(row.get(c) for c in cols)


def average_seeds(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per point with numeric measurements averaged over seeds (``seeds`` says how many).

    Seeds are trials of the same configuration (the paper averages 3). Rows must agree on everything but
    ``seed`` and the measurements; non-numeric columns are taken from the first row.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    ident = (*CONTEXT_COLUMNS, "method", "alpha", "options")
    for r in rows:
        groups[_group_key(r, ident)].append(r)
    out = []
    for members in groups.values():
        merged = dict(members[0])
        for col, val in members[0].items():
            if col in ident or col == "seed" or isinstance(val, str) or val is None:
                continue
            vals = [m[col] for m in members if m.get(col) is not None and not math.isnan(float(m[col]))]
            merged[col] = sum(float(v) for v in vals) / len(vals) if vals else math.nan
        merged["seeds"] = len({m.get("seed") for m in members})
        out.append(merged)
    return out


def _ref_cost(avg: Sequence[Mapping[str, Any]], axis: str) -> float:
    for method in ("target", "specdecode"):
        vals = [float(r[axis]) for r in avg if r["method"] == method and _finite(float(r[axis]))]
        if vals:
            return vals[0]
    return 1.0 if axis.startswith("latency") else math.nan


def summarize(
    rows: Iterable[Mapping[str, Any]],
    axis: str = "latency_model",
    tol: float = 0.0,
    interpolate: bool = True,
    exclude: Sequence[str] = ("target", "draft"),
) -> list[Summary]:
    """Table-2 summaries, one per setting found in ``rows`` (dicts with the store's columns).

    ``tol`` lowers the bar of (a) to ``y_T - tol`` (0: strictly the target's measured quality). Methods in
    ``exclude`` are references, reported in the header rather than as rows.
    """
    if axis not in COST_AXES:
        raise ValueError(f"unknown cost axis {axis!r}; choose one of {COST_AXES}")
    if tol < 0:
        raise ValueError("tol must be >= 0")
    by_context: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in average_seeds(rows):
        by_context[_group_key(r, CONTEXT_COLUMNS)].append(r)
    summaries = []
    for ctx, avg in by_context.items():
        target = [r for r in avg if r["method"] == "target"]
        if not target:
            continue  # no reference in this setting: nothing to summarise against
        y_t = float(target[0]["quality"])
        draft = [float(r["quality"]) for r in avg if r["method"] == "draft"]
        ref = _ref_cost(avg, axis)
        labels: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for r in avg:
            if r["method"] not in exclude:
                labels[r["label"]].append(r)
        methods = []
        for label, members in labels.items():
            front = frontier(
                CurvePoint(float(r[axis]), float(r["quality"]), r.get("alpha"), r.get("options") or "")
                for r in members
            )
            c = cost_to_match(front, y_t - tol, interpolate)
            best = quality_within(front, ref, interpolate) if _finite(ref) else math.nan
            methods.append(
                MethodSummary(
                    label=label,
                    method=str(members[0]["method"]),
                    points=len(members),
                    cost_at_match=c,
                    reduction=1 - c / ref if _finite(c) and _finite(ref) and ref > 0 else math.nan,
                    speedup=ref / c if _finite(c) and _finite(ref) and c > 0 and ref > 0 else math.nan,
                    best_quality=best,
                    best_delta=best - y_t if _finite(best) else math.nan,
                    frontier=tuple(front),
                )
            )
        summaries.append(
            Summary(
                context=dict(zip(CONTEXT_COLUMNS, ctx)),
                axis=axis,
                metric=str(target[0].get("metric", "quality")),
                target_quality=y_t,
                draft_quality=draft[0] if draft else math.nan,
                ref_cost=ref,
                seeds=int(target[0].get("seeds", 1)),
                tol=tol,
                interpolate=interpolate,
                methods=methods,
            )
        )
    return summaries
