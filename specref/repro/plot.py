"""Cost-quality plots (PNG, Agg backend) in the form a paper figure takes.

One curve per method and option set, its points joined in cost order and each labelled with its alpha;
colours and markers by method family (SpecDecode greens, Token rules reds, Chow / Diff / OPT blues,
sequential and other baselines greys / purples), so a family reads at a glance and each member by its marker.
Error bars are +/-1 standard error of a point's quality: over seeds (the seed mean's) when there are >= 2,
else the bootstrap over examples stored with the row (``quality_se``). The target's quality is a dashed line
with its noise band shaded (the band "to match" is read against; :mod:`specref.repro.summary`), the draft's a
dotted line. Axis and metric names are spelled out (BLEU, ROUGE-2, accuracy).
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from specref.repro.methods import METHODS, order_key
from specref.repro.report import METRIC_NAMES, context_title, metric_name
from specref.repro.store import atomic_write
from specref.repro.summary import CONTEXT_COLUMNS, average_seeds, summarize

__all__ = ["METRIC_NAMES", "metric_name", "plot_cost_quality", "plot_settings"]

_AXIS_LABELS = {
    "latency_model": "modeled latency (relative to target-only)",
    "latency_wall": "wall-clock latency (relative to target-only)",
    "target_calls_per_token": "target calls per emitted token",
    "rejection_rate": "rejection rate of drafted tokens",
}

#: (colour, marker) per method: one hue family per method family.
_STYLE: dict[str, tuple[str, str]] = {
    "specdecode": ("#1b7837", "*"),
    "lossy": ("#5aae61", "v"),
    "chow": ("#08306b", "o"),
    "diff": ("#2171b5", "s"),
    "opt": ("#6baed6", "D"),
    "token_v1": ("#fd8d3c", "^"),
    "token_v2": ("#e6550d", "P"),
    "token_v3": ("#a50f15", "o"),
    "learned": ("#c51b8a", "X"),
    "token_cascade": ("#525252", "<"),
    "seq_cascade": ("#969696", ">"),
    "bild": ("#6a51a3", "h"),
    "ensemble": ("#9e9ac8", "p"),
}
_LINESTYLES = ("-", "--", ":", "-.")


def _finite(x: Any) -> bool:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return False
    return not (math.isnan(f) or math.isinf(f))


def _err(r: Mapping[str, Any]) -> float:
    """+/-1 standard error of a seed-averaged point's quality (seeds when >= 2, else its bootstrap)."""
    if int(r.get("seeds") or 1) >= 2 and _finite(r.get("quality_seed_se")):
        return float(r["quality_seed_se"])
    return float(r["quality_se"]) if _finite(r.get("quality_se")) else 0.0


def _curve_label(method: str, options: str, n_options: int) -> str:
    label = METHODS[method].label if method in METHODS else method
    if n_options > 1 and options:
        opts = options.strip("{}").replace('"', "").replace(":", " ").replace(",", ", ")
        label += f" ({opts})"
    return label


def _alpha_text(alpha: Any) -> str:
    return f"{float(alpha):g}" if _finite(alpha) else ""


def _draw(ax, avg: Sequence[Mapping[str, Any]], axis: str, summary: Any, title: str | None,
          label_alphas: bool = True) -> bool:
    """One panel: every curve of ``avg`` (seed-averaged rows of one setting) on cost axis ``axis``; True when
    some point got an error bar."""
    drew_err = False
    curves: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in avg:
        if _finite(r.get(axis)) and _finite(r.get("quality")):
            curves[(r["method"], r.get("options") or "")].append(r)
    n_opts = defaultdict(int)
    for method, _ in curves:
        n_opts[method] += 1
    metric = next((r["metric"] for r in avg if r.get("metric")), "quality")
    if summary is not None and summary.noise.judged:
        y, band = summary.target_quality, summary.noise.band(summary.z)
        ax.axhspan(y - band, y + band, color="black", alpha=0.07, lw=0, zorder=0)
    opt_index: dict[str, int] = defaultdict(int)
    for method, options in sorted(curves, key=lambda k: (order_key(k[0]), k[1])):
        pts = sorted(curves[(method, options)], key=lambda r: (float(r[axis]), -float(r["quality"])))
        xs = [float(r[axis]) for r in pts]
        ys = [float(r["quality"]) for r in pts]
        es = [_err(r) for r in pts]
        drew_err = drew_err or any(es)
        if method == "target":
            ax.axhline(ys[0], color="black", ls="--", lw=1.1, zorder=1)
            ax.errorbar(xs, ys, yerr=es if any(es) else None, marker="*", ms=14, color="black", ls="none",
                        capsize=3, zorder=4, label=f"Target ({ys[0]:.2f})")
            continue
        if method == "draft":
            ax.axhline(ys[0], color="grey", ls=":", lw=1.1, zorder=1)
            ax.errorbar(xs, ys, yerr=es if any(es) else None, marker="X", ms=10, color="grey", ls="none",
                        capsize=3, zorder=4, label=f"Draft ({ys[0]:.2f})")
            continue
        color, marker = _STYLE.get(method, ("#444444", "o"))
        ls = _LINESTYLES[opt_index[method] % len(_LINESTYLES)]
        opt_index[method] += 1
        bars = ax.errorbar(xs, ys, yerr=es if any(es) else None, color=color, marker=marker, ls=ls, lw=1.4,
                           ms=11 if marker == "*" else 6.5, capsize=2, elinewidth=0.8, zorder=3,
                           label=_curve_label(method, options, n_opts[method]))
        for part in (*bars.lines[1], *bars.lines[2]):  # light error bars: the curves stay readable
            part.set_alpha(0.45)
        if label_alphas:
            for x, y, r in zip(xs, ys, pts):
                text = _alpha_text(r.get("alpha"))
                if text:
                    ax.annotate(text, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=8,
                                color=color, zorder=5)
    if axis.startswith("latency"):
        ax.axvline(1.0, color="black", lw=0.7, alpha=0.4, zorder=0)
    ax.set_xlabel(_AXIS_LABELS.get(axis, axis), fontsize=13)
    ax.set_ylabel(metric_name(metric), fontsize=13)
    ax.tick_params(labelsize=11)
    ax.grid(alpha=0.25)
    if title:
        ax.set_title(title, fontsize=13)
    return drew_err


