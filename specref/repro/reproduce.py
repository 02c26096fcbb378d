"""The main job as a function: sweep a setup, write the CSV, the Table-2 summaries and the plots.

``specref reproduce`` is a thin wrapper around :func:`reproduce`; notebooks and tests call it directly,
optionally with their own :class:`~specref.repro.backend.Backend`.

Output folder layout (``out`` / ``<zoo pair or setup name>`` /):

* ``points.csv`` - every (method, alpha, setting, seed) point; resumable (see :mod:`specref.repro.store`);
* ``summary.csv`` / ``summary.md`` - Table-2 numbers of this run's settings, on every cost axis;
* ``claims.md`` - the paper's headline claims checked on these rows (:mod:`specref.repro.claims`);
* ``cost_quality.png`` - the main setting's curves (modeled and wall-clock latency);
* ``robustness_<factor>.png`` - one panel per temperature / gamma / top-p value, when swept;
* ``run.json`` - the exact configuration of the last invocation.

Every file is written atomically (a uniquely named temporary in the same folder, then ``os.replace``), and
only inside the output folder. :func:`render` rewrites the summaries, claims and plots of an existing
folder from its ``points.csv`` and ``run.json`` without decoding (``python -m specref.repro.reproduce
--render DIR``), so committed results follow the current table rules.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from specref.repro.backend import Backend
from specref.repro.methods import DEFAULT_METHODS, ROBUSTNESS_METHODS, get_method, parse_alpha_overrides
from specref.repro.runner import ROBUSTNESS, Point, RunInfo, RunReport, Setting, plan_points, run_points
from specref.repro.setups import Setup
from specref.repro.store import KEY_COLUMNS, PointStore, atomic_write, format_value, row_key
from specref.repro.summary import COST_AXES, Summary, summarize

__all__ = [
    "QUICK", "FULL", "ReproConfig", "ReproResult", "config_from_args", "config_from_text", "reproduce",
    "resolve_settings", "select_examples", "sweep_plan",
]

#: Quick mode (the default): sized so ``specref reproduce`` on the zoo translation pair finishes within
#: 5 minutes on a 2-core CPU (measured: about a minute with random-init models of the pair's shape, which
#: never stop early); per task: examples (evenly spaced over the test split) and max_new_tokens (about the
#: 90th percentile of reference lengths). Full mode decodes the whole test split.
QUICK: dict[str, dict[str, int]] = {
    "translation": {"max_examples": 48, "max_new_tokens": 64},
    "summarization": {"max_examples": 48, "max_new_tokens": 32},
    "reasoning": {"max_examples": 48, "max_new_tokens": 64},
}
FULL: dict[str, dict[str, int]] = {
    "translation": {"max_new_tokens": 144},
    "summarization": {"max_new_tokens": 72},
    "reasoning": {"max_new_tokens": 96},
}
_FALLBACK = {"max_examples": 16, "max_new_tokens": 32}


@dataclass
class ReproConfig:
    """One reproduction. ``None`` fields take the setup's defaults, then the mode's (quick / full)."""

    methods: Sequence[str] | None = None
    alphas: dict[str, tuple[float, ...]] = field(default_factory=dict)
    full: bool = False
    sweep: str = "main"  # "main", "robustness" (all factors), a factor name, or "all"
    temperature: float | None = None
    gamma: int | None = None
    top_p: float | None = None
    seeds: Sequence[int] | None = None
    split: str | None = None
    max_examples: int | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None
    cost_ratio: float | None = None
    axis: str | None = None
    #: None: a method matches the target within the target's noise band (specref.repro.summary); a number:
    #: at quality >= target - tol, as an explicit ``--match-tol`` asks
    tol: float | None = None
    interpolate: bool = True
    progress: bool = True
    plots: bool = True
    #: method keys of named heads (``--head NAME=PATH``, :mod:`specref.repro.heads`): they join every sweep
    heads: tuple[str, ...] = ()


def config_from_text(methods: str | None = None, alphas: str | None = None, **settings: Any) -> ReproConfig:
    """A :class:`ReproConfig` from the command line's text forms: ``methods`` as comma-separated method keys
    (each checked), ``alphas`` as :func:`~specref.repro.methods.parse_alpha_overrides` reads them;
    ``settings``: the other fields, as they are."""
    keys = None
    if methods:
        keys = tuple(m.strip() for m in methods.split(",") if m.strip())
        for m in keys:
            get_method(m)
    named = tuple(settings.get("heads", ()))
    # without methods an alpha may name a default method, the head's (learned) or ensemble; named heads always
    allowed = tuple(dict.fromkeys((*(keys or DEFAULT_METHODS + ("learned", "ensemble")), *named)))
    parsed = parse_alpha_overrides(alphas, allowed)
    return ReproConfig(methods=keys, alphas=parsed, **settings)


def config_from_args(args: argparse.Namespace, heads: Sequence[str] = ()) -> ReproConfig:
    """The :class:`ReproConfig` that the options of :func:`specref.options.add_reproduce_arguments` ask for
    (``specref reproduce``, ``specref sweep`` and the torchrun workers parse the same options); ``heads``: the
    method keys of the named heads :func:`specref.repro.heads.register_heads` registered."""
    return config_from_text(
        args.methods, args.alphas, heads=tuple(heads), full=args.full, sweep=args.sweep, temperature=args.temperature,
        gamma=args.gamma, top_p=args.top_p, seeds=args.seed, split=args.split, max_examples=args.max_examples,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, cost_ratio=args.cost_ratio,
        axis=args.axis, tol=args.match_tol, interpolate=not args.no_interpolate,
        progress=not args.no_progress, plots=not args.no_plot,
    )


@dataclass
class ReproResult:
    """What a reproduction produced."""

    out_dir: Path
    rows: list[dict[str, Any]]
    summaries: dict[str, list[Summary]]
    report: RunReport
    files: list[Path]
    table: str
    claims: list[Any] = field(default_factory=list)


def select_examples(examples: Sequence[Any], n: int | None) -> list[Any]:
    """``n`` examples evenly spaced over the split (all if ``n`` is None or too large).

    Why evenly spaced: the splits are ordered (by book, by module), so the first ``n`` would all come from
    one book; index ``floor(i * len / n)`` covers the whole split and is deterministic.
    """
    if n is None or n >= len(examples):
        return list(examples)
    if n < 1:
        raise ValueError("max_examples must be >= 1")
    return [examples[(i * len(examples)) // n] for i in range(n)]


def resolve_settings(setup: Setup, cfg: ReproConfig, device: str = "cpu") -> dict[str, Any]:
    """Every setting of the run, first found in: the explicit config; in quick mode the setup's ``quick``
    section; the setup's defaults (the paper's setting for YAML setups); the mode's table for the task."""
    task_name = getattr(setup.task, "name", "")
    mode = (FULL if cfg.full else QUICK).get(task_name, {} if cfg.full else _FALLBACK)
    layers = ([] if cfg.full else [setup.quick]) + [setup.defaults, mode]

    def pick(name: str, fallback: Any) -> Any:
        value = getattr(cfg, name, None)
        if value is not None:
            return value
        for layer in layers:
            if layer.get(name) is not None:
                return layer[name]
        return fallback

    seeds = pick("seeds", [0, 1, 2] if cfg.full else [0])
    return {
        "methods": list(pick("methods", DEFAULT_METHODS)), "seeds": [int(x) for x in seeds],
        "temperature": float(pick("temperature", 1.0)), "gamma": int(pick("gamma", 5)),
        "top_p": pick("top_p", None), "split": pick("split", "test"),
        "max_examples": pick("max_examples", None), "max_new_tokens": int(pick("max_new_tokens", 64)),
        # full mode on a GPU: large batches (tiny models are launch-bound); modeled latency is batch-independent
        "batch_size": int(pick("batch_size", (256 if device.startswith("cuda") else 32) if cfg.full else 16)),
        "axis": pick("axis", "latency_model"),
    }


