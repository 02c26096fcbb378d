"""Features of a position (cascade heads) and of each candidate token (token heads), from a summary.

A *summary* is the dict that :func:`specref.position_summary.summarize` returns, equally read back from logs or
computed from live distributions at decode time (:func:`live_summary`): both paths run the same code on
float32 values, so a head sees identical features offline and online (tests hold this bit for bit).

Token heads score a fixed candidate set: the top ``candidates`` tokens of each model (the union, duplicates
masked). Every other token gets score 0, i.e. "certainly not the right token"; so a token head defers all
tokens outside its candidate set or none of them, which keeps its offline objective exact from the logs
(THEORY.md section 4; docs/logs.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from specref.position_summary import summarize

__all__ = [
    "FeatureSpec",
    "candidate_set",
    "context_features",
    "feature_names",
    "features",
    "live_summary",
    "token_features",
]

KINDS = ("cascade", "token", "mixture")
HIDDEN = ("draft_hidden", "target_hidden")
_LOG_FLOOR = 1e-12  # log of a probability that underflowed to 0 stays finite

_CONTEXT = (
    "q_max", "p_max", "log_q_max", "log_p_max", "q_entropy", "p_entropy", "tv", "q_margin", "p_margin",
    "agree", "p_at_q_argmax", "q_at_p_argmax", "log_p_at_q_argmax", "log_q_at_p_argmax",
    "q_topk_mass", "p_topk_mass",
)
_CANDIDATE = ("q_v", "p_v", "log_q_v", "log_p_v", "q_v_rel", "p_v_rel", "is_q_argmax", "is_p_argmax")


@dataclass(frozen=True)
class FeatureSpec:
    """Which features a head reads.

    Attributes:
        kind: ``"cascade"`` or ``"mixture"`` (one feature vector per position) or ``"token"`` (one per
            candidate token).
        k: number of sorted top probabilities of each model among the context features (>= 2).
        candidates: token heads: the top ``candidates`` tokens of each model form the scored set.
        hidden: hidden-state features appended after the distribution features (``draft_hidden``,
            ``target_hidden``: each model's last hidden state at the position); at decode time the decoder
            passes them in the rule's ``features`` mapping under the same names.
        hidden_dims: their widths, in the order of ``hidden``.
    """

    kind: str = "cascade"
    k: int = 4
    candidates: int = 0
    hidden: tuple[str, ...] = ()
    hidden_dims: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"feature kind must be one of {KINDS}, got {self.kind!r}")
        if self.k < 2:
            raise ValueError(f"k must be >= 2, got {self.k}")
        if self.kind == "token" and self.candidates < 1:
            raise ValueError("a token head needs candidates >= 1")
        if self.kind != "token" and self.candidates:
            raise ValueError("candidates is only for token heads")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "hidden_dims", tuple(int(d) for d in self.hidden_dims))
        if len(self.hidden) != len(self.hidden_dims) or any(h not in HIDDEN for h in self.hidden):
            raise ValueError(f"hidden must name {HIDDEN} with one width each, got {self.hidden}, {self.hidden_dims}")

    @property
    def top_k(self) -> int:
        """How many top tokens of each model the features need (a log's top_k must be at least this)."""
        return max(self.k, self.candidates)

    @property
    def dim(self) -> int:
        """Length of one feature vector."""
        n = len(_CONTEXT) + 2 * (self.k - 1) + sum(self.hidden_dims)
        return n + (len(_CANDIDATE) if self.kind == "token" else 0)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden"], out["hidden_dims"] = list(self.hidden), list(self.hidden_dims)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(
            kind=str(data["kind"]),
            k=int(data["k"]),
            candidates=int(data.get("candidates", 0)),
            hidden=tuple(data.get("hidden", ())),
            hidden_dims=tuple(data.get("hidden_dims", ())),
        )


def feature_names(spec: FeatureSpec) -> list[str]:
    names = [*(_CANDIDATE if spec.kind == "token" else ()), *_CONTEXT]
    names += [f"q_top{i + 1}" for i in range(1, spec.k)] + [f"p_top{i + 1}" for i in range(1, spec.k)]
    for h, d in zip(spec.hidden, spec.hidden_dims):
        names += [f"{h}_{i}" for i in range(d)]
    return names


def live_summary(spec: FeatureSpec, q_rule: Tensor, p_rule: Tensor) -> dict[str, Tensor]:
    """The summary fields a head needs, from live untempered distributions ``[..., V]``."""
    if q_rule.shape[-1] < spec.top_k:
        raise ValueError(f"vocabulary of size {q_rule.shape[-1]} is smaller than the head's top_k {spec.top_k}")
    return summarize(q_rule, p_rule, top_k=spec.top_k, tail_points=None, head_fields_only=True)


def _log(x: Tensor) -> Tensor:
    return torch.log(x.clamp_min(_LOG_FLOOR))


def _hidden(spec: FeatureSpec, summary: Mapping[str, Any], extra: Mapping[str, Tensor] | None) -> list[Tensor]:
    out = []
    for name, dim in zip(spec.hidden, spec.hidden_dims):
        source = extra if extra is not None and name in extra else summary
        if name not in source:
            raise ValueError(f"this head reads hidden-state feature {name!r}: pass it in features={{{name!r}: ...}}")
        h = source[name].float()
        if h.shape[-1] != dim:
            raise ValueError(f"{name} has width {h.shape[-1]}, the head expects {dim}")
        out.append(h)
    return out


def _check_top_k(spec: FeatureSpec, summary: Mapping[str, Tensor]) -> None:
    have = summary["q_topk_probs"].shape[-1]
    if have < spec.top_k:
        raise ValueError(f"the summary keeps top-{have} tokens, the head needs top-{spec.top_k}")


def context_features(
    summary: Mapping[str, Tensor],  # summary fields with leading dims [...]
    spec: FeatureSpec,
    extra: Mapping[str, Tensor] | None = None,  # hidden states [..., H] at decode time
) -> Tensor:  # [..., F_context]
    """Per-position features (cascade heads; also appended to every candidate of a token head)."""
    _check_top_k(spec, summary)
    k = spec.k
    q_top, p_top = summary["q_topk_probs"][..., :k].float(), summary["p_topk_probs"][..., :k].float()
    q_max, p_max = q_top[..., 0], p_top[..., 0]
    p_at_q_arg = summary["p_at_q_topk"][..., 0].float()
    q_at_p_arg = summary["q_at_p_topk"][..., 0].float()
    agree = (summary["q_topk_ids"][..., 0] == summary["p_topk_ids"][..., 0]).float()
    cols = [
        q_max, p_max, _log(q_max), _log(p_max),
        summary["q_entropy"].float(), summary["p_entropy"].float(), summary["tv"].float(),
        q_top[..., 0] - q_top[..., 1], p_top[..., 0] - p_top[..., 1], agree,
        p_at_q_arg, q_at_p_arg, _log(p_at_q_arg), _log(q_at_p_arg),
        q_top.sum(-1), p_top.sum(-1),
    ]
    parts = [torch.stack(cols, dim=-1), q_top[..., 1:], p_top[..., 1:], *_hidden(spec, summary, extra)]
    return torch.cat(parts, dim=-1)


def candidate_set(
    summary: Mapping[str, Tensor], candidates: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The union of both models' top ``candidates`` tokens.

    Returns ``ids``, ``q_v``, ``p_v`` and ``valid``, each ``[..., 2 * candidates]``: first the draft's list,
    then the target's, whose tokens already in the draft's list are marked invalid (duplicates).
    """
    c = candidates
    q_ids, p_ids = summary["q_topk_ids"][..., :c], summary["p_topk_ids"][..., :c]
    ids = torch.cat([q_ids, p_ids], dim=-1)
    q_v = torch.cat([summary["q_topk_probs"][..., :c], summary["q_at_p_topk"][..., :c]], dim=-1).float()
    p_v = torch.cat([summary["p_at_q_topk"][..., :c], summary["p_topk_probs"][..., :c]], dim=-1).float()
    dup = (p_ids.unsqueeze(-1) == q_ids.unsqueeze(-2)).any(-1)
    valid = torch.cat([torch.ones_like(q_ids, dtype=torch.bool), ~dup], dim=-1)
    return ids, q_v, p_v, valid


def token_features(
    summary: Mapping[str, Tensor],
    spec: FeatureSpec,
    extra: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-candidate features: (ids ``[..., M]``, features ``[..., M, F]``, valid ``[..., M]``), M = 2c."""
    _check_top_k(spec, summary)
    ids, q_v, p_v, valid = candidate_set(summary, spec.candidates)
    q_max = summary["q_topk_probs"][..., :1].float()
    p_max = summary["p_topk_probs"][..., :1].float()
    own = torch.stack(
        [
            q_v, p_v, _log(q_v), _log(p_v),
            q_v / q_max.clamp_min(_LOG_FLOOR), p_v / p_max.clamp_min(_LOG_FLOOR),
            (ids == summary["q_topk_ids"][..., :1]).float(), (ids == summary["p_topk_ids"][..., :1]).float(),
        ],
        dim=-1,
    )  # [..., M, 8]
    ctx = context_features(summary, spec, extra)  # [..., F_ctx]
    ctx = ctx.unsqueeze(-2).expand(*own.shape[:-1], ctx.shape[-1])
    return ids, torch.cat([own, ctx], dim=-1), valid


def features(
    summary: Mapping[str, Tensor], spec: FeatureSpec, extra: Mapping[str, Tensor] | None = None
) -> Tensor:
    """Cascade, mixture: ``[..., F]``; token: ``[..., M, F]`` (see :func:`token_features` for ids and mask)."""
    if spec.kind != "token":
        return context_features(summary, spec, extra)
    return token_features(summary, spec, extra)[1]