def _caption(summaries: Sequence[Any], seeds: int, drew_err: bool) -> str:
    """What the error bars and the shading mean, as drawn."""
    if not drew_err:
        bars = "no error bars (one seed, rows without per-example noise)"
    elif seeds >= 2:
        bars = "error bars: +/-1 SE over seeds"
    else:
        bars = "error bars: +/-1 bootstrap SE over examples (one seed)"
    judged = [s for s in summaries if s is not None and s.noise.judged]
    if not judged:
        band = "target's noise band not judged"
    elif len(summaries) == 1:
        band = f"shaded: target's noise band (+/-{judged[0].noise.band(judged[0].z):.2f})"
    else:
        band = "shaded: target's noise band"
    return f"{bars}; {band}; numbers next to points: alpha"


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight", metadata={"Software": None})
    return atomic_write(path, buf.getvalue())


def _setup_matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cost_quality(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    axes: Sequence[str] = ("latency_model", "latency_wall", "rejection_rate"),
    noise_rows: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """One figure per call, one panel per cost axis, for the rows of ONE setting (seed-averaged here).

    The rejection-rate panel is the paper's cost for Gemma; only speculative methods have drafts to reject.
    ``noise_rows``: a several-seed run on the same examples, for the noise band (``summarize``).
    """
    plt = _setup_matplotlib()
    avg = average_seeds(rows)
    summaries = summarize(rows, noise_rows=noise_rows) if rows else []
    summary = summaries[0] if summaries else None
    seeds = max((int(r.get("seeds") or 1) for r in avg), default=1)
    fig, panels = plt.subplots(1, len(axes), figsize=(5.2 * len(axes), 4.8), squeeze=False)
    drew_err = False
    for ax, axis in zip(panels[0], axes):
        drew_err = _draw(ax, avg, axis, summary, None) or drew_err
    handles, labels = panels[0][0].get_legend_handles_labels()
    ncol = min(len(labels), 5)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, fontsize=12,
               frameon=False)
    title = context_title(summary) if summary is not None else ""
    fig.suptitle(f"{title}\n{_caption([summary], seeds, drew_err)}", fontsize=13)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_settings(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    vary: str,
    axis: str = "latency_model",
    noise_rows: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """A robustness figure: one panel per value of ``vary`` (temperature, gamma or top_p)."""
    if vary not in CONTEXT_COLUMNS:
        raise ValueError(f"cannot vary {vary!r}; choose one of {CONTEXT_COLUMNS}")
    plt = _setup_matplotlib()
    values = sorted({r[vary] for r in rows}, key=lambda v: (v is None, v if v is not None else 0))
    fig, panels = plt.subplots(1, len(values), figsize=(4.4 * len(values), 4.2), squeeze=False)
    seeds, first, drew_err, drawn = 1, None, False, []
    names = {"temperature": "T", "gamma": "gamma", "top_p": "top-p"}
    for ax, v in zip(panels[0], values):
        sub = [r for r in rows if r[vary] == v]
        avg = average_seeds(sub)
        seeds = max(seeds, max((int(r.get("seeds") or 1) for r in avg), default=1))
        summ = summarize(sub, noise_rows=noise_rows)
        first = first or (summ[0] if summ else None)
        value = "none" if v is None else f"{v:g}"
        drawn.append(summ[0] if summ else None)
        drew_err = _draw(ax, avg, axis, drawn[-1], f"{names.get(vary, vary)} = {value}") or drew_err
    handles: dict[str, Any] = {}
    for ax in panels[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            key = "Target" if lab.startswith("Target (") else "Draft" if lab.startswith("Draft (") else lab
            handles.setdefault(key, h)
    labels = list(handles)
    fig.legend([handles[k] for k in labels], labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(labels), 6), fontsize=12, frameon=False)
    if first is not None:
        c = first.context
        head = f"{c['task']} / {c['pair']}: {c['n_examples']} {c['split']} examples x {first.seeds} seed(s)"
        fig.suptitle(f"{head}, varying {names.get(vary, vary)}\n{_caption(drawn, seeds, drew_err)}", fontsize=13)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