def sweep_plan(r: dict[str, Any], cfg: ReproConfig, has_head: bool) -> tuple[list[Point], dict[str, list[Setting]]]:
    """Points to decode (``r``: :func:`resolve_settings`) and, per sweep part ("main" or a factor), the settings
    it covers."""
    methods = [m for m in r["methods"] if has_head or not get_method(m).needs_head]
    if has_head and "learned" not in methods and not cfg.methods:
        methods.append("learned")
    methods += [m for m in cfg.heads if m not in methods]
    main = Setting(r["temperature"], r["gamma"], r["top_p"])
    parts: dict[str, list[Setting]] = {}
    if cfg.sweep in ("main", "all"):
        parts["main"] = [main]
    factors = list(ROBUSTNESS) if cfg.sweep in ("robustness", "all") else []
    if cfg.sweep in ROBUSTNESS:
        factors = [cfg.sweep]
    if not parts and not factors:
        raise ValueError(f"unknown sweep {cfg.sweep!r}; choose main, robustness, all, or one of {list(ROBUSTNESS)}")
    points: list[Point] = []
    if "main" in parts:
        points += plan_points(methods, [main], r["seeds"], cfg.full, cfg.alphas)
    robust_methods = [m for m in (cfg.methods or ROBUSTNESS_METHODS) if has_head or not get_method(m).needs_head]
    if has_head and "learned" not in robust_methods and not cfg.methods:
        robust_methods.append("learned")
    robust_methods += [m for m in cfg.heads if m not in robust_methods]
    for f in factors:
        settings = list(ROBUSTNESS[f])
        parts[f] = settings
        # one seed suffices to show a trend; the main sweep carries the seed averaging
        points += plan_points(robust_methods, settings, r["seeds"][:1], cfg.full, cfg.alphas)
    unique = list(dict.fromkeys(points))
    return unique, parts


