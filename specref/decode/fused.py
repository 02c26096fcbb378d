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
from specref.verify import emitted_tokens

__all__ = ["FusedResult", "fused_kind", "fused_verify"]


@dataclass(frozen=True)
class FusedResult:
    """The part of :class:`specref.verify.VerifyResult` a decoding round reads."""

    accepted: Tensor  # [B]
    tokens: Tensor  # [B, gamma + 1]
    num_emitted: Tensor  # [B]
    defer_drafted: Tensor  # [B, gamma]
    accept_prob: Tensor  # [B, gamma]


#: the Rule methods a round's fused verification stands in for, and the ones it calls instead
_REFERENCE_METHODS = ("__call__", "mix", "verification", "mix_at", "deferred_mass")
_FUSED_METHODS = ("drafted_acceptance", "row_distributions")


def _owner(cls: type, name: str) -> type:
    return next(k for k in cls.__mro__ if name in vars(k))


def fused_kind(rule: Any) -> str | None:
    """``"position"`` / ``"token"`` (default mix and verification), ``"lossy"``, or None (unsupported).

    A rule is supported when its fused methods (:meth:`~specref.rules.Rule.drafted_acceptance`,
    :meth:`~specref.rules.Rule.row_distributions`) are defined at least as deep in its class hierarchy as
    the reference ones they stand in for (and as ``decide``, when the fused methods do not call it): a
    subclass that changes ``mix`` without saying how to verify a drafted token goes through ``verify_block``.
    """
    if not isinstance(rule, rules_mod.Rule):
        return None
    cls = type(rule)
    fused = {_owner(cls, m) for m in _FUSED_METHODS}
    if len(fused) != 1:
        return None
    (owner,) = fused
    reference = _REFERENCE_METHODS if rule.fused_reads_decide else (*_REFERENCE_METHODS, "decide")
    if not all(issubclass(owner, _owner(cls, m)) for m in reference):
        return None
    if isinstance(rule, rules_mod.LossyRule):
        return "lossy"
    return "token" if rule.token_level else "position"


def _rows(x: Tensor, flat: Tensor) -> Tensor:
    """``x[b, idx[b]]`` for ``x`` ``[B, P, ...]`` given ``flat = b * P + idx[b]``: ``[B, ...]``."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]).index_select(0, flat)


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
) -> FusedResult | None:
    """Verify a block like ``verify_block(..., validate=False)`` for the supported rules; None otherwise."""
    kind = kind or fused_kind(rule)
    if kind is None or not isinstance(bonus, str):
        return None
    b, g = drafts.shape
    drafts = drafts.long()
    defer_d, accept_d, decision = rule.drafted_acceptance(drafts, q_rule, p_rule, q, p, features)
    ok = u_accept.to(accept_d.dtype) < accept_d
    accepted = ok.long().cumprod(dim=-1).sum(dim=-1)  # [B]

    # The one position per row whose distribution is drawn from: first rejection, or gamma (bonus).
    sel = torch.arange(b, device=q.device) * (g + 1) + accepted
    resid_s, bonus_s = rule.row_distributions(tuple(_rows(x, sel) for x in decision), _rows(q, sel), _rows(p, sel),
                                              bonus)
    final_dist = torch.where((accepted < g).unsqueeze(-1), resid_s, bonus_s)
    final_u = u_sample.gather(1, accepted.unsqueeze(1)).squeeze(1)
    final_tok = sample_categorical(final_dist, final_u)

    return FusedResult(accepted, emitted_tokens(drafts, accepted, final_tok), accepted + 1, defer_d, accept_d)
