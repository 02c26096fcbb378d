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
   the match level (``>=``: equality matches). Reported as ``reduction = 1 - cost / ref_cost`` and
   ``speedup = ref_cost / cost``; for the latency axes ``ref_cost`` is 1.0, the target's own latency. NaN
   when the curve never reaches the level. A reduction below 0 means it matches only above the target's
   latency.

   **The match level is the target's noise band**: ``y_T - Z * noise`` with ``Z = 2`` (:data:`Z`), where
   ``noise`` is the standard error of the difference between a method's quality and the target's, estimated
   from rows that decode the target's law (target-only and SpecDecode; :func:`target_noise`), the first of:

   * ``k >= 2`` seeds: ``SD * sqrt(2 / k)``, ``SD`` the sample standard deviation over the seeds (the
     examples fixed, so this is decoding noise only) of the target's quality, pooled with SpecDecode's
     (variances averaged) when SpecDecode ran the same seeds, since both sample that law; ``sqrt(2 / k)``
     makes it the standard error of a difference of two ``k``-seed means;
   * one seed and a separate several-seed "noise run" on the same examples (``noise_rows``): that run's SD
     (as above) times ``sqrt(2)``;
   * one seed and a SpecDecode row with ``quality_diff_se``: that paired bootstrap standard error (the same
     resamples of the examples for both, :mod:`specref.repro.runner`) of SpecDecode's quality minus the
     target's: the spread between two decodes of the target's law on these examples, with the
     example-to-example variation cancelled;
   * one seed otherwise: ``sqrt(2) * SE_T``, ``SE_T`` the bootstrap standard error of the target's quality
     (``quality_se``). It also counts example-to-example variation, which a paired comparison cancels, so
     this band is on the wide side (on the zoo translation pair at 48 examples: 2.15 BLEU against a paired
     1.28);
   * neither bootstrap with fewer than :data:`MIN_BOOT_EXAMPLES` examples, nor rows written without the
     bootstrap columns: **not judged**, and (a) is NaN with ``match_rule == "not judged"``.

   Why ``Z = 2``: a method that samples exactly the target's law (SpecDecode) lands below ``y_T - 2 noise``
   about 2% of the time; a tighter band would report sampling noise as a quality loss, a wider one would
   call real losses matches. An explicit ``tol`` (``--match-tol``) replaces the band by ``y_T - tol``.
4. **(b) best quality within** ``ref_cost``: the frontier's quality at cost ``ref_cost`` (``<=``: equal cost
   does not exceed); beyond the last frontier point the quality stays at its level. NaN when even the
   cheapest point costs more than ``ref_cost``.

``ref_cost`` is the target-only row's value on the cost axis when that is finite (1.0 for both latencies, 1.0
target calls per token); for ``rejection_rate``, where target-only has no drafts, it is SpecDecode's, the
lossless reference whose quality equals the target's in expectation.

**Measured step costs** (:class:`StepCosts`): the modeled latency prices a draft step at ``c`` target steps
and a verification call (one target call scoring ``gamma + 1`` positions) at one target step. The rows also
let us measure both on the machine that decoded them, from counts and wall times only (no timing inside the
decoder): a draft step is ``cost_ratio_measured`` target steps (draft-only seconds per draft step over
target-only seconds per target step), and a verification call of SpecDecode costs
``(wall_s - draft_calls * t_draft) / target_calls`` seconds, reported in target-only steps. When these
exceed ``c`` and 1, wall-clock speed-ups fall below the modeled ones, and below 1 where the modeled gain is
small.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COST_AXES",
    "MIN_BOOT_EXAMPLES",
    "Z",
    "CurvePoint",
    "MethodSummary",
    "Noise",
    "StepCosts",
    "Summary",
    "cost_to_match",
    "frontier",
    "quality_within",
    "summarize",
    "average_seeds",
    "step_costs",
    "target_noise",
]

#: Cost columns a summary can be read on; the first is the default (deterministic across reruns).
COST_AXES = ("latency_model", "latency_wall", "target_calls_per_token", "rejection_rate")

#: Width of the noise band in standard errors (module docstring, rule 3).
Z = 2.0

