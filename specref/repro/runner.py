"""Plan a sweep as points and decode the missing ones, appending one CSV row per point.

Why the baseline is re-decoded on every (re)start: wall-clock latency is only comparable within one
process on one warm machine, so each row's ``latency_wall`` divides by the target-only wall time measured in
the SAME process for the same examples and sampling setting. A resumed sweep therefore decodes target-only
again before its first pending point of a setting (and checks that its predictions hash equals the stored
one: a free determinism check). ``latency_model`` needs no timing and is identical across reruns.

Why a bootstrap when a point is scored: one seed gives one number per point, and the only place that still
has the predictions and the examples is here. Each row stores ``quality_se``, the standard deviation of the
point's quality over :data:`N_BOOT` resamples of the examples with replacement (the corpus metric re-scored
on every resample: for BLEU from sacreBLEU's per-sentence statistics, for per-example means from the
per-example scores), and ``quality_diff_se``, the same for the point's quality minus the target-only
baseline's on the same resamples (paired: 0 for the target itself), with ``noise_method`` "bootstrap" and
``n_boot``. The resample indices come from a fixed seed (:data:`BOOT_SEED`), the same for every point of a
run: rows are deterministic and comparable.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from specref.repro.backend import Backend, DecodeOutput, DecodeRequest
from specref.repro.methods import canonical_options, get_method
from specref.repro.store import PointStore, row_key

__all__ = [
    "BOOT_SEED",
    "N_BOOT",
    "ROBUSTNESS",
    "Point",
    "RunInfo",
    "RunReport",
    "Setting",
    "plan_points",
    "planned_decodes",
    "run_points",
    "predictions_sha",
    "bootstrap_se",
    "bootstrap_values",
    "paired_bootstrap_se",
]


@dataclass(frozen=True)
class Setting:
    """Sampling and block-size setting shared by the points of one curve."""

    temperature: float = 1.0
    gamma: int = 5
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if int(self.gamma) != self.gamma or self.gamma < 1:
            raise ValueError(f"gamma must be an integer >= 1, got {self.gamma}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_p == 1.0:  # no filtering: one canonical spelling, so keys compare equal
            object.__setattr__(self, "top_p", None)


#: The paper's robustness sweeps, one factor at a time around the main setting (T = 1, gamma = 5, no top-p).
ROBUSTNESS: dict[str, tuple[Setting, ...]] = {
    "temperature": tuple(Setting(t, 5, None) for t in (0.0, 0.1, 0.5, 1.0)),
    "gamma": tuple(Setting(1.0, g, None) for g in (3, 5, 7)),
    "top_p": tuple(Setting(1.0, 5, p) for p in (0.5, 0.9, None)),
}


@dataclass(frozen=True)
class Point:
    """One (method, alpha, options, setting, seed) to decode."""

    method: str
    alpha: float | None
    options: str
    setting: Setting
    seed: int

    @property
    def group(self) -> tuple[float, float | None, int]:
        """Points that share a target-only baseline (gamma does not change target-only decoding)."""
        return (self.setting.temperature, self.setting.top_p, self.seed)

    @property
    def decode_id(self) -> tuple:
        """Points with the same decode_id give identical decodes (gamma dropped where it does not matter)."""
        gamma = self.setting.gamma if get_method(self.method).uses_gamma else None
        return (self.method, self.alpha, self.options, self.group, gamma)


def plan_points(
    methods: Sequence[str],
    settings: Sequence[Setting],
    seeds: Sequence[int],
    full: bool = False,
    alphas: dict[str, tuple[float, ...]] | None = None,
) -> list[Point]:
    """All points of a sweep, in run order; ``target`` and ``draft`` are always included (references).

    ``alphas`` overrides a method's grid. Duplicate points (e.g. the same setting twice) appear once.
    """
    alphas = alphas or {}
    keys = list(dict.fromkeys(["target", "draft", *methods]))
    specs = [get_method(k) for k in keys]
    seen: set[Point] = set()
    out: list[Point] = []
    for seed in seeds:
        for setting in settings:
            for spec in specs:
                grid = alphas.get(spec.key, spec.grid(full)) if spec.param else (None,)
                for alpha in grid:
                    for opts in spec.options:
                        pt = Point(spec.key, None if alpha is None else float(alpha), canonical_options(opts),
                                   setting, int(seed))
                        if pt not in seen:
                            seen.add(pt)
                            out.append(pt)
    return out


@dataclass(frozen=True)
class RunInfo:
    """What every row of one run shares."""

    task: Any  # a specref.tasks.Task-like object: name, metric_name, score(predictions, examples)
    pair: str
    split: str
    examples: list[Any]
    max_new_tokens: int
    batch_size: int
    cost_ratio: float
    cost_ratio_source: str
    version: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def key_fields(self, point: Point) -> dict[str, Any]:
        return {
            "task": self.task.name, "pair": self.pair, "method": point.method, "alpha": point.alpha,
            "options": point.options, "temperature": point.setting.temperature, "gamma": point.setting.gamma,
            "top_p": point.setting.top_p, "seed": point.seed, "split": self.split,
            "n_examples": len(self.examples), "max_new_tokens": self.max_new_tokens,
        }


@dataclass
class RunReport:
    """Counts of what a run did."""

    decoded: int = 0
    written: int = 0
    skipped: int = 0
    baseline_redecodes: int = 0
    nondeterministic: list[str] = field(default_factory=list)


def predictions_sha(predictions: Iterable[str]) -> str:
    """Short hash of the outputs, to check that reruns from the same seeds decode the same text."""
    h = hashlib.sha256()
    for p in predictions:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


#: Resamples of the examples per point, and the fixed seed of their indices (see the module docstring).
N_BOOT = 1000
BOOT_SEED = 20250101
#: Resamples when the metric cannot be split into per-example statistics (every resample re-scores the corpus).
N_BOOT_RESCORE = 200


def _example_stats(task: Any, predictions: Sequence[str], examples: Sequence[Any],
                   quality: float) -> tuple[Any, Callable[[Any], float]] | None:
    """Per-example statistics ``[n, k]`` whose column sums give the corpus metric through ``combine``, or None
    when the metric does not decompose (checked: ``combine`` of all examples must give ``quality``)."""
    import numpy as np

    metric = task.metric_name
    if metric == "bleu":
        try:
            from sacrebleu.metrics import BLEU
        except ImportError:  # pragma: no cover - eval extra missing: fall back to re-scoring
            return None
        corpus = BLEU()  # sacreBLEU's corpus defaults, as specref.tasks.metrics.bleu uses them
        sentence = BLEU(effective_order=True)  # only its raw counts are read: smoothing does not enter
        rows = []
        for pred, ex in zip(predictions, examples):
            sc = sentence.sentence_score(pred.strip(), [ex.reference])
            rows.append([*sc.counts, *sc.totals, sc.sys_len, sc.ref_len])
        stats = np.asarray(rows, dtype=np.int64)

        def combine(col: Any) -> float:
            c = [int(x) for x in col]
            return float(BLEU.compute_bleu(c[0:4], c[4:8], c[8], c[9], smooth_method=corpus.smooth_method,
                                           smooth_value=corpus.smooth_value).score)
    else:  # per-example means (ROUGE-2 F1, accuracy): each example scored on its own by the task
        stats = np.asarray([[float(task.score([pred], [ex])[metric]), 1.0] for pred, ex in zip(predictions, examples)])

        def combine(col: Any) -> float:
            return float(col[0] / col[1])

    full = combine(stats.sum(axis=0))
    if not math.isclose(full, quality, rel_tol=1e-9, abs_tol=1e-9):
        return None
    return stats, combine


def bootstrap_values(task: Any, predictions: Sequence[str], examples: Sequence[Any], quality: float | None = None,
                     n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> Any:
    """The task's metric on ``n_boot`` resamples of the examples with replacement (a float array).

    The resample indices depend only on ``len(examples)``, the number of resamples and ``seed``, so two
    prediction lists over the same examples are resampled identically (paired). When the metric cannot be
    split into per-example statistics, every resample re-scores the corpus and at most
    :data:`N_BOOT_RESCORE` resamples are drawn. ``quality`` (the metric on all examples) is recomputed when
    not given.
    """
    import numpy as np

    n = len(predictions)
    if quality is None:
        quality = float(task.score(list(predictions), list(examples))[task.metric_name])
    split = _example_stats(task, predictions, examples, quality)
    if split is None:
        n_boot = min(n_boot, N_BOOT_RESCORE)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    if split is None:
        metric = task.metric_name
        return np.asarray([float(task.score([predictions[i] for i in row], [examples[i] for i in row])[metric])
                           for row in idx])
    stats, combine = split
    # weights[b, i] = how often example i is drawn in resample b; sums of statistics per resample
    weights = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n)
    return np.asarray([combine(row) for row in weights.reshape(n_boot, n) @ stats])


def bootstrap_se(task: Any, predictions: Sequence[str], examples: Sequence[Any], quality: float | None = None,
                 n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> tuple[float, int]:
    """Standard error of the task's metric over resamples of the examples, and the number of resamples
    (``(nan, 0)`` with fewer than 2 examples)."""
    if len(predictions) < 2:
        return math.nan, 0
    vals = bootstrap_values(task, predictions, examples, quality, n_boot, seed)
    return float(vals.std(ddof=1)), int(len(vals))


def paired_bootstrap_se(task: Any, predictions: Sequence[str], reference: Sequence[str] | Any,
                        examples: Sequence[Any], quality: float | None = None,
                        n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> float:
    """Standard error of ``metric(predictions) - metric(reference)`` over the SAME resamples of the examples.

    Why paired: both lists score the same examples, so example-to-example variation cancels and what is left
    is the decoding noise (plus any real per-example difference). ``reference`` is a list of predictions or
    its :func:`bootstrap_values` already computed (a run scores many points against one baseline). NaN with
    fewer than 2 examples.
    """
    if len(predictions) < 2:
        return math.nan
    a = bootstrap_values(task, predictions, examples, quality, n_boot, seed)
    b = reference if hasattr(reference, "dtype") else bootstrap_values(task, reference, examples, None, n_boot, seed)
    if len(a) != len(b):  # one list decomposed and the other did not: the resamples differ
        return math.nan
    return float((a - b).std(ddof=1))


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _request(point: Point, info: RunInfo) -> DecodeRequest:
    opts = json.loads(point.options) if point.options else {}
    return DecodeRequest(
        method=point.method, alpha=point.alpha, options=opts, gamma=point.setting.gamma,
        temperature=point.setting.temperature, top_p=point.setting.top_p, seed=point.seed,
        max_new_tokens=info.max_new_tokens, batch_size=info.batch_size,
    )


def _row(point: Point, out: DecodeOutput, base: DecodeOutput, info: RunInfo, device: str,
         c_measured: float, base_boot: Any = None) -> dict[str, Any]:
    spec = get_method(point.method)
    scores = info.task.score(out.predictions, info.examples)
    quality = scores[info.task.metric_name]
    se, n_boot = bootstrap_se(info.task, out.predictions, info.examples, quality)
    diff_se = 0.0 if out is base else paired_bootstrap_se(
        info.task, out.predictions, base.predictions if base_boot is None else base_boot, info.examples, quality)
    c = info.cost_ratio
    return {
        **info.key_fields(point),
        "label": spec.label, "param": spec.param, "metric": info.task.metric_name,
        "quality": quality,
        "empty_rate": scores.get("empty_rate"), "loop_rate": scores.get("loop_rate"),
        "quality_se": se, "quality_diff_se": diff_se, "noise_method": "bootstrap" if n_boot else "",
        "n_boot": n_boot or None,
        "latency_model": _ratio(out.target_calls + c * out.draft_calls, base.target_calls),
        "latency_wall": _ratio(out.wall_s, base.wall_s),
        "rejection_rate": _ratio(out.rejected, out.drafted),
        "target_calls_per_token": _ratio(out.target_calls, out.tokens),
        "tokens_per_target_call": _ratio(out.tokens, out.target_calls),
        "acceptance_rate": 1 - _ratio(out.rejected, out.drafted),
        "deferral_rate": _ratio(out.deferrals, out.positions),
        "tokens": out.tokens, "target_calls": out.target_calls, "draft_calls": out.draft_calls,
        "wall_s": out.wall_s, "baseline_wall_s": base.wall_s, "baseline_target_calls": base.target_calls,
        "cost_ratio": c, "cost_ratio_source": info.cost_ratio_source, "cost_ratio_measured": c_measured,
        "predictions_sha": predictions_sha(out.predictions), "run_id": info.run_id, "device": device,
        "batch_size": info.batch_size, "specref_version": info.version,
        "time_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def run_points(
    backend: Backend,
    store: PointStore,
    info: RunInfo,
    points: Sequence[Point],
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> RunReport:
    """Decode every point whose row is not yet in ``store`` and append its row; see the module docstring.

    Points are processed group by group (temperature, top-p, seed): target-only first (the baseline), then
    draft-only (for the measured cost ratio), then the rest in plan order. A decode shared by several points
    (a method that ignores gamma) runs once.
    """
    report = RunReport()
    stored = store.keys()
    groups: dict[tuple, list[Point]] = {}
    for pt in points:
        groups.setdefault(pt.group, []).append(pt)
    pending_groups = {
        g: pts for g, pts in groups.items() if any(row_key(info.key_fields(p)) not in stored for p in pts)
    }
    report.skipped = sum(
        row_key(info.key_fields(p)) in stored for pts in groups.values() for p in pts
    )
    if not pending_groups:
        return report
    if not info.examples:
        raise ValueError("no examples to decode")
    total = 0
    for g, pts in pending_groups.items():
        ids = {p.decode_id for p in pts if row_key(info.key_fields(p)) not in stored}
        ids.add(("target", None, "", g, None))  # the baseline is decoded in every process
        total += len(ids)
    bar = _progress(total, progress)
    backend.warmup()
    try:
        for pts in pending_groups.values():
            _run_group(backend, store, info, pts, stored, report, bar, on_row)
    finally:
        bar.close()
    return report


def _group_order(pts: Sequence[Point]) -> tuple[list[Point], list[Point]]:
    """A group's points in processing order (target-only, draft-only, then plan order) and its baselines."""
    order = {"target": 0, "draft": 1}
    pts = sorted(pts, key=lambda p: order.get(p.method, 2))  # stable: plan order otherwise
    target_pts = [p for p in pts if p.method == "target"]
    if not target_pts:
        target_pts = [Point("target", None, "", pts[0].setting, pts[0].seed)]
    return pts, target_pts


