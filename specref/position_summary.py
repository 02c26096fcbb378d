"""Per-position summaries of a draft/target pair of FULL next-token distributions (pure tensor math).

One function, :func:`summarize`, turns the untempered pair ``(q, p)`` ``[..., V]`` into the fixed-size
quantities that the logs store (docs/logs.md) and that deferral heads read. The logger calls it on
teacher-forced distributions and a head calls it on the live distributions at decode time, so features
computed from logs and from live distributions go through the same code: identical by construction.
Both :mod:`specref.logs` and :mod:`specref.heads` import it, so it stands below both and imports neither.

Sums over the vocabulary run in float64 (tail masses of 1e-6 matter); every float output is then rounded
to float32, the dtype stored in the logs, so the live path sees exactly the values a log would hold.

Why these fields (THEORY.md sections 3, 4, 6): the cascade rules and the Lemma 4 oracle need max q, max p,
the argmaxes, TV(p, q) and q/p at the reference token: all exact here. The token rules' objective
``1 - pi(y) + alpha * TV(pi, q)`` with ``pi = q (1 - r) + p * q(D)`` needs sums over the deferred set ``D``,
which for the baseline token rules spans most of the vocabulary. A top-k sketch cannot make those sums
exact, so for the fixed rules they are computed here, from the full distributions, on an alpha grid
(``token_v*`` fields). Learned token heads only score the union of both top-k sets and treat every other
token alike (all deferred or none), so their objective is exact from the union's probabilities plus the
tail masses, except the tail's share of the rejection, ``f(eta) = sum_tail max(0, q - eta p)``, which is
stored on a grid of eta (``tail_excess``) and interpolated with a certified bound (specref.logs.offline).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from specref import rules
from specref.defaults import DEFAULT_ALPHAS, DEFAULT_TAIL_POINTS, DEFAULT_TOP_K, TOKEN_RULES
from specref.dists import stable_top_k, tv

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_TAIL_POINTS",
    "DEFAULT_TOP_K",
    "TOKEN_RULES",
    "sorted_top_k",
    "summarize",
    "tail_grid",
]


# Clamp before logs so that a probability that underflowed to 0 gives a finite feature.
_TINY = 1e-30


def tail_grid(points: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Tensor:
    """The eta grid ``[G]`` of the stored tail excess: ``j / (G - 1)`` for ``j = 0..G-1``."""
    if points < 2:
        raise ValueError(f"tail grid needs at least 2 points, got {points}")
    return torch.linspace(0.0, 1.0, points, dtype=dtype, device=device)


def sorted_top_k(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of ``x`` ``[..., V]``: (ids ``[..., k]`` long, values ``[..., k]``).

    Descending; ties go to the lower token index (a stable sort), so ``ids[..., 0]`` is torch.argmax's
    answer and the result never depends on the device's top-k kernel.
    """
    return stable_top_k(x, k)