#: Fewest examples at which one seed's bootstrap standard error is trusted. Why 30: below it the bootstrap
#: distribution of a corpus metric is lumpy (a few examples carry it) and its SD underestimates the spread
#: by more than sqrt((n - 1) / n); 30 is the usual floor for normal-approximation intervals.
MIN_BOOT_EXAMPLES = 30

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
class Noise:
    """The noise a setting's verdicts are judged against (module docstring, rule 3).

    Attributes:
        se: standard error of the difference between a method's quality and the target's; NaN when not
            judged.
        method: "seeds" (seed-to-seed spread), "paired bootstrap" (one seed: SpecDecode minus target on the
            same resamples), "bootstrap" (one seed: the target's resamples x sqrt(2)) or "" (not judged).
        detail: how ``se`` was obtained, in words (or why it could not be).
    """

    se: float
    method: str
    detail: str

    @property
    def judged(self) -> bool:
        return self.method != "" and _finite(self.se)

    def band(self, z: float = Z) -> float:
        """Half-width of the band: ``z * se``."""
        return z * self.se

    def text(self, z: float = Z) -> str:
        """One phrase for tables and claims: the band and where it comes from."""
        if not self.judged:
            return f"noise not judged ({self.detail})"
        return f"noise band +/-{self.band(z):.2f} = {z:g} x {self.se:.2f} ({self.detail})"


def _not_judged_reason(seeds: int, n_examples: Any, has_se: bool) -> str:
    n = "?" if n_examples is None else str(n_examples)
    if seeds < 2 and has_se:
        return f"needs >= 2 seeds or >= {MIN_BOOT_EXAMPLES} examples; has 1 seed and {n} examples"
    return (f"needs >= 2 seeds or a bootstrap over >= {MIN_BOOT_EXAMPLES} examples; has {seeds} seed and rows "
            "without quality_se (written before it was stored: re-decode to judge)")


def _by_seed(rows: Sequence[Mapping[str, Any]]) -> dict[Any, float] | None:
    """Quality per seed (first row of each seed); None when some seed's quality is missing."""
    out: dict[Any, float] = {}
    for r in rows:
        if r.get("seed") not in out:
            out[r.get("seed")] = _num(r.get("quality"))
    return out if all(_finite(v) for v in out.values()) else None


def _seed_sd(target_rows: Sequence[Mapping[str, Any]],
             specdecode_rows: Sequence[Mapping[str, Any]]) -> tuple[float, int, str] | None:
    """Seed-to-seed SD of one decode of the target's law, the number of seeds, and how it was obtained.

    Why pooled with SpecDecode: both sample the target's law, so when SpecDecode ran the same seeds the two
    variances are averaged: twice the data for an SD that a handful of seeds estimates poorly.
    """
    t = _by_seed(target_rows)
    if t is None or len(t) < 2:
        return None
    k = len(t)
    sd_t = statistics.stdev(t.values())
    sd_s = _by_seed(specdecode_rows)
    if sd_s is not None and set(sd_s) == set(t):
        sd_sp = statistics.stdev(sd_s.values())
        pooled = math.sqrt((sd_t**2 + sd_sp**2) / 2)
        return pooled, k, f"SD {pooled:.2f} pooled over target ({sd_t:.2f}) and SpecDecode ({sd_sp:.2f}), {k} seeds"
    return sd_t, k, f"target SD {sd_t:.2f} over {k} seeds"


