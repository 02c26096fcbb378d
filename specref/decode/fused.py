"""Rule + verification fused for the decoder's hot loop: only what the round needs, nothing more.

:func:`specref.verify.verify_block` materialises, for every position of the block, the rule's full target
distribution ``pi``, the acceptance probability of every candidate token, the normalised residual and the
rejection rate: several ``[B, gamma + 1, V]`` tensors, most of which a round never reads. A round needs

* the acceptance probability of the ``gamma`` DRAFTED tokens only (``[B, gamma]``: gather, then elementwise);
* ONE residual (or bonus) distribution per row, at the first rejected position (or position gamma):
  ``[B, V]``, built from that row's position only;
* the reductions the rule's decision itself needs (``max p``, ``eta = sum_v q(v) r(v)``, ``TV``), computed
  by the rule on the full tensors exactly as the plain path does.

:func:`fused_verify` computes exactly these with the same elementwise formulas as ``specref.rules`` /
``specref.genspec``, so its accept probabilities are bitwise those of ``verify_block`` and its tokens are
identical (the residual's normalising sum runs over one row instead of the whole block: equal up to the
order of a float sum, i.e. identical tokens on a CPU, and on a GPU unless a uniform falls within rounding of
a CDF boundary). Supported: every rule that keeps the default ``mix`` / ``verification`` of
:class:`specref.rules.Rule` (SpecDecode, ensemble, Chow, Diff, OPT, Token V1-V3, learned) and lossy
SpecDecode; anything else returns None and the decoder uses ``verify_block``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from specref import genspec
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


def fused_kind(rule: Any) -> str | None:
    """``"position"`` / ``"token"`` (default mix and verification), ``"lossy"``, or None (unsupported)."""
    cls = type(rule)
    if isinstance(rule, rules_mod.LossyRule):
        same = all(getattr(cls, m) is getattr(rules_mod.LossyRule, m) for m in ("mix", "verification", "decide"))
        return "lossy" if same else None
    if not isinstance(rule, rules_mod.Rule):
        return None
    if cls.mix is not rules_mod.Rule.mix or cls.verification is not rules_mod.Rule.verification:
        return None
    if cls.__call__ is not rules_mod.Rule.__call__:
        return None
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
    d_idx = drafts.unsqueeze(-1)
    q_d = q[:, :g].gather(-1, d_idx).squeeze(-1)  # [B, G]
    p_d = p[:, :g].gather(-1, d_idx).squeeze(-1)

    if kind == "lossy":
        defer_d = 1 - rule._accept(q_d, p_d)
        accept_d = 1 - defer_d
    else:
        defer = rule.decide(q_rule, p_rule, q, p, features)  # [B, P] or [B, P, V]
        if kind == "token":
            if defer.dtype == torch.bool:
                # q * 1.0 == q and q * 0.0 == +0.0 exactly (q is finite and >= 0): the same summands as
                # Rule.mix's (q * defer).sum, without materialising the float decision
                eta = torch.where(defer, q, torch.zeros((), dtype=q.dtype, device=q.device)).sum(dim=-1, keepdim=True)
            else:
                defer = defer.to(q.dtype)
                eta = (q * defer).sum(dim=-1, keepdim=True)  # [B, P, 1], as Rule.mix
            defer_d = defer[:, :g].gather(-1, d_idx).squeeze(-1).to(q.dtype)
            pi_d = q_d * (1 - defer_d) + p_d * eta[:, :g, 0]
        else:
            defer = defer.to(q.dtype)
            defer_d = defer[:, :g]
            pi_d = (1 - defer_d) * q_d + defer_d * p_d
        accept_d = genspec.acceptance(q_d, pi_d)

    ok = u_accept.to(accept_d.dtype) < accept_d
    accepted = ok.long().cumprod(dim=-1).sum(dim=-1)  # [B]

    # The one position per row whose distribution is drawn from: first rejection, or gamma (bonus).
    sel = torch.arange(b, device=q.device) * (g + 1) + accepted
    q_s, p_s = _rows(q, sel), _rows(p, sel)
    if kind == "lossy":
        resid_s = rule._residual(q_s, p_s)
        if bonus == "pi":
            bonus_s = genspec.emitted(q_s, 1 - (1 - rule._accept(q_s, p_s)), resid_s)
        else:
            bonus_s = p_s
    else:
        if kind == "token":
            defer_s = _rows(defer, sel).to(q.dtype)
            pi_s = q_s * (1 - defer_s) + p_s * _rows(eta, sel)
        else:
            r = _rows(defer, sel).unsqueeze(-1)
            pi_s = (1 - r) * q_s + r * p_s
        resid_s = genspec.residual(q_s, pi_s)
        bonus_s = pi_s if bonus == "pi" else p_s
    final_dist = torch.where((accepted < g).unsqueeze(-1), resid_s, bonus_s)
    final_u = u_sample.gather(1, accepted.unsqueeze(1)).squeeze(1)
    final_tok = sample_categorical(final_dist, final_u)

    return FusedResult(accepted, emitted_tokens(drafts, accepted, final_tok), accepted + 1, defer_d, accept_d)
