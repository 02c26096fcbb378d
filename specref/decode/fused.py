"""Rule + verification fused for the decoder's hot loop: only what the round needs, nothing more.

:func:`specref.verify.verify_block` materialises, for every position of the block, the rule's full target
distribution ``pi``, the acceptance probability of every candidate token, the normalised residual and the
rejection rate: several ``[B, gamma + 1, V]`` tensors, most of which a round never reads. A round needs

* the acceptance probability of the ``gamma`` DRAFTED tokens only (``[B, gamma]``: gather, then elementwise);
* ONE residual (or bonus) distribution per row, at the first rejected position (or position gamma):
  ``[B, V]``, built from that row's position only;
* the reductions the rule's decision itself needs (``max p``, ``eta = sum_v q(v) r(v)``, ``TV``), computed
  by the rule on the full tensors exactly as the plain path does.

:func:`fused_verify` asks the rule for exactly these (:meth:`specref.rules.Rule.drafted_acceptance`,
:meth:`specref.rules.Rule.row_distributions`, built from the same pieces as the rule's ``mix`` and
``verification``: no formula is written here), so its accept probabilities are bitwise those of
``verify_block`` and its tokens are identical (the residual's normalising sum runs over one row instead of
the whole block: equal up to the order of a float sum, i.e. identical tokens on a CPU, and on a GPU unless a
uniform falls within rounding of a CDF boundary). Supported: every rule whose fused methods are as deep as
its ``mix`` / ``verification`` (see :func:`fused_kind`): SpecDecode, ensemble, Chow, Diff, OPT, Token V1-V3,
learned and lossy SpecDecode; anything else returns None and the decoder uses ``verify_block``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from specref import rules as rules_mod
from specref.dists import sample_categorical
from specref.verify import PAD

__all__ = ["FusedResult", "fused_kind", "fused_verify"]


@dataclass(frozen=True)
class FusedResult:
    """The part of :class:`specref.verify.VerifyResult` a decoding round reads."""

    accepted: Tensor  # [B]
    tokens: Tensor  # [B, gamma + 1]
    num_emitted: Tensor  # [B]
    #: [B, gamma] deferral at the drafted tokens; None: 1 at each (the rule's drafted_acceptance said so), see
    #: :attr:`defer_drafted`
    defer_given: Tensor | None
    accept_prob: Tensor  # [B, gamma]
    #: [B, gamma + 1] bool: positions 0..accepted (the pending token and the accepted drafts in a round's block;
    #: the emitted tokens in ``tokens``)
    kept: Tensor | None = None
    #: [B] the residual or bonus token (``tokens`` at ``accepted``)
    final: Tensor | None = None

    @property
    def defer_drafted(self) -> Tensor:
        """``[B, gamma]`` deferral at the drafted tokens."""
        return torch.ones_like(self.accept_prob) if self.defer_given is None else self.defer_given


#: the Rule methods a round's fused verification stands in for, and the ones it calls instead
_REFERENCE_METHODS = ("__call__", "mix", "verification", "mix_at", "deferred_mass")
_FUSED_METHODS = ("drafted_acceptance", "row_distributions")


def _owner(cls: type, name: str) -> type:
    return next(k for k in cls.__mro__ if name in vars(k))


def fused_kind(rule: Any) -> str | None:
    """``"position"`` / ``"token"`` (default mix and verification), ``"lossy"``, or None (unsupported).

    A rule is supported when its fused methods (:meth:`~specref.rules.Rule.drafted_acceptance`,
    :meth:`~specref.rules.Rule.row_distributions`) are defined at least as deep in its class hierarchy as
    the reference ones they stand in for (and as ``decide`` / ``decide_position`` when the fused methods do
    not call them, as SpecDecode's, which write its decision in): a subclass that changes ``mix`` or the
    decision without saying how to verify a drafted token goes through ``verify_block``.
    """
    if not isinstance(rule, rules_mod.Rule):
        return None
    cls = type(rule)
    fused = {_owner(cls, m) for m in _FUSED_METHODS}
    if len(fused) != 1:
        return None
    (owner,) = fused
    decision = () if rule.fused_reads_decide else ("decide", "decide_position")
    reference = (*_REFERENCE_METHODS, *decision)
    if not all(issubclass(owner, _owner(cls, m)) for m in reference):
        return None
    if isinstance(rule, rules_mod.LossyRule):
        return "lossy"
    return "token" if rule.token_level else "position"


def fused_verify(
    drafts: Tensor,  # [B, G]
    q: Tensor,  # [B, G + 1, V] tempered draft dists
    p: Tensor,  # [B, G + 1, V] tempered target dists
    rule: Any,
    q_rule: Tensor,  # [B, G + 1, V] untempered
    p_rule: Tensor,  # [B, G + 1, V] untempered
    bonus: str,  # "pi" | "target"
    u_accept: Tensor,  # [B, G]
    u_sample: Tensor,  # [B, G + 1]
    features: Any = None,
    kind: str | None = None,
    rows: Tensor | None = None,  # [>= B] 0, 1, 2, ... (a caller's precomputed arange)
    cols: Tensor | None = None,  # [>= G + 1] 0, 1, 2, ...
    limit: Tensor | None = None,  # [B] drafts each row offers (the draft stop; None: all G)
) -> FusedResult | None:
    """Verify a block like ``verify_block(..., validate=False)`` for the supported rules; None otherwise."""
    kind = kind or fused_kind(rule)
    if kind is None or not isinstance(bonus, str):
        return None
    b, g = drafts.shape
    rows = torch.arange(b, device=q.device) if rows is None else rows[:b]
    cols = torch.arange(g + 1, device=q.device) if cols is None else cols[: g + 1]
    drafts = drafts.long()
    defer_d, accept_d, decision = rule.drafted_acceptance(drafts, q_rule, p_rule, q, p, features)
    ok = u_accept.to(accept_d.dtype) < accept_d
    accepted = ok.cumprod(dim=-1).sum(dim=-1)  # [B] (cumprod of bool counts in int64)
    if limit is not None:  # a row's block ends after its offered drafts
        accepted = torch.minimum(accepted, limit)
    acc_col = accepted.unsqueeze(1)
    kept = cols <= acc_col  # [B, G + 1]; column G: every draft passed

    # The one position per row whose distribution is drawn from: first rejection, or gamma (bonus), or the
    # row's limit (bonus: every offered draft passed)
    q_s, p_s = q[rows, accepted], p[rows, accepted]
    resid_s, bonus_s = rule.row_distributions(tuple(x[rows, accepted] for x in decision), q_s, p_s, bonus)
    at_bonus = kept[:, g:] if limit is None else (accepted == limit).unsqueeze(1)
    final_dist = torch.where(at_bonus, bonus_s, resid_s)
    final_tok = sample_categorical(final_dist, u_sample[rows, accepted])

    # emitted_tokens(drafts, accepted, final_tok), built from the drafts with the final token put at `accepted`
    # (and, where it is g, at g already) and PAD after it
    tokens = torch.cat([drafts, final_tok.unsqueeze(1)], dim=1).scatter_(1, acc_col, final_tok.unsqueeze(1))
    tokens = torch.where(kept, tokens, PAD)
    return FusedResult(accepted, tokens, accepted + 1, defer_d, accept_d, kept, final_tok)
