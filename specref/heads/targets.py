"""What a head learns to predict, from a summary with its truth (THEORY.md section 6; pure tensor math).

Cascade heads estimate the two expected losses of Lemma 4, ``E_P[l(q)]`` and ``E_P[l(p)]``. Their
training targets are the realized losses at each logged position:

* ``truth="reference"`` (teacher-forced logs; P is the point mass at the reference token y):
  argmax 0-1 loss ``1[argmax q != y]``, sampled 0-1 loss ``1 - q(y)`` (already the expectation over the
  model's own sampling: a lower-variance target with the same conditional mean);
* ``truth="target"`` (on-policy logs without a reference; P = p, distillation-style):
  argmax ``1 - p(argmax q)``, sampled ``1 - sum_v q(v) p(v)``, and likewise for p.

Targets in [0, 1] with a Bernoulli log-likelihood (BCE) or Brier loss are proper: the minimiser is the
conditional mean, i.e. the expected loss given the features. Token heads estimate ``P(y = v)`` for each
candidate v: target ``1[v = y]`` (reference) or ``p(v)`` (target).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from specref.heads.features import candidate_set

__all__ = ["LOSSES", "TRUTHS", "cascade_targets", "realized_losses", "token_targets"]

LOSSES = ("argmax", "sampled")
TRUTHS = ("reference", "target")


def _check(loss: str, truth: str, summary: Mapping[str, Tensor]) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if truth not in TRUTHS:
        raise ValueError(f"truth must be one of {TRUTHS}, got {truth!r}")
    if truth == "reference" and "reference" not in summary:
        raise ValueError("truth='reference' needs logs with a reference token (on-policy logs: use truth='target')")


def realized_losses(summary: Mapping[str, Tensor], loss: str = "argmax", truth: str = "reference") -> Tensor:
    """``[..., 2]`` realized (loss of q, loss of p) at each position; what the Lemma 4 oracle knows."""
    _check(loss, truth, summary)
    if truth == "reference":
        if loss == "argmax":
            ref = summary["reference"]
            cols = [summary["q_argmax"] != ref, summary["p_argmax"] != ref]
        else:
            cols = [1 - summary["q_ref"], 1 - summary["p_ref"]]
    elif loss == "argmax":
        cols = [1 - summary["p_at_q_topk"][..., 0], 1 - summary["p_topk_probs"][..., 0]]
    else:
        cols = [1 - summary["qp_dot"], 1 - summary["p_sqnorm"]]
    return torch.stack([c.float() for c in cols], dim=-1).clamp(0.0, 1.0)


def cascade_targets(summary: Mapping[str, Tensor], loss: str = "argmax", truth: str = "reference") -> Tensor:
    """Training targets ``[..., 2]`` of a cascade head: the realized losses."""
    return realized_losses(summary, loss, truth)


def token_targets(
    summary: Mapping[str, Tensor], candidates: int, truth: str = "reference"
) -> tuple[Tensor, Tensor]:
    """Training targets ``[..., M]`` of a token head and the candidate mask ``[..., M]``."""
    _check("argmax", truth, summary)
    ids, _, p_v, valid = candidate_set(summary, candidates)
    if truth == "reference":
        target = (ids == summary["reference"].unsqueeze(-1)).float()
    else:
        target = p_v.float()
    return target, valid
