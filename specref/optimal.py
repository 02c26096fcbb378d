"""The optimal deferral characterization (THEORY.md section 6), with an oracle truth distribution P.

Two losses of a model's next-token distribution ``m`` against a ground-truth token ``y ~ P``:

* ``"argmax"``: the 0-1 loss of the model's argmax, ``E_P = 1 - P(argmax m)`` (ties: lowest index);
* ``"sampled"``: the 0-1 loss of a token sampled from ``m``, ``E_P = 1 - sum_v P(v) m(v)``.

Sequential cascades pay ``alpha`` per deferral (Lemma 1); speculative cascades pay ``alpha`` times the
rejection rate deferral causes, ``TV(p, q)`` (Lemma 3, Lemma 4). The plug-in estimators replace the unknown
``P(argmax m)`` by ``max m``: from Lemma 1 that gives Diff (and Chow when the target's loss is ignored), from
Lemma 4 it gives OPT. Lemma 5 bounds a plug-in's excess objective by the absolute errors of its estimates.

All functions work on ``[..., V]`` tensors and return ``[...]`` (or ``[..., V]`` for token-level sets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from specref.dists import tv

__all__ = [
    "LOSSES",
    "TokenOptimum",
    "expected_loss",
    "oracle_token_defer",
    "optimal_seq_defer",
    "optimal_spec_defer",
    "optimal_token_defer",
    "plugin_losses",
    "seq_objective",
    "spec_objective",
    "token_objective",
]

LOSSES = ("argmax", "sampled")


def expected_loss(truth: Tensor, model: Tensor, loss: str = "argmax") -> Tensor:
    """``E_{y~truth}[l(y, model)]`` ``[...]`` for the argmax or sampled 0-1 loss."""
    if loss == "argmax":
        top = model.argmax(dim=-1, keepdim=True)
        return 1 - truth.gather(-1, top).squeeze(-1)
    if loss == "sampled":
        return 1 - (truth * model).sum(dim=-1)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def seq_objective(defer: Tensor, loss_q: Tensor, loss_p: Tensor, alpha: float) -> Tensor:
    """Eq. 3: ``L_seq(r) = (1 - r) E[l(q)] + r (E[l(p)] + alpha)``."""
    return (1 - defer) * loss_q + defer * (loss_p + alpha)


def spec_objective(defer: Tensor, loss_q: Tensor, loss_p: Tensor, alpha: float, tv_pq: Tensor) -> Tensor:
    """Eq. 8: ``L_spec(r) = (1 - r) E[l(q)] + r (E[l(p)] + alpha TV(p, q))``."""
    return (1 - defer) * loss_q + defer * (loss_p + alpha * tv_pq)


def optimal_seq_defer(truth: Tensor, q: Tensor, p: Tensor, alpha: float, loss: str = "argmax") -> Tensor:
    """Lemma 1: defer (True) iff ``E_P[l(q)] > E_P[l(p)] + alpha``."""
    return expected_loss(truth, q, loss) > expected_loss(truth, p, loss) + alpha


def optimal_spec_defer(
    truth: Tensor,
    q: Tensor,
    p: Tensor,
    alpha: float,
    loss: str = "argmax",
    q_mix: Tensor | None = None,
    p_mix: Tensor | None = None,
) -> Tensor:
    """Lemma 4 / Eq. 9: defer iff ``E_P[l(q)] > E_P[l(p)] + alpha TV(p, q)``.

    Losses use ``q``, ``p``; the TV is that of the pair that is mixed (``q_mix``, ``p_mix``, default q, p),
    matching the temperature convention of the rules.
    """
    d = tv(p if p_mix is None else p_mix, q if q_mix is None else q_mix)
    return expected_loss(truth, q, loss) > expected_loss(truth, p, loss) + alpha * d


def plugin_losses(q: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """Plug-in estimates of the argmax 0-1 losses: ``1 - max q`` and ``1 - max p``.

    Substituted into Lemma 1 they give Diff; with the target's loss set to 0, Chow; into Lemma 4, OPT.
    """
    return 1 - q.max(dim=-1).values, 1 - p.max(dim=-1).values


# ---- token-specific deferral ---------------------------------------------------------------------


def token_objective(
    truth: Tensor,  # [..., V] oracle next-token distribution
    q: Tensor,  # [..., V] draft distribution (the one drafts are sampled from)
    p: Tensor,  # [..., V] target distribution
    defer: Tensor,  # [..., V] or [..., S, V] candidate deferral sets (bool or 0/1)
    alpha: float,
) -> Tensor:
    """``E_{v~pi}[1(v != y)] + alpha * rejection(pi)`` for ``pi = q (1 - r) + p sum_u q(u) r(u)``.

    ``defer`` may carry an extra set dimension ``S`` before ``V`` to score many sets at once.
    """
    r = defer.to(q.dtype)
    if r.dim() == q.dim() + 1:
        q_, p_, t_ = q.unsqueeze(-2), p.unsqueeze(-2), truth.unsqueeze(-2)
    else:
        q_, p_, t_ = q, p, truth
    eta = (q_ * r).sum(dim=-1, keepdim=True)
    pi = q_ * (1 - r) + p_ * eta
    loss = 1 - (t_ * pi).sum(dim=-1)
    rejection = (q_ - pi).clamp_min(0).sum(dim=-1)
    return loss + alpha * rejection


@dataclass(frozen=True)
class TokenOptimum:
    """Best deferral set per position: ``defer`` ``[..., V]`` bool and its objective ``value`` ``[...]``."""

    defer: Tensor
    value: Tensor


def optimal_token_defer(truth: Tensor, q: Tensor, p: Tensor, alpha: float, max_vocab: int = 16) -> TokenOptimum:
    """Exact minimiser of :func:`token_objective` over all ``2**V`` deferral sets, by enumeration.

    Ties between sets go to the one enumerated first (fewest deferrals in binary order).
    """
    vocab = q.shape[-1]
    if vocab > max_vocab:
        raise ValueError(f"enumerating 2**{vocab} deferral sets is too large (max_vocab={max_vocab})")
    codes = torch.arange(2**vocab, device=q.device)
    sets = ((codes.unsqueeze(-1) >> torch.arange(vocab, device=q.device)) & 1).bool()  # [S, V]
    shape = (*q.shape[:-1], 2**vocab, vocab)
    values = token_objective(truth, q, p, sets.expand(shape), alpha)  # [..., S]
    best = values.argmin(dim=-1)
    return TokenOptimum(defer=sets[best], value=values.gather(-1, best.unsqueeze(-1)).squeeze(-1))


def oracle_token_defer(truth: Tensor, alpha: float) -> Tensor:
    """The oracle the paper's token rules plug into: defer v iff ``P(v) < max_u P(u) - alpha``."""
    return truth < (truth.max(dim=-1, keepdim=True).values - alpha)
