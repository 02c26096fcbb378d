"""Offline objective of deferral rules on logged positions, with the reference token as the truth (pure math).

For every position the truth P is the point mass at the reference token y (THEORY.md section 6), so:

* cascade rules (decision r in {0, 1}, pi = (1 - r) q + r p): loss ``(1 - r) l(q) + r l(p)`` with
  ``l(m) = 1[argmax m != y]`` (argmax 0-1 loss) or ``1 - m(y)`` (sampled 0-1 loss); rejection rate
  ``r TV(p, q)`` (Lemma 3); ``L_spec = loss + alpha * rejection`` (Eq. 8). Everything is a logged scalar:
  EXACT (up to float32 storage at decision boundaries).
* token rules (pi = q (1 - r) + p eta, eta = q(D)): loss ``1 - pi(y)`` (sampled) or
  ``1[argmax pi != y]`` (argmax), rejection ``TV(pi, q) = sum_{v in D} max(0, q(v) - eta p(v))``.
  The baseline token rules read their exact log-time values on the log's alpha grid (EXACT). Candidate-set
  rules (learned token heads) are exact on the union of both top-k sets; outside it the tail is deferred
  all or nothing, so eta, pi(y) and the tail masses are exact, and only the tail's rejection
  ``f(eta) = sum_tail max(0, q - eta p)`` is interpolated from its values on the eta grid. f is convex, so
  the chord bounds it above and the neighbouring chords' extensions below: the midpoint is reported and
  half the gap is a certified bound on the error (``rejection_bound``). The argmax of pi is exact unless a
  tail token could tie or beat the best candidate (counted in ``argmax_uncertain``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from specref import rules
from specref.heads.features import candidate_set
from specref.heads.targets import realized_losses

__all__ = [
    "Outcome",
    "cascade_decisions",
    "cascade_outcome",
    "interpolate_tail",
    "learned_token_decisions",
    "token_outcome_candidates",
    "token_outcome_exact",
]


@dataclass(frozen=True)
class Outcome:
    """Per-row results of one rule at one alpha, all ``[N]``.

    Attributes:
        defer: probability that a drafted token is deferred (r for cascades, eta = q(D) for token rules).
        rejection: rejection rate of the GenSpecSample test against pi.
        loss_argmax: 1[argmax pi != y] (for cascades: the loss of the model the position defers to).
        loss_sampled: 1 - pi(y).
        rejection_bound: certified bound on |error| of ``rejection`` (0 where exact).
        argmax_uncertain: rows where a tail token could be argmax pi (``loss_argmax`` then assumes not).
    """

    defer: Tensor
    rejection: Tensor
    loss_argmax: Tensor
    loss_sampled: Tensor
    rejection_bound: Tensor
    argmax_uncertain: Tensor

    def l_spec(self, alpha: float, loss: str) -> Tensor:
        base = self.loss_argmax if loss == "argmax" else self.loss_sampled
        return base + alpha * self.rejection


# ---- cascade rules -------------------------------------------------------------------------------------


class _LoggedEstimates:
    """A cascade head whose estimates were computed already (from the log's features, or the realized losses
    for the oracle): lets :class:`specref.rules.LearnedRule` decide on logged positions."""

    kind = "cascade"

    def estimate(self, *args: Any) -> Tensor:
        raise AssertionError("offline decisions pass the estimates through PositionStats")


def cascade_decisions(
    method: str,
    summary: Mapping[str, Tensor],  # logged columns [N, ...]
    alpha: float,
    estimates: Tensor | None = None,  # [N, 2] learned (loss_q, loss_p) estimates
    loss: str = "argmax",  # the oracle's loss
) -> Tensor:  # [N] bool
    """Decisions of a whole-position rule on logged positions: the rule's own
    :meth:`~specref.rules.Rule.decide_position` on the logged ``q_max``, ``p_max`` and ``tv``.

    ``method``: ``learned`` (with the head's ``estimates``), ``oracle`` (Lemma 4: the learned rule with the
    realized losses as estimates) or any rule of :mod:`specref.rules` that decides from position statistics
    (draft, specdecode, chow, diff, opt, and registered rules written that way). Fractional decisions are refused:
    the argmax loss of a fractional mixture is not the mixture of the two models' losses.
    """
    if method in ("learned", "oracle"):
        if method == "oracle":
            estimates = realized_losses(summary, loss, "reference")
        elif estimates is None:
            raise ValueError("the learned cascade rule needs the head's estimates")
        rule: rules.Rule = rules.LearnedRule(_LoggedEstimates(), alpha=alpha)
        return rule.decide_position(rules.PositionStats.of_log(summary, estimates=estimates))
    rule = rules.get_swept(method, alpha)
    if not rule.decides_from_position_stats():
        raise ValueError(
            f"rule {method!r} decides from the full distributions (token-level, or its own decide()); offline "
            "evaluation reads logged position summaries, so only rules written as decide_position(stats) "
            "(q_max, p_max, tv) can be evaluated offline"
        )
    defer = rule.decide_position(rules.PositionStats.of_log(summary))
    if defer.dtype != torch.bool:
        if not bool(((defer == 0) | (defer == 1)).all()):
            raise ValueError(f"rule {method!r} gives fractional decisions; offline evaluation handles 0/1 decisions")
        defer = defer == 1
    return defer


def cascade_outcome(defer: Tensor, summary: Mapping[str, Tensor]) -> Outcome:
    """Outcome of whole-position decisions ``defer`` ``[N]`` (bool, 0/1, or a mixture's weights in [0, 1]:
    then the sampled loss and the rejection are exact, the argmax loss is not the mixture's)."""
    r = defer.double()
    arg = realized_losses(summary, "argmax", "reference").double()
    smp = realized_losses(summary, "sampled", "reference").double()
    zero = torch.zeros_like(r)
    return Outcome(
        defer=r,
        rejection=r * summary["tv"].double(),
        loss_argmax=(1 - r) * arg[..., 0] + r * arg[..., 1],
        loss_sampled=(1 - r) * smp[..., 0] + r * smp[..., 1],
        rejection_bound=zero,
        argmax_uncertain=torch.zeros_like(r, dtype=torch.bool),
    )


# ---- token rules ---------------------------------------------------------------------------------------


def token_outcome_exact(summary: Mapping[str, Tensor], rule: str, alpha_index: int) -> Outcome:
    """A baseline token rule at the log's ``alphas[alpha_index]``, from its exact log-time columns."""
    j = alpha_index
    eta = summary[f"{rule}_eta"][:, j].double()
    pi_ref = summary[f"{rule}_pi_ref"][:, j].double()
    zero = torch.zeros_like(eta)
    return Outcome(
        defer=eta,
        rejection=summary[f"{rule}_rej"][:, j].double(),
        loss_argmax=(summary[f"{rule}_pi_argmax"][:, j] != summary["reference"]).double(),
        loss_sampled=1 - pi_ref,
        rejection_bound=zero,
        argmax_uncertain=torch.zeros_like(eta, dtype=torch.bool),
    )


def interpolate_tail(
    tail_excess: Tensor,  # [N, G] f at eta_j = j / (G - 1); f convex and non-increasing
    eta: Tensor,  # [N] in [0, 1]
    q_tail: Tensor,  # [N]
    p_tail: Tensor,  # [N]
) -> tuple[Tensor, Tensor]:
    """(estimate ``[N]``, certified half-width ``[N]``) of f(eta) from its grid values.

    Upper bound: the chord of the enclosing grid cell. Lower bounds: the extensions of the neighbouring
    cells' chords (convexity), monotonicity (f non-increasing, slope >= -p_tail), 0, and
    ``q_tail - eta p_tail`` (since max(0, a) >= a). The bounds meet at grid points.
    """
    f = tail_excess.double()
    g = f.shape[-1]
    h = 1.0 / (g - 1)
    x = eta.double().clamp(0.0, 1.0)
    j = torch.clamp((x / h).floor().long(), max=g - 2)  # cell [e_j, e_{j+1}]
    e_j = j.double() * h
    f_j, f_j1 = f.gather(-1, j.unsqueeze(-1)).squeeze(-1), f.gather(-1, (j + 1).unsqueeze(-1)).squeeze(-1)
    upper = f_j + (f_j1 - f_j) * (x - e_j) / h
    lower = torch.maximum(torch.zeros_like(x), q_tail.double() - x * p_tail.double())
    # f is non-increasing with slope >= -p_tail: tight at both ends of the cell.
    lower = torch.maximum(lower, torch.maximum(f_j1, f_j - p_tail.double() * (x - e_j)))
    jl = (j - 1).clamp_min(0)
    f_l = f.gather(-1, jl.unsqueeze(-1)).squeeze(-1)
    left_ext = f_j + (f_j - f_l) * (x - e_j) / h  # chord of the cell to the left, extended
    lower = torch.where(j >= 1, torch.maximum(lower, left_ext), lower)
    jr = (j + 2).clamp(max=g - 1)
    f_r = f.gather(-1, jr.unsqueeze(-1)).squeeze(-1)
    right_ext = f_j1 + (f_r - f_j1) * (x - e_j - h) / h  # chord of the cell to the right, extended
    lower = torch.where(j + 2 <= g - 1, torch.maximum(lower, right_ext), lower)
    lower = torch.minimum(lower, upper)  # float noise
    return (upper + lower) / 2, (upper - lower) / 2


def token_outcome_candidates(
    summary: Mapping[str, Tensor],  # logged columns [N, ...] (full logged top-k)
    defer: Tensor,  # [N, M] bool decisions on the logged candidate set (M = 2 * top_k; see candidate_set)
    tail_defer: Tensor,  # [N] bool: every token outside the logged candidate set is deferred (else none)
    vocab_size: int,
) -> Outcome:
    """A token rule given by its decisions on the logged candidates plus an all-or-nothing tail."""
    k = summary["q_topk_ids"].shape[-1]
    ids, q_v, p_v, valid = candidate_set(summary, k)
    q_v, p_v = q_v.double(), p_v.double()
    d = defer & valid
    td = tail_defer.double()
    q_tail, p_tail = summary["q_tail"].double(), summary["p_tail"].double()
    eta = (q_v * d).sum(-1) + td * q_tail
    ref = summary["reference"]
    is_ref = valid & (ids == ref.unsqueeze(-1))
    ref_in = is_ref.any(-1)
    r_ref = torch.where(ref_in, (d & is_ref).any(-1).double(), td)
    q_ref, p_ref = summary["q_ref"].double(), summary["p_ref"].double()
    pi_ref = q_ref * (1 - r_ref) + p_ref * eta
    rej_c = (torch.where(d, (q_v - eta.unsqueeze(-1) * p_v).clamp_min(0), 0.0)).sum(-1)
    tail_val, tail_err = interpolate_tail(summary["tail_excess"], eta, q_tail, p_tail)
    rejection = rej_c + td * tail_val

    # argmax pi: the best candidate (ties to the lowest id), the reference if it sits in the tail, and a bound
    # on every other tail token: q(v) <= min(q_k, q_tail), p(v) <= min(p_k, p_tail).
    pi_c = torch.where(valid, q_v * (~d).double() + p_v * eta.unsqueeze(-1), -1.0)
    best = pi_c.max(-1).values
    big = torch.iinfo(torch.long).max
    best_id = torch.where(pi_c == best.unsqueeze(-1), ids, big).min(-1).values
    ref_wins = ~ref_in & ((pi_ref > best) | ((pi_ref == best) & (ref < best_id)))
    best_id = torch.where(ref_wins, ref, best_id)
    best = torch.where(ref_wins, pi_ref, best)
    q_k = torch.minimum(summary["q_topk_probs"][:, -1].double(), q_tail)
    p_k = torch.minimum(summary["p_topk_probs"][:, -1].double(), p_tail)
    tail_nonempty = valid.sum(-1) < vocab_size
    tail_max = (1 - td) * q_k + eta * p_k
    uncertain = tail_nonempty & (tail_max >= best)
    return Outcome(
        defer=eta,
        rejection=rejection,
        loss_argmax=(best_id != ref).double(),
        loss_sampled=1 - pi_ref,
        rejection_bound=td * tail_err,
        argmax_uncertain=uncertain,
    )


def learned_token_decisions(
    candidate_scores: Tensor,  # [N, M] head scores on the logged candidates (0 where outside its own set)
    valid: Tensor,  # [N, M]
    alpha: float,
) -> tuple[Tensor, Tensor]:
    """(defer ``[N, M]``, tail_defer ``[N]``) of a token head; the tail scores 0, as the head does live.

    The decision is :meth:`specref.rules.LearnedRule.decide_scores` over the candidates plus one column for
    the tail (all its tokens score 0, so they are deferred together or not at all).
    """
    s = torch.where(valid, candidate_scores, 0.0)
    with_tail = torch.cat([s, torch.zeros_like(s[:, :1])], dim=-1)  # [N, M + 1]
    defer = rules.LearnedRule(_TokenScores(), alpha=alpha).decide_scores(with_tail)
    return defer[:, :-1], defer[:, -1]


class _TokenScores:
    """A token head whose scores were computed already (see :class:`_LoggedEstimates`)."""

    kind = "token"

    def estimate(self, *args: Any) -> Tensor:
        raise AssertionError("offline decisions pass the scores to LearnedRule.decide_scores")