def reproduce(
    setup: Setup,
    out: str | Path,
    cfg: ReproConfig | None = None,
    backend: Backend | None = None,
    device: str = "cpu",
    head: Any = None,
    named_heads: dict[str, Any] | None = None,
) -> ReproResult:
    """Run (or resume) the sweep of ``setup`` and write everything under ``out / setup.folder``.

    ``backend`` defaults to :class:`~specref.repro.hf.HFBackend` on ``device``; ``head`` is a loaded
    deferral head for the ``learned`` method (set on ``backend`` when one is given); ``named_heads``:
    ``{method key: head}`` of the named heads (registered rules, :mod:`specref.repro.heads`), whose weights'
    hashes go into ``run.json`` so that a resume with other weights under the same name is refused.
    """
    from specref import __version__

    cfg = cfg or ReproConfig()
    r = resolve_settings(setup, cfg, device)
    if r["axis"] not in COST_AXES:
        raise ValueError(f"unknown cost axis {r['axis']!r}; choose one of {COST_AXES}")
    out_dir = _inside(Path(out) / setup.folder, Path(out))
    out_dir.mkdir(parents=True, exist_ok=True)
    examples = select_examples(setup.task.load(r["split"]), r["max_examples"])
    if not examples:
        raise ValueError(f"task {setup.task.name!r} has no {r['split']} examples")
    points, parts = sweep_plan(r, cfg, head is not None or getattr(backend, "head", None) is not None)
    if backend is None:
        from specref.repro.hf import HFBackend

        backend = HFBackend.from_setup(setup, device=device, head=head)
    elif head is not None:
        backend.head = head  # a given backend decodes the learned rule with this head from now on
    shas = _check_same_heads(out_dir, {"learned": head if head is not None else getattr(backend, "head", None),
                                       **(named_heads or {})})
    c, c_source = backend.cost_ratio()
    if cfg.cost_ratio is not None:
        c, c_source = float(cfg.cost_ratio), "given"
    elif setup.defaults.get("cost_ratio") is not None:
        c, c_source = float(setup.defaults["cost_ratio"]), "config"
    info = RunInfo(task=setup.task, pair=setup.pair, split=r["split"], examples=examples,
                   max_new_tokens=r["max_new_tokens"], batch_size=r["batch_size"], cost_ratio=c,
                   cost_ratio_source=c_source, version=__version__)
    atomic_write(out_dir / "run.json", json.dumps({
        "setup": setup.name, "pair": setup.pair, "task": setup.task.name, "device": backend.device,
        "cost_ratio": c, "cost_ratio_source": c_source, "n_examples": len(examples),
        "example_ids": [str(e.id) for e in examples], "points": len(points), "head_sha256": shas.get("learned"),
        "heads_sha256": {k: v for k, v in shas.items() if k != "learned"},
        "config": {**asdict(cfg), **{k: v for k, v in r.items()}},
    }, indent=1, default=str) + "\n")
    store = PointStore(out_dir / "points.csv")
    report = run_points(backend, store, info, points, progress=cfg.progress)
    wanted = {row_key(info.key_fields(p)) for p in points}
    rows = [_with_cost_ratio(row, c) for row in store.read() if row_key(row) in wanted]
    main = Setting(r["temperature"], r["gamma"], r["top_p"])
    summaries, files, claims, table = render_outputs(
        out_dir, rows, parts, main, r["axis"], cfg.tol, cfg.interpolate, cfg.plots,
        f"{setup.task.name} / {setup.pair}")
    return ReproResult(out_dir, rows, summaries, report, files, table, claims)