def target_noise(target_rows: Sequence[Mapping[str, Any]],
                 specdecode_rows: Sequence[Mapping[str, Any]] = (),
                 noise_run_rows: Sequence[Mapping[str, Any]] = ()) -> Noise:
    """Noise of one setting from its target-only rows and SpecDecode rows, one per seed (module docstring,
    rule 3). ``noise_run_rows``: target-only and SpecDecode rows of a separate several-seed run on the SAME
    examples and setting, whose seed spread stands in for the table's own when the table has one seed."""
    by_seed: dict[Any, Mapping[str, Any]] = {}
    for r in target_rows:
        by_seed.setdefault(r.get("seed"), r)
    k = len(by_seed)
    own = _seed_sd(target_rows, specdecode_rows)
    if own is not None:
        sd, k, how = own
        return Noise(sd * math.sqrt(2 / k), "seeds", f"{how} x sqrt(2/{k})")
    if _by_seed(target_rows) is None and k:
        return Noise(math.nan, "", "target quality missing for some seed")
    extra = _seed_sd([r for r in noise_run_rows if r.get("method") == "target"],
                     [r for r in noise_run_rows if r.get("method") == "specdecode"])
    if k == 1 and extra is not None:
        sd, _, how = extra
        return Noise(sd * math.sqrt(2), "seeds", f"{how} of the noise run on the same examples x sqrt(2)")
    if k == 1:
        (row,) = by_seed.values()
        se = _num(row.get("quality_se"))
        n = row.get("n_examples")
        enough = n is not None and int(n) >= MIN_BOOT_EXAMPLES
        boot = row.get("n_boot")
        resamples = f", {int(boot)} resamples" if boot else ""
        paired = [_num(r.get("quality_diff_se")) for r in specdecode_rows if r.get("seed") == row.get("seed")]
        if enough and paired and _finite(paired[0]):
            return Noise(paired[0], "paired bootstrap",
                         f"paired bootstrap SE of SpecDecode minus target over {n} examples{resamples}")
        if _finite(se) and enough:
            return Noise(math.sqrt(2) * se, "bootstrap",
                         f"target bootstrap SE {se:.2f} over {n} examples{resamples} x sqrt(2)")
        return Noise(math.nan, "", _not_judged_reason(1, n, _finite(se)))
    return Noise(math.nan, "", "no target rows")


@dataclass(frozen=True)
class StepCosts:
    """The modeled and the measured step costs of one setting (module docstring, "Measured step costs").

    Attributes:
        c: draft/target step cost ratio of the modeled latency; ``c_source`` says where it came from.
        c_measured: draft-only seconds per draft step over target-only seconds per target step (NaN: not
            measured in any row of the setting).
        verify_measured: SpecDecode's seconds per verification call beyond its draft steps, in target-only
            steps (the modeled latency counts 1); NaN without a SpecDecode row and ``c_measured``, and NaN
            with ``verify_in_noise`` when the estimate comes out negative.
        device: where the rows were decoded.
        verify_in_noise: the measured draft steps alone take longer than SpecDecode's whole wall time, so the
            verification cost is below the timing noise (tiny models, a busy machine) and is not reported.
    """

    c: float
    c_source: str
    c_measured: float
    verify_measured: float
    device: str
    verify_in_noise: bool = False

    def text(self) -> str:
        c_src = f" ({self.c_source})" if self.c_source else ""
        if not _finite(self.c_measured):
            return f"modeled c = {_g(self.c)}{c_src}; step costs not measured on {self.device or 'this machine'}"
        verify = (f", and a SpecDecode verification call costs {self.verify_measured:.2f} target-only steps "
                  f"(modeled: 1)" if _finite(self.verify_measured) else
                  ", and a SpecDecode verification call's cost is below the timing noise (the measured draft "
                  "steps alone exceed its wall time)" if self.verify_in_noise else "")
        return (f"measured on {self.device or 'this machine'}: a draft step costs {self.c_measured:.3f} target "
                f"steps (modeled c = {_g(self.c)}{c_src}){verify}; wall-clock ratios follow the measured costs, "
                "so where these exceed the modeled ones a modeled speed-up above 1 can be a wall-clock one below 1")


def _g(x: float) -> str:
    return "n/a" if not _finite(x) else f"{x:.3g}"


def _num(x: Any) -> float:
    try:
        return math.nan if x is None or x == "" else float(x)
    except (TypeError, ValueError):
        return math.nan


def _mean(vals: Iterable[Any]) -> float:
    xs = [v for v in (_num(x) for x in vals) if _finite(v)]
    return sum(xs) / len(xs) if xs else math.nan


def step_costs(avg: Sequence[Mapping[str, Any]]) -> StepCosts:
    """Modeled and measured step costs from one setting's seed-averaged rows."""
    c = _mean(r.get("cost_ratio") for r in avg)
    source = next((str(r["cost_ratio_source"]) for r in avg if r.get("cost_ratio_source")), "")
    c_meas = _mean(r.get("cost_ratio_measured") for r in avg)
    device = next((str(r["device"]) for r in avg if r.get("device")), "")
    verify = math.nan
    for r in avg:
        if r.get("method") != "specdecode":
            continue
        t_target = _num(r.get("baseline_wall_s")) / _num(r.get("baseline_target_calls") or math.nan)
        wall, calls, draft_calls = _num(r.get("wall_s")), _num(r.get("target_calls")), _num(r.get("draft_calls"))
        if _finite(t_target) and t_target > 0 and _finite(c_meas) and calls and _finite(calls):
            verify = (wall - draft_calls * c_meas * t_target) / calls / t_target
        break
    if verify < 0:  # a negative cost is noise, never a measurement
        return StepCosts(c, source, c_meas, math.nan, device, verify_in_noise=True)
    return StepCosts(c, source, c_meas, verify, device)


