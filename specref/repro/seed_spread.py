"""Table-2 numbers with their seed-to-seed spread, and paired comparisons of two methods over seeds.

:func:`specref.repro.summary.summarize` reads (a) the speed-up at the target's quality and (b) the best quality
within the target's cost off each method's seed-averaged curve. A verdict such as "the learned rule beats OPT"
needs the noise it was judged against, so here the same two numbers are also read off each seed's own curve:

* every seed's rows are summarised alone, with the match level ``y_T(seed) - z * noise`` (the same band width
  as the averaged summary, so a seed is judged at its own target quality) and (b) as the gain
  ``best_quality - y_T(seed)`` over that seed's target, which cancels the seed's common luck;
* ``*_spread`` is the sample standard deviation over seeds of those per-seed numbers (NaN for one seed);
* :func:`compare` pairs two methods seed by seed: ``diff = mean_s (x_a(s) - x_b(s))`` with ``diff_spread``
  the sample SD of the per-seed differences, and a verdict that says "better" only when the mean difference
  exceeds the larger of the two methods' seed spreads and every seed agrees in sign, "worse" symmetrically,
  "within noise" otherwise, and "not judged" with fewer than 2 seeds where both are finite.

Pure stdlib over the store's row dicts, like :mod:`specref.repro.summary`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from specref.repro.summary import Z, summarize

__all__ = ["Comparison", "SeedSpread", "compare", "seed_spread"]


@dataclass(frozen=True)
class SeedSpread:
    """One method's Table-2 numbers on one cost axis: seed-averaged, per seed, and their spread.

    Attributes:
        label, method: as in :class:`specref.repro.summary.MethodSummary`.
        seeds: the seeds, in order.
        speedup: (a) off the seed-averaged curve (NaN: never reaches the target's quality).
        speedup_per_seed: (a) off each seed's curve.
        speedup_spread: sample SD of the finite ``speedup_per_seed`` (NaN with fewer than 2).
        best_delta: (b) minus the target's quality, off the seed-averaged curve.
        best_delta_per_seed, best_delta_spread: the same per seed (against that seed's target) and its SD.
        best_quality: (b) off the seed-averaged curve.
    """

    label: str
    method: str
    seeds: tuple[Any, ...]
    speedup: float
    speedup_per_seed: tuple[float, ...]
    speedup_spread: float
    best_quality: float
    best_delta: float
    best_delta_per_seed: tuple[float, ...]
    best_delta_spread: float


def _sd(xs: Sequence[float]) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return statistics.stdev(xs) if len(xs) >= 2 else math.nan


def seed_spread(
    rows: Iterable[Mapping[str, Any]],  # one setting's rows (every seed), the store's columns
    axis: str = "latency_model",
    z: float = Z,
    interpolate: bool = True,
) -> tuple[Any, list[SeedSpread]]:
    """``(summary, spreads)``: the seed-averaged :class:`~specref.repro.summary.Summary` of the one setting in
    ``rows`` and every method's :class:`SeedSpread`. A ValueError when ``rows`` hold other than one setting
    or no target-only rows (nothing to be judged against)."""
    rows = list(rows)
    (avg,) = _one(summarize(rows, axis=axis, z=z, interpolate=interpolate))
    seeds = tuple(sorted({r.get("seed") for r in rows}, key=lambda s: (str(type(s)), s)))
    # the band's width from every seed; each seed is judged at its own target quality (None: not judged)
    tol = z * avg.noise.se if avg.match_rule == "noise" and math.isfinite(avg.noise.se) else None
    per_seed = []  # one {label: MethodSummary} per seed
    for s in seeds:
        (one,) = _one(summarize([r for r in rows if r.get("seed") == s], axis=axis, z=z, interpolate=interpolate,
                                tol=tol))
        per_seed.append({m.label: m for m in one.methods})
    out = []
    for m in avg.methods:
        sp = tuple(d[m.label].speedup if m.label in d and tol is not None else math.nan for d in per_seed)
        bd = tuple(d[m.label].best_delta if m.label in d else math.nan for d in per_seed)
        out.append(SeedSpread(m.label, m.method, seeds, m.speedup, sp, _sd(sp), m.best_quality, m.best_delta, bd,
                              _sd(bd)))
    return avg, out


def _one(summaries: list[Any]) -> list[Any]:
    if len(summaries) != 1:
        raise ValueError(f"seed_spread needs the rows of exactly one setting with a target-only row, got "
                         f"{len(summaries)} settings")
    return summaries


@dataclass(frozen=True)
class Comparison:
    """Method ``a`` against method ``b`` on one Table-2 number, paired by seed (module docstring)."""

    a: str
    b: str
    quantity: str
    diff: float
    diff_spread: float
    verdict: str


def compare(a: SeedSpread, b: SeedSpread, quantity: str) -> Comparison:
    """``a`` against ``b`` on ``"speedup"`` or ``"best_delta"``, paired by seed."""
    if quantity not in ("speedup", "best_delta"):
        raise ValueError(f"quantity must be 'speedup' or 'best_delta', got {quantity!r}")
    if a.seeds != b.seeds:
        raise ValueError(f"paired comparison needs the same seeds, got {a.seeds} and {b.seeds}")
    xa, xb = getattr(a, f"{quantity}_per_seed"), getattr(b, f"{quantity}_per_seed")
    diffs = [x - y for x, y in zip(xa, xb) if math.isfinite(x) and math.isfinite(y)]
    if len(diffs) < 2:
        return Comparison(a.label, b.label, quantity, math.nan, math.nan, "not judged")
    mean = sum(diffs) / len(diffs)
    spread = max(getattr(a, f"{quantity}_spread"), getattr(b, f"{quantity}_spread"))
    if mean > spread and all(d > 0 for d in diffs):
        verdict = "better"
    elif -mean > spread and all(d < 0 for d in diffs):
        verdict = "worse"
    else:
        verdict = "within noise"
    return Comparison(a.label, b.label, quantity, mean, statistics.stdev(diffs), verdict)