def _check_same_heads(out_dir: Path, heads: dict[str, Any]) -> dict[str, str]:
    """``{method: the head's weights sha256}`` (heads that are None, or not loaded from a folder, left out).
    A folder whose ``run.json`` recorded another head for a method while its ``points.csv`` holds rows of that
    method is refused: the rows' key has no head in it, so resuming would keep the old head's rows as if this
    head had decoded them."""
    shas = {m: getattr(h, "weights_sha256", None) for m, h in heads.items() if h is not None}
    shas = {m: sha for m, sha in shas.items() if sha is not None}
    meta, points = out_dir / "run.json", out_dir / "points.csv"
    if not shas or not meta.is_file() or not points.is_file():
        return shas
    try:
        saved = json.loads(meta.read_text())
        before = {**saved.get("heads_sha256", {}), "learned": saved.get("head_sha256")}
    except (OSError, ValueError, AttributeError, TypeError):
        return shas  # an unreadable run.json is rewritten below; the store checks its own rows
    changed = [m for m, sha in shas.items() if before.get(m) and before[m] != sha]
    if changed:
        methods = {r["method"] for r in PointStore(points).read()}
        for m in changed:
            if m in methods:
                raise ValueError(f"{points} holds {m} rows of another head (weights sha256 {before[m][:12]}, this "
                                 f"head's {shas[m][:12]}); use another --out, or remove those rows")
    return shas


def _inside(out_dir: Path, out: Path) -> Path:
    """``out_dir`` if it lies inside ``out`` (a setup's folder name must not climb out of it)."""
    root, target = out.resolve(), out_dir.resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"output folder {out_dir} is outside {out}; a setup's name must be a plain folder name")
    return out_dir


def render_outputs(
    out_dir: Path, rows: list[dict[str, Any]], parts: dict[str, list[Setting]], main: Setting, axis: str,
    tol: float | None, interpolate: bool, plots: bool, title: str, noise_rows: Sequence[dict[str, Any]] = (),
) -> tuple[dict[str, list[Summary]], list[Path], list[Any], str]:
    """Summaries, claims and plots of ``rows`` written into ``out_dir``: what :func:`reproduce` and
    :func:`render` share. Returns (summaries per axis, files written, claims, the terminal table).
    ``noise_rows``: a several-seed run on the same examples (:func:`specref.repro.summary.summarize`)."""
    from specref.repro.claims import check_claims, claims_markdown
    from specref.repro.report import format_summaries

    axes = [axis] + [a for a in ("latency_model", "latency_wall") if a != axis]
    summaries = {a: summarize(rows, axis=a, tol=tol, interpolate=interpolate, noise_rows=noise_rows) for a in axes}
    files = _write_outputs(out_dir, rows, summaries, parts, plots, noise_rows)
    claims = (check_claims(rows, main.temperature, main.gamma, main.top_p, axis=axis, tol=tol, noise_rows=noise_rows)
              if "main" in parts else [])
    if claims:
        files.append(atomic_write(out_dir / "claims.md", claims_markdown(claims, title)))
    return summaries, files, claims, format_summaries(summaries)