@dataclass(frozen=True)
class Summary:
    """Table-2 summary of one setting (context) on one cost axis.

    ``match_rule`` says how (a) was read: "noise" (``y_T - z * noise.se``), "tol" (``y_T - tol``, given
    explicitly) or "not judged" (no noise estimate: every ``cost_at_match`` is NaN). ``match_level`` is the
    quality the frontier had to reach.
    """

    context: dict[str, Any]
    axis: str
    metric: str
    target_quality: float
    draft_quality: float
    ref_cost: float
    seeds: int
    tol: float | None
    interpolate: bool
    methods: list[MethodSummary]
    noise: Noise = field(default_factory=lambda: Noise(math.nan, "", "not computed"))
    z: float = Z
    match_rule: str = "noise"
    match_level: float = math.nan
    costs: StepCosts | None = None

    @property
    def judged(self) -> bool:
        """True when (a) was read at a stated level (noise band or explicit tolerance)."""
        return self.match_rule != "not judged"


def _group_key(row: Mapping[str, Any], cols: Sequence[str]) -> tuple:
    return tuple(row.get(c) for c in cols)


def average_seeds(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per point with numeric measurements averaged over seeds (``seeds`` says how many, and
    ``quality_seed_se`` is the standard error of the mean quality over them, NaN for one seed).

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
        # standard error of the seed mean (error bars); NaN with one seed
        qs = [float(m["quality"]) for m in members if _finite(_num(m.get("quality")))]
        merged["quality_seed_se"] = statistics.stdev(qs) / math.sqrt(len(qs)) if len(qs) >= 2 else math.nan
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
    tol: float | None = None,
    interpolate: bool = True,
    exclude: Sequence[str] = ("target", "draft"),
    z: float = Z,
    noise_rows: Iterable[Mapping[str, Any]] = (),
) -> list[Summary]:
    """Table-2 summaries, one per setting found in ``rows`` (dicts with the store's columns).

    (a) is read at the target's noise band ``y_T - z * noise`` (module docstring, rule 3) unless ``tol`` is
    given: then at ``y_T - tol`` (0: strictly the target's measured quality), as ``--match-tol`` asks.
    Methods in ``exclude`` are references, reported in the header rather than as rows. ``noise_rows`` are
    rows of a separate several-seed run on the same examples (a "noise run"); only their target-only and
    SpecDecode rows are read, and only for a setting whose own rows have one seed (:func:`target_noise`).
    """
    if axis not in COST_AXES:
        raise ValueError(f"unknown cost axis {axis!r}; choose one of {COST_AXES}")
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be >= 0 (or None for the noise band), got {tol}")
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z}")
    raw_by_context: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        raw_by_context[_group_key(r, CONTEXT_COLUMNS)].append(r)
    extra_by_context: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in noise_rows:
        if r.get("method") in ("target", "specdecode"):
            extra_by_context[_group_key(r, CONTEXT_COLUMNS)].append(r)
    summaries = []
    for ctx, raw in raw_by_context.items():
        avg = average_seeds(raw)
        target = [r for r in avg if r["method"] == "target"]
        if not target:
            continue  # no reference in this setting: nothing to summarise against
        y_t = float(target[0]["quality"])
        noise = target_noise([r for r in raw if r["method"] == "target"],
                             [r for r in raw if r["method"] == "specdecode"], extra_by_context.get(ctx, ()))
        if tol is not None:
            rule, level = "tol", y_t - tol
        elif noise.judged:
            rule, level = "noise", y_t - z * noise.se
        else:
            rule, level = "not judged", math.nan
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
            c = cost_to_match(front, level, interpolate) if rule != "not judged" else math.nan
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
                noise=noise,
                z=z,
                match_rule=rule,
                match_level=level,
                costs=step_costs(avg),
            )
        )
    return summaries
