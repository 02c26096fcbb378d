"""Cost-quality plots (PNG, Agg backend): one curve per method, the target's and the draft's quality marked."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from specref.repro.methods import METHODS, order_key
from specref.repro.report import context_title
from specref.repro.summary import CONTEXT_COLUMNS, average_seeds, summarize

__all__ = ["plot_cost_quality", "plot_settings"]

_AXIS_LABELS = {
    "latency_model": "modeled latency relative to target-only",
    "latency_wall": "wall-clock latency relative to target-only",
    "target_calls_per_token": "target calls per emitted token",
    "rejection_rate": "rejection rate",
}
_MARKERS = "osD^v<>PXh*p"


def _style(method: str) -> dict[str, Any]:
    import matplotlib

    i = order_key(method)
    cmap = matplotlib.colormaps["tab20"]
    return {"color": cmap(i % 20), "marker": _MARKERS[i % len(_MARKERS)]}


def _finite(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))


def _draw(ax, rows: Sequence[Mapping[str, Any]], axis: str, title: str | None) -> None:
    curves: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        if _finite(r.get(axis)) and _finite(r.get("quality")):
            curves[r["method"]].append(r)
    metric = next((r["metric"] for r in rows if r.get("metric")), "quality")
    for method in sorted(curves, key=order_key):
        pts = sorted(curves[method], key=lambda r: (float(r[axis]), float(r["quality"])))
        xs = [float(r[axis]) for r in pts]
        ys = [float(r["quality"]) for r in pts]
        label = METHODS[method].label if method in METHODS else method
        st = _style(method)
        if method == "target":
            ax.axhline(ys[0], color="black", ls="--", lw=1, label=f"Target ({ys[0]:.2f})")
            ax.plot(xs, ys, marker="*", ms=12, color="black", ls="none")
        elif method == "draft":
            ax.axhline(ys[0], color="grey", ls=":", lw=1, label=f"Draft ({ys[0]:.2f})")
            ax.plot(xs, ys, marker="X", ms=9, color="grey", ls="none")
        else:
            ax.plot(xs, ys, label=label, lw=1.3, ms=5, **st)
    if axis.startswith("latency"):
        ax.axvline(1.0, color="black", lw=0.6, alpha=0.4)
    ax.set_xlabel(_AXIS_LABELS.get(axis, axis))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=130, bbox_inches="tight", metadata={"Software": None})
    tmp.replace(path)
    return path


def plot_cost_quality(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    axes: Sequence[str] = ("latency_model", "latency_wall", "rejection_rate"),
) -> Path:
    """One figure per call, one panel per cost axis, for the rows of ONE setting (seed-averaged here).

    The rejection-rate panel is the paper's cost for Gemma; only speculative methods have drafts to reject.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    avg = average_seeds(rows)
    summaries = summarize(avg) if avg else []
    title = context_title(summaries[0]) if summaries else None
    fig, panels = plt.subplots(1, len(axes), figsize=(5.6 * len(axes), 4.4), squeeze=False)
    for ax, axis in zip(panels[0], axes):
        _draw(ax, avg, axis, None)
    handles, labels = panels[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_settings(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    vary: str,
    axis: str = "latency_model",
) -> Path:
    """A robustness figure: one panel per value of ``vary`` (temperature, gamma or top_p)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if vary not in CONTEXT_COLUMNS:
        raise ValueError(f"cannot vary {vary!r}; choose one of {CONTEXT_COLUMNS}")
    avg = average_seeds(rows)
    values = sorted({r[vary] for r in avg}, key=lambda v: (v is None, v if v is not None else 0))
    fig, panels = plt.subplots(1, len(values), figsize=(4.6 * len(values), 4.0), squeeze=False)
    for ax, v in zip(panels[0], values):
        sub = [r for r in avg if r[vary] == v]
        _draw(ax, sub, axis, f"{vary} = {'none' if v is None else f'{v:g}'}")
    from matplotlib.lines import Line2D

    handles = {
        "Target": Line2D([], [], color="black", ls="--", marker="*", ms=10),
        "Draft": Line2D([], [], color="grey", ls=":", marker="X", ms=8),
    }
    for ax in panels[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if not lab.startswith(("Target (", "Draft (")):
                handles.setdefault(lab, h)
    labels = list(handles)
    fig.legend([handles[k] for k in labels], labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