def _run_rows(out_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``run.json`` and the rows of its example subset from a finished output folder."""
    meta_path, csv_path = out_dir / "run.json", out_dir / "points.csv"
    for path in (meta_path, csv_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: render needs a folder written by reproduce")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path}: not a reproduce run.json ({err})") from None
    rows = [row for row in PointStore(csv_path).read()
            if meta.get("n_examples") is None or row["n_examples"] == int(meta["n_examples"])]
    return meta, rows


def render(out_dir: str | Path, tol: float | None = None, plots: bool = True,
           noise_from: str | Path | None = None) -> list[Path]:
    """Rewrite ``summary.*``, ``claims.md`` and the plots of a finished output folder from its ``points.csv``
    and ``run.json``, without decoding, under the current rules (``tol`` None: the noise band).

    Rows are those of the run's example subset (``n_examples`` of ``run.json``); every seed counts.
    ``noise_from``: another finished folder, a several-seed run on exactly the same examples (``run.json``
    ``example_ids`` must be equal), whose target seed spread is the noise of this folder's one-seed settings.
    """
    out_dir = Path(out_dir)
    meta, rows = _run_rows(out_dir)
    noise_rows: list[dict[str, Any]] = []
    if noise_from is not None:
        noise_meta, noise_rows = _run_rows(Path(noise_from))
        if not meta.get("example_ids") or noise_meta.get("example_ids") != meta.get("example_ids"):
            raise ValueError(f"{noise_from} decoded other examples than {out_dir}: its noise does not apply")
    try:
        conf = meta["config"]
        main = Setting(float(conf["temperature"]), int(conf["gamma"]), conf.get("top_p"))
        sweep = conf.get("sweep", "main")
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{out_dir / 'run.json'}: not a reproduce run.json ({err})") from None
    parts: dict[str, list[Setting]] = {}
    if sweep in ("main", "all"):
        parts["main"] = [main]
    factors = list(ROBUSTNESS) if sweep in ("robustness", "all") else ([sweep] if sweep in ROBUSTNESS else [])
    for f in factors:
        parts[f] = list(ROBUSTNESS[f])
    c = float(meta.get("cost_ratio", math.nan))
    if not math.isnan(c):
        rows = [_with_cost_ratio(row, c) for row in rows]
        noise_rows = [_with_cost_ratio(row, c) for row in noise_rows]
    if not rows:
        raise ValueError(f"{out_dir / 'points.csv'} has no rows of the run's {meta.get('n_examples')} examples")
    axis = conf.get("axis") or "latency_model"
    _, files, _, _ = render_outputs(out_dir, rows, parts, main, axis, tol, bool(conf.get("interpolate", True)),
                                    plots, f"{meta.get('task', rows[0]['task'])} / {meta.get('pair', rows[0]['pair'])}",
                                    noise_rows)
    return files


def _with_cost_ratio(row: dict[str, Any], c: float) -> dict[str, Any]:
    """``row`` with ``latency_model`` recomputed from its raw counts at cost ratio ``c``.

    Why: rows written by an earlier run may have used another ``c``; the counts are stored, so every row of
    a summary is put on the same ``c`` without decoding again (the CSV keeps what each run wrote).
    """
    base = row.get("baseline_target_calls")
    if base is None or not base or math.isnan(float(base)):
        return row
    out = dict(row)
    out["latency_model"] = (float(row["target_calls"]) + c * float(row["draft_calls"])) / float(base)
    out["cost_ratio"] = c
    return out


def _write_outputs(out_dir: Path, rows: list[dict[str, Any]], summaries: dict[str, list[Summary]],
                   parts: dict[str, list[Setting]], plots: bool,
                   noise_rows: Sequence[dict[str, Any]] = ()) -> list[Path]:
    from specref.repro.report import markdown_summaries, write_summary_csv

    files = [out_dir / "points.csv"]
    write_summary_csv(out_dir / "summary.csv", [s for group in summaries.values() for s in group])
    md = atomic_write(out_dir / "summary.md", markdown_summaries(summaries))
    files += [out_dir / "summary.csv", md]
    if not plots:
        return files
    from specref.repro.plot import plot_cost_quality, plot_settings

    def in_settings(row: dict[str, Any], settings: list[Setting]) -> bool:
        return any(
            format_value("temperature", row["temperature"]) == format_value("temperature", s.temperature)
            and row["gamma"] == s.gamma
            and format_value("top_p", row["top_p"]) == format_value("top_p", s.top_p)
            for s in settings
        )

    if "main" in parts:
        main_rows = [row for row in rows if in_settings(row, parts["main"])]
        if main_rows:
            files.append(plot_cost_quality(main_rows, out_dir / "cost_quality.png", noise_rows=noise_rows))
    for factor, settings in parts.items():
        if factor == "main":
            continue
        sub = [row for row in rows if in_settings(row, settings)]
        if sub and not all(math.isnan(float(x["quality"])) for x in sub):
            files.append(plot_settings(sub, out_dir / f"robustness_{factor}.png", vary=factor, noise_rows=noise_rows))
    return files


def key_of(point: Point, info: RunInfo) -> dict[str, Any]:
    """The key columns of ``point`` under ``info`` (exposed for notebooks and tests)."""
    return {c: info.key_fields(point)[c] for c in KEY_COLUMNS}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m specref.repro.reproduce --render DIR [DIR ...]``: re-render finished output folders."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m specref.repro.reproduce",
                                description="Re-render summaries, claims and plots from points.csv (no decoding).")
    p.add_argument("--render", nargs="+", required=True, metavar="DIR", help="output folders written by reproduce")
    p.add_argument("--match-tol", type=float, default=None,
                   help="read 'to match' at target - tol instead of the noise band (default: the noise band)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNGs")
    p.add_argument("--noise-from", default=None, metavar="DIR",
                   help="a several-seed run on the same examples whose target seed spread is the noise of one-seed "
                        "settings (default: none; each folder's own seeds or bootstrap)")
    args = p.parse_args(argv)
    if args.match_tol is not None and not args.match_tol >= 0:
        print(f"{p.prog}: error: --match-tol must be >= 0, got {args.match_tol}", file=sys.stderr)
        return 2
    for folder in args.render:
        try:
            files = render(folder, tol=args.match_tol, plots=not args.no_plot, noise_from=args.noise_from)
        except (ValueError, FileNotFoundError, OSError) as err:
            print(f"{p.prog}: error: {err}", file=sys.stderr)
            return 2
        print("wrote: " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
