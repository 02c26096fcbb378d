"""The logged-probabilities schema: which columns a log has, given its layout (docs/logs.md).

One row per (example, position). The layout fixes every list width (top-k, tail grid, alpha grid, hidden
sizes), so each list column is a fixed-size Arrow list and a column converts to a ``[N, width]`` array
without copies or ragged checks. Nothing here imports pyarrow or torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# The summary's defaults are the schema's too; they live in specref.defaults so that the pure summary math
# (specref.position_summary) reads them without importing the logs.
from specref.defaults import DEFAULT_ALPHAS, DEFAULT_TAIL_POINTS, DEFAULT_TOP_K, TOKEN_RULES

__all__ = [
    "DEFAULT_ALPHAS", "DEFAULT_TAIL_POINTS", "DEFAULT_TOP_K", "FORMAT", "TOKEN_RULES", "VERSION", "Column",
    "LogFormatError", "LogLayout", "columns",
]

FORMAT = "specref-logs"
VERSION = 1


class LogFormatError(ValueError):
    """A log directory, manifest or shard that is missing, corrupt, truncated or inconsistent."""


@dataclass(frozen=True)
class Column:
    """One column: ``kind`` is int32/int64/float32/string; ``width`` 0 for scalars, else a fixed list width."""

    name: str
    kind: str
    width: int = 0
    doc: str = ""


@dataclass(frozen=True)
class LogLayout:
    """What determines the columns of a log; two logs with equal layouts can be concatenated.

    Attributes:
        top_k: width of each model's top-k lists (capped at the vocabulary size).
        vocab_size: the shared vocabulary size V of the pair.
        tail_points: number G of eta grid points of ``tail_excess`` (``eta_j = j / (G - 1)``).
        alphas: the alpha grid of the exact token-rule columns, or empty for none.
        reference: rows carry a reference (truth) token; False for on-policy logs without one.
        on_policy: rows carry the drafted token (logged through the decoder's round hook).
        hidden: ``{column name: width}`` of optional hidden-state features (``draft_hidden``, ``target_hidden``).
    """

    top_k: int
    vocab_size: int
    tail_points: int
    alphas: tuple[float, ...] = ()
    reference: bool = True
    on_policy: bool = False
    hidden: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.vocab_size < 1 or self.top_k > self.vocab_size:
            raise ValueError(f"need 1 <= top_k <= vocab_size, got top_k={self.top_k}, vocab_size={self.vocab_size}")
        if self.tail_points < 2:
            raise ValueError(f"tail_points must be >= 2, got {self.tail_points}")
        if self.alphas and not self.reference:
            raise ValueError("exact token-rule columns need a reference token")
        for name, width in self.hidden.items():
            if name not in ("draft_hidden", "target_hidden") or int(width) < 1:
                raise ValueError(
                    f"hidden features are draft_hidden/target_hidden with a positive width, got {name}={width}"
                )
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["alphas"] = list(self.alphas)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogLayout:
        try:
            return cls(
                top_k=int(data["top_k"]),
                vocab_size=int(data["vocab_size"]),
                tail_points=int(data["tail_points"]),
                alphas=tuple(float(a) for a in data.get("alphas", ())),
                reference=bool(data.get("reference", True)),
                on_policy=bool(data.get("on_policy", False)),
                hidden={str(k): int(v) for k, v in dict(data.get("hidden", {})).items()},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise LogFormatError(f"bad log layout {data!r}: {err}") from None


def columns(layout: LogLayout) -> list[Column]:
    """The columns of a log with this layout, in file order."""
    k, g, a = layout.top_k, layout.tail_points, len(layout.alphas)
    cols = [
        Column("example_index", "int64", doc="0-based index of the example in its task split (resume key)"),
        Column("example_id", "string", doc="the task's example id"),
        Column("position", "int32", doc="0-based position of the predicted token in the completion"),
    ]
    if layout.reference:
        cols.append(Column("reference", "int32", doc="the reference (truth) token y at this position"))
    if layout.on_policy:
        cols += [
            Column("drafted", "int32", doc="the token the draft model sampled here (on-policy logs)"),
            Column("q_drafted", "float32", doc="q(drafted)"),
            Column("p_drafted", "float32", doc="p(drafted)"),
        ]
    cols += [
        Column("q_topk_ids", "int32", k, "draft's k most likely tokens, descending, ties to the lower id"),
        Column("q_topk_probs", "float32", k, "their untempered draft probabilities"),
        Column("p_at_q_topk", "float32", k, "target probabilities of the draft's top-k tokens"),
        Column("p_topk_ids", "int32", k, "target's k most likely tokens, descending, ties to the lower id"),
        Column("p_topk_probs", "float32", k, "their untempered target probabilities"),
        Column("q_at_p_topk", "float32", k, "draft probabilities of the target's top-k tokens"),
        Column("q_max", "float32", doc="max_v q(v)"),
        Column("p_max", "float32", doc="max_v p(v)"),
        Column("q_argmax", "int32", doc="argmax q (lowest id on ties)"),
        Column("p_argmax", "int32", doc="argmax p (lowest id on ties)"),
        Column("q_entropy", "float32", doc="entropy of q in nats (full vocabulary)"),
        Column("p_entropy", "float32", doc="entropy of p in nats (full vocabulary)"),
        Column("tv", "float32", doc="TV(p, q) = sum_v max(0, p(v) - q(v)) over the full vocabulary"),
        Column("qp_dot", "float32", doc="sum_v q(v) p(v)"),
        Column("p_sqnorm", "float32", doc="sum_v p(v)^2"),
        Column("q_tail", "float32", doc="q mass outside the union of both top-k sets"),
        Column("p_tail", "float32", doc="p mass outside the union of both top-k sets"),
        Column("tail_excess", "float32", g, "sum over the tail of max(0, q - eta p) at eta = j/(G-1)"),
    ]
    if layout.reference:
        cols += [
            Column("q_ref", "float32", doc="q(reference)"),
            Column("p_ref", "float32", doc="p(reference)"),
        ]
    if a:
        for rule in TOKEN_RULES:
            cols += [
                Column(f"{rule}_eta", "float32", a, f"{rule}: q(D), the chance a draft is deferred, per alpha"),
                Column(f"{rule}_pi_ref", "float32", a, f"{rule}: pi(reference) per alpha"),
                Column(f"{rule}_rej", "float32", a, f"{rule}: rejection rate TV(pi, q) per alpha"),
                Column(f"{rule}_pi_argmax", "int32", a, f"{rule}: argmax pi per alpha"),
            ]
    for name, width in sorted(layout.hidden.items()):
        model = name.split("_")[0]
        doc = f"the {model}'s last hidden state, the one that produced its distribution here"
        cols.append(Column(name, "float32", int(width), doc))
    return cols


def column_names(layout: LogLayout) -> list[str]:
    return [c.name for c in columns(layout)]


def check_names(requested: Sequence[str] | None, layout: LogLayout) -> list[str]:
    """Validate a column selection against a layout; None selects all."""
    names = column_names(layout)
    if requested is None:
        return names
    missing = [n for n in requested if n not in names]
    if missing:
        raise LogFormatError(f"columns {missing} are not in these logs (they have: {', '.join(names)})")
    return list(requested)