def summarize(
    q: Tensor,  # [..., V] untempered draft distribution
    p: Tensor,  # [..., V] untempered target distribution
    top_k: int = DEFAULT_TOP_K,
    reference: Tensor | None = None,  # [...] long reference (truth) token, or None
    tail_points: int | None = DEFAULT_TAIL_POINTS,
    alphas: Sequence[float] | None = None,
    head_fields_only: bool = False,
) -> dict[str, Tensor]:
    """Fixed-size summary of each position; keys are the log column names (docs/logs.md).

    ``tail_points=None`` skips the tail excess and ``alphas=None`` the exact token-rule fields, which a
    head at decode time does not need; ``head_fields_only`` also skips the tail masses and the inner products
    (every field a head's features read is still computed, by the same operations). ``top_k`` is capped
    at ``V``.
    Returns float32 tensors for probabilities and long tensors for token ids.
    """
    if q.shape != p.shape:
        raise ValueError(f"q and p must have the same shape, got {tuple(q.shape)} and {tuple(p.shape)}")
    vocab = q.shape[-1]
    k = min(int(top_k), vocab)
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    q64, p64 = q.double(), p.double()
    out: dict[str, Tensor] = {}

    q_ids, q_top = sorted_top_k(q, k)
    p_ids, p_top = sorted_top_k(p, k)
    out["q_topk_ids"], out["q_topk_probs"] = q_ids, q_top
    out["p_topk_ids"], out["p_topk_probs"] = p_ids, p_top
    out["p_at_q_topk"] = p.gather(-1, q_ids)
    out["q_at_p_topk"] = q.gather(-1, p_ids)
    out["q_max"], out["p_max"] = q_top[..., 0], p_top[..., 0]
    out["q_argmax"], out["p_argmax"] = q_ids[..., 0], p_ids[..., 0]

    out["q_entropy"] = -(q64 * torch.log(q64.clamp_min(_TINY))).sum(-1)
    out["p_entropy"] = -(p64 * torch.log(p64.clamp_min(_TINY))).sum(-1)
    out["tv"] = (p64 - q64).clamp_min(0).sum(-1)
    if not head_fields_only:
        # Inner products give the expected losses when the target itself is taken as the truth (on-policy logs).
        out["qp_dot"] = (q64 * p64).sum(-1)
        out["p_sqnorm"] = (p64 * p64).sum(-1)

        # Tail: every token outside the union of both top-k sets.
        in_union = torch.zeros(q.shape, dtype=torch.bool, device=q.device)
        in_union.scatter_(-1, q_ids, True).scatter_(-1, p_ids, True)
        q_tail64 = torch.where(in_union, 0.0, q64)
        p_tail64 = torch.where(in_union, 0.0, p64)
        out["q_tail"], out["p_tail"] = q_tail64.sum(-1), p_tail64.sum(-1)
        if tail_points is not None:
            grid = tail_grid(tail_points, device=q.device)
            out["tail_excess"] = torch.stack(
                [(q_tail64 - float(eta) * p_tail64).clamp_min(0).sum(-1) for eta in grid], dim=-1
            )

    if reference is not None:
        ref = reference.long()
        if ref.shape != q.shape[:-1]:
            raise ValueError(f"reference must be {tuple(q.shape[:-1])}, got {tuple(ref.shape)}")
        if ref.numel() and (int(ref.min()) < 0 or int(ref.max()) >= vocab):
            raise ValueError(f"reference token ids must lie in [0, {vocab})")
        out["reference"] = ref
        out["q_ref"] = q.gather(-1, ref.unsqueeze(-1)).squeeze(-1)
        out["p_ref"] = p.gather(-1, ref.unsqueeze(-1)).squeeze(-1)
        if alphas is not None:
            out.update(_token_rules_exact(q, p, ref, alphas))
    elif alphas is not None:
        raise ValueError("the exact token-rule fields need a reference token")

    return {
        name: value.long() if name.endswith(("_ids", "argmax")) or name == "reference" else value.float()
        for name, value in out.items()
    }


def _token_rules_exact(
    q: Tensor,  # [..., V]
    p: Tensor,  # [..., V]
    ref: Tensor,  # [...] long
    alphas: Sequence[float],
) -> dict[str, Tensor]:
    """Exact per-alpha quantities of the baseline token rules (THEORY.md section 4) from full distributions.

    For each rule and alpha: ``eta = q(D)`` (probability that a draft is deferred), ``pi(y)``, the
    GenSpecSample rejection rate ``TV(pi, q) = sum_{v in D} max(0, q(v) - eta p(v))`` and argmax pi.
    Decisions compare in the input dtype, as the rules do at decode time; sums run in float64.
    """
    q64, p64 = q.double(), p.double()
    q_ref = q64.gather(-1, ref.unsqueeze(-1)).squeeze(-1)
    p_ref = p64.gather(-1, ref.unsqueeze(-1)).squeeze(-1)
    fields: dict[str, list[Tensor]] = {}
    for rule in TOKEN_RULES:
        for alpha in alphas:
            r = rules.get_swept(rule, float(alpha))
            d = r.decide(q, p, q, p)  # [..., V] bool, compared in the input dtype
            eta = r.deferred_mass(d, q64)[..., 0]
            r_ref = d.gather(-1, ref.unsqueeze(-1)).squeeze(-1).double()
            pi = r.mix(d.double(), q64, p64)  # q (1 - r) + p eta
            rej = tv(q64, pi)  # TV(pi, q) = sum_D max(0, q - eta p): GenSpecSample's rejection rate (Lemma 3)
            fields.setdefault(f"{rule}_eta", []).append(eta)
            fields.setdefault(f"{rule}_pi_ref", []).append(q_ref * (1 - r_ref) + p_ref * eta)
            fields.setdefault(f"{rule}_rej", []).append(rej)
            fields.setdefault(f"{rule}_pi_argmax", []).append(pi.argmax(-1))
    return {name: torch.stack(values, dim=-1) for name, values in fields.items()}
