"""Printing and saving Table-2 summaries: a fixed-width table for the terminal, Markdown and a tidy CSV.

Every table carries a footnote with the rule its "to match" column was read by (the target's noise band, an
explicit tolerance, or "not judged"; :mod:`specref.repro.summary`), the noise estimate itself, and the
modeled versus the measured step costs that explain why wall-clock speed-ups can fall below the modeled ones.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from specref.repro.methods import order_key
from specref.repro.store import atomic_write
from specref.repro.summary import Summary

#: Display names of the metric keys the tasks report (tables and plots spell them the same way).
METRIC_NAMES = {"bleu": "BLEU", "rouge2": "ROUGE-2", "rouge_2": "ROUGE-2", "accuracy": "accuracy (%)",
                "acc": "accuracy (%)"}


def metric_name(key: str) -> str:
    """Display name of a metric key ("bleu" -> "BLEU"); unknown keys unchanged."""
    return METRIC_NAMES.get(str(key).lower(), str(key))

__all__ = ["format_summaries", "markdown_summaries", "write_summary_csv", "context_title"]

_AXIS_NAMES = {
    "latency_model": "model",
    "latency_wall": "wall",
    "target_calls_per_token": "calls/token",
    "rejection_rate": "rejection",
}


def _nan(x: float) -> bool:
    return x is None or math.isnan(x)


def _match_cell(s, axis: str, judged: bool = True) -> str:
    if not judged:
        return "not judged"
    if _nan(s.cost_at_match):
        return "never"
    if axis.startswith("latency"):
        return f"{s.speedup:.2f}x ({-100 * s.reduction:+.0f}%)"
    return f"{s.cost_at_match:.3f}"


def _best_cell(s) -> str:
    if _nan(s.best_quality):
        return "none"
    return f"{s.best_quality:.2f} ({s.best_delta:+.2f})"


def context_title(summary: Summary) -> str:
    c = summary.context
    top_p = "no top-p" if c.get("top_p") is None else f"top_p={c['top_p']:g}"
    return (f"{c['task']} / {c['pair']}: T={c['temperature']:g}, gamma={c['gamma']}, {top_p}, "
            f"{c['n_examples']} {c['split']} examples x {summary.seeds} seed(s), max_new_tokens={c['max_new_tokens']}")


def _pair_up(by_axis: dict[str, list[Summary]]) -> list[tuple[tuple, dict[str, Summary]]]:
    """Summaries of the same context side by side, one per axis, in first-seen order."""
    out: dict[tuple, dict[str, Summary]] = {}
    for axis, summaries in by_axis.items():
        for s in summaries:
            out.setdefault(tuple(s.context.values()), {})[axis] = s
    return list(out.items())


def _rows(group: dict[str, Summary]) -> tuple[list[str], list[list[str]]]:
    axes = list(group)
    first = group[axes[0]]
    header = ["method", "points"]
    for axis in axes:
        name = _AXIS_NAMES.get(axis, axis)
        match = "speed-up to match" if axis.startswith("latency") else "cost to match"
        header += [f"{match} ({name})", f"best {metric_name(first.metric)} in budget ({name})"]
    labels = sorted({m.label: m.method for s in group.values() for m in s.methods}.items(),
                    key=lambda kv: (order_key(kv[1]), kv[0]))
    rows = []
    for label, _ in labels:
        row = [label, ""]
        for axis in axes:
            found = [m for m in group[axis].methods if m.label == label]
            if not found:
                row += ["", ""]
                continue
            row[1] = str(found[0].points)
            row += [_match_cell(found[0], axis, group[axis].judged), _best_cell(found[0])]
        rows.append(row)
    return header, rows


def match_rule_text(s: Summary) -> str:
    """How the "to match" column was read, with the noise it was judged against."""
    if s.match_rule == "tol":
        return (f"'to match': speed-up over the target (latency change) at the cheapest point with quality >= "
                f"target - {s.tol:g} = {s.match_level:.2f}, a tolerance given explicitly ({s.noise.text(s.z)}, "
                f"not used) ('never' if none reaches it)")
    if s.match_rule == "not judged":
        return (f"'to match' not judged: {s.noise.detail} (a single seed's difference from the target can be "
                "sampling noise)")
    text = (f"'to match': speed-up over the target (latency change) at the cheapest point whose quality is "
            f"within the target's noise band, >= target - {s.z:g} x noise = {s.match_level:.2f} "
            f"({s.noise.text(s.z)}; noise = standard error of a method's difference from the target) "
            "('never' if none reaches it)")
    if not _nan(s.draft_quality) and s.draft_quality >= s.match_level:
        text += (f"; the draft's own {s.draft_quality:.2f} is within the band, so every curve matches at its "
                 "cheapest point and (a) cannot tell the methods apart here")
    return text


def _legend(s: Summary) -> str:
    rule = "linear interpolation between frontier points" if s.interpolate else "measured points only"
    costs = f" Step costs: {s.costs.text()}." if s.costs is not None else ""
    metric = metric_name(s.metric)
    return (f"target {metric} {s.target_quality:.2f}, draft {metric} {s.draft_quality:.2f}. model = "
            f"(target calls + c x draft calls) / target-only calls; wall = measured seconds / target-only seconds. "
            f"{match_rule_text(s)}; 'in budget': best quality (minus the target's) at latency <= "
            f"the target's ('none' if every point is slower); {rule}.{costs}")


def _line(cells: list[str], widths: list[int]) -> str:
    return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths)).rstrip()


def format_summaries(by_axis: dict[str, list[Summary]]) -> str:
    """A fixed-width text table per setting, columns per cost axis (e.g. modeled and wall-clock)."""
    blocks = []
    for _, group in _pair_up(by_axis):
        header, rows = _rows(group)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        first = next(iter(group.values()))
        blocks.append("\n".join([
            "Table 2 - " + context_title(first),
            _line(header, widths),
            _line(["-" * w for w in widths], widths),
            *(_line(r, widths) for r in rows),
            _legend(first),
        ]))
    return "\n\n".join(blocks)


def markdown_summaries(by_axis: dict[str, list[Summary]]) -> str:
    """The same tables in Markdown (for paper_repro.md and the output folder)."""
    blocks = []
    for _, group in _pair_up(by_axis):
        header, rows = _rows(group)
        first = next(iter(group.values()))
        md = [f"### {context_title(first)}", "", "| " + " | ".join(header) + " |",
              "|" + "|".join("---" for _ in header) + "|"]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        md += ["", _legend(first)]
        blocks.append("\n".join(md))
    return "\n\n".join(blocks) + "\n"


SUMMARY_COLUMNS = (
    "task", "pair", "temperature", "gamma", "top_p", "split", "n_examples", "max_new_tokens", "seeds", "axis",
    "label", "method", "points", "cost_at_match", "reduction", "speedup", "best_quality", "best_delta",
    "metric", "target_quality", "draft_quality", "ref_cost", "tol", "interpolate",
    # how (a) was read: match_rule noise / tol / not judged, at quality >= match_level
    "match_rule", "match_level", "z", "noise_se", "noise_method",
    # modeled and measured step costs of the setting
    "cost_ratio", "cost_ratio_source", "cost_ratio_measured", "verify_cost_measured",
)


def write_summary_csv(path: str | Path, summaries: Sequence[Summary]) -> None:
    """Tidy Table-2 CSV (one row per setting, axis and method), written atomically (unique temp + replace)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for s in summaries:
        costs = s.costs
        for m in sorted(s.methods, key=lambda m: (order_key(m.method), m.label)):
            ctx = s.context
            w.writerow([
                ctx["task"], ctx["pair"], ctx["temperature"], ctx["gamma"],
                "" if ctx["top_p"] is None else ctx["top_p"], ctx["split"], ctx["n_examples"],
                ctx["max_new_tokens"], s.seeds, s.axis, m.label, m.method, m.points,
                *(_fmt(x) for x in (m.cost_at_match, m.reduction, m.speedup, m.best_quality, m.best_delta)),
                s.metric, *(_fmt(x) for x in (s.target_quality, s.draft_quality, s.ref_cost)),
                "" if s.tol is None else s.tol, int(s.interpolate),
                s.match_rule, _fmt(s.match_level), s.z, _fmt(s.noise.se), s.noise.method,
                *((_fmt(costs.c), costs.c_source, _fmt(costs.c_measured), _fmt(costs.verify_measured))
                  if costs is not None else ("", "", "", "")),
            ])
    atomic_write(path, buf.getvalue())


def _fmt(x: float) -> str:
    return "" if _nan(x) else f"{x:.6g}"
