"""GenSpecSample (Algorithm 4): verify a draft token against any target distribution pi.

Draw ``v ~ q``; accept with probability ``a(v)``; on rejection draw from ``residual``. With the default
pieces ``a = min(1, pi / q)`` and ``residual = norm(max(0, pi - q))`` the emitted token is distributed
exactly as ``pi``. Lossy speculative decoding plugs in its own ``a`` and ``residual`` (see
:mod:`specref.rules`); :func:`emitted` gives the distribution any such pair produces.
"""

from __future__ import annotations

import torch
from torch import Tensor

from specref.dists import sample_categorical

__all__ = ["acceptance", "emitted", "rejection_rate", "residual", "sample_position"]


def acceptance(q: Tensor, pi: Tensor) -> Tensor:
    """Acceptance probability ``min(1, pi(v) / q(v))`` of each candidate ``v``: ``[..., V] -> [..., V]``.

    Tokens with ``q(v) = 0`` are never drafted; they get 1 so the tensor stays finite.
    """
    drafted = q > 0
    safe_q = torch.where(drafted, q, 1.0)
    return torch.where(drafted, (pi / safe_q).clamp(max=1.0), 1.0)


def residual(q: Tensor, pi: Tensor) -> Tensor:
    """Residual ``norm(max(0, pi - q))`` ``[..., V]``.

    Where ``pi <= q`` everywhere (so ``pi = q``) a rejection has probability 0 and any distribution would do;
    we return ``pi`` so the result is always a valid distribution.
    """
    excess = (pi - q).clamp_min(0)
    mass = excess.sum(dim=-1, keepdim=True)
    # Rounding leaves tiny positive excess where pi == q mathematically; treat that as no residual.
    eps = 16 * torch.finfo(q.dtype).eps
    # normalize(excess) where it is used (mass > eps: its sum is mass, its clamp a no-op), without summing
    # again; the clamp keeps the unused entries finite
    return torch.where(mass > eps, excess / mass.clamp_min(eps), pi)


def rejection_rate(q: Tensor, accept: Tensor) -> Tensor:
    """Probability that a draft ``v ~ q`` is rejected: ``sum_v q(v) (1 - a(v))``, ``[..., V] -> [...]``.

    With ``a = min(1, pi/q)`` this is ``sum_v max(0, q(v) - pi(v)) = TV(pi, q)``.
    """
    return (q * (1 - accept)).sum(dim=-1)


def emitted(q: Tensor, accept: Tensor, resid: Tensor) -> Tensor:
    """Closed-form distribution of the token GenSpecSample emits: ``q a + (1 - sum q a) residual``."""
    kept = q * accept
    return kept + (1 - kept.sum(dim=-1, keepdim=True)).clamp_min(0) * resid


def sample_position(
    q: Tensor,  # [..., V] draft distribution (tempered) the candidate is drawn from
    accept: Tensor,  # [..., V] acceptance probability per candidate
    resid: Tensor,  # [..., V] residual distribution
    u_draft: Tensor,  # [...] uniforms for the draft
    u_accept: Tensor,  # [...] uniforms for the accept coin
    u_resid: Tensor,  # [...] uniforms for the residual draw
) -> tuple[Tensor, Tensor]:
    """One GenSpecSample step from explicit uniforms: returns (token ``[...]``, accepted ``[...]`` bool)."""
    draft = sample_categorical(q, u_draft)
    a = accept.gather(-1, draft.unsqueeze(-1)).squeeze(-1)
    ok = u_accept.to(a.dtype) < a
    fallback = sample_categorical(resid, u_resid)
    return torch.where(ok, draft, fallback), ok