def planned_decodes(stored: set, info: RunInfo, points: Sequence[Point]) -> list[Point]:
    """The decodes :func:`run_points` will run, in its order: one representative point per decode.

    ``stored`` holds the row keys already in the store. Used by the data-parallel runner
    (:mod:`specref.repro.distributed`) to decode the same work on several devices before the rows are written.
    """
    groups: dict[tuple, list[Point]] = {}
    for pt in points:
        groups.setdefault(pt.group, []).append(pt)
    out: list[Point] = []
    for pts in groups.values():
        if all(row_key(info.key_fields(p)) in stored for p in pts):
            continue
        pts, target_pts = _group_order(pts)
        seen = {target_pts[0].decode_id}
        out.append(target_pts[0])
        for pt in pts:
            if row_key(info.key_fields(pt)) in stored or pt.decode_id in seen:
                continue
            seen.add(pt.decode_id)
            out.append(pt)
    return out


def request_for(point: Point, info: RunInfo) -> DecodeRequest:
    """The backend request that decodes ``point`` under ``info``."""
    return _request(point, info)


def _run_group(backend, store, info, pts, stored, report, bar, on_row) -> None:
    pts, target_pts = _group_order(pts)
    cache: dict[tuple, DecodeOutput] = {}

    def decode(pt: Point) -> DecodeOutput:
        if pt.decode_id not in cache:
            bar.set_postfix_str(f"{pt.method} alpha={pt.alpha} T={pt.setting.temperature} "
                                f"gamma={pt.setting.gamma} top_p={pt.setting.top_p} seed={pt.seed}")
            cache[pt.decode_id] = backend.decode(_request(pt, info), info.examples)
            report.decoded += 1
            bar.update(1)
        return cache[pt.decode_id]

    base = decode(target_pts[0])
    stored_target = [p for p in target_pts if row_key(info.key_fields(p)) in stored]
    if stored_target:
        report.baseline_redecodes += 1
        _check_same(store, info, stored_target[0], base, report)
    c_measured = math.nan
    base_boot = None
    for pt in pts:
        if row_key(info.key_fields(pt)) in stored:
            continue
        out = decode(pt)
        if pt.method == "draft":
            c_measured = _ratio(_ratio(out.wall_s, out.draft_calls), _ratio(base.wall_s, base.target_calls))
        if base_boot is None and out is not base and len(info.examples) >= 2:
            base_boot = bootstrap_values(info.task, base.predictions, info.examples)  # once per baseline
        row = _row(pt, out, base, info, backend.device, c_measured, base_boot)
        if store.append(row):
            report.written += 1
            stored.add(row_key(row))
            if on_row is not None:
                on_row(row)


def _check_same(store: PointStore, info: RunInfo, pt: Point, out: DecodeOutput, report: RunReport) -> None:
    want = row_key(info.key_fields(pt))
    for row in store.read():
        if row_key(row) == want and row["predictions_sha"] != predictions_sha(out.predictions):
            msg = (f"target-only decode of {want} differs from the stored one (sha {row['predictions_sha']} vs "
                   f"{predictions_sha(out.predictions)}): decoding is not deterministic on this machine")
            warnings.warn(msg, stacklevel=3)
            report.nondeterministic.append(msg)


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the hf extra
        return _NoBar()
    return tqdm(total=total, desc="decoding", unit="decode", dynamic_ncols=True, mininterval=1.0)
