"""Batched block verification (THEORY.md section 7), vectorised over the batch, device-agnostic.

Given ``gamma`` drafted tokens per row and the draft/target distributions at the ``gamma + 1`` positions
they define, apply a rule, run GenSpecSample left to right, stop at the first rejection (emit a residual
draw there) or, if every draft passes, emit a bonus token. Rows accept different numbers of tokens; the
result is padded. No Python loop over rows and no host synchronisation happens here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from specref.dists import sample_categorical
from specref.rules import Rule

__all__ = ["BONUS_MODES", "PAD", "BlockUniforms", "VerifyResult", "emitted_tokens", "verify_block"]

#: Filler for emitted-token slots past a row's last emitted token.
PAD = -1
#: ``pi``: the bonus token is drawn from pi at position gamma (exactly the token-level cascade; THEORY 7).
#: ``target``: drawn from p (standard SpecDecode practice; identical when pi = p).
BONUS_MODES = ("pi", "target")


@dataclass(frozen=True)
class BlockUniforms:
    """Explicit randomness for one block, so a path can be reproduced exactly.

    Attributes:
        accept: ``[B, gamma]`` uniforms for the accept coins (accept iff ``u < a``).
        sample: ``[B, gamma + 1]`` uniforms for the inverse-CDF draw at the first rejected position
            (residual) or at position gamma (bonus).
    """

    accept: Tensor
    sample: Tensor


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of verifying one block for every row.

    Attributes:
        accepted: ``[B]`` long, number of accepted drafts (0..gamma).
        tokens: ``[B, gamma + 1]`` long, the emitted tokens: the accepted drafts, then the residual or
            bonus token at index ``accepted``; :data:`PAD` after it.
        num_emitted: ``[B]`` long, ``accepted + 1``.
        defer: ``[B, gamma + 1]`` (whole-position rules) or ``[B, gamma + 1, V]`` (token rules).
        defer_drafted: ``[B, gamma]`` the defer value that applied to each drafted token.
        accept_prob: ``[B, gamma]`` acceptance probability of each drafted token.
        rejection_prob: ``[B, gamma + 1]`` expected rejection rate of a fresh draft at each position.
        pi: ``[B, gamma + 1, V]`` the rule's target distribution at each position.
    """

    accepted: Tensor
    tokens: Tensor
    num_emitted: Tensor
    defer: Tensor
    defer_drafted: Tensor
    accept_prob: Tensor
    rejection_prob: Tensor
    pi: Tensor


def _check_inputs(drafts: Tensor, q: Tensor, p: Tensor, q_rule: Tensor, p_rule: Tensor, bonus: Any) -> None:
    if drafts.dim() != 2:
        raise ValueError(f"drafts must be [B, gamma], got shape {tuple(drafts.shape)}")
    if drafts.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"drafts must be an integer tensor, got {drafts.dtype}")
    b, g = drafts.shape
    if g < 1:
        raise ValueError("gamma (drafts.shape[1]) must be >= 1")
    if p.dim() != 3 or p.shape[:2] != (b, g + 1):
        raise ValueError(f"p must be [B, gamma + 1, V] = [{b}, {g + 1}, V], got {tuple(p.shape)}")
    if q.dim() != 3 or q.shape[0] != b or q.shape[1] not in (g, g + 1) or q.shape[2] != p.shape[2]:
        raise ValueError(f"q must be [B, gamma(+1), V] matching p {tuple(p.shape)}, got {tuple(q.shape)}")
    if q_rule.shape != q.shape or p_rule.shape != p.shape:
        raise ValueError("q_rule and p_rule must have the shapes of q and p")
    if isinstance(bonus, str):
        if bonus not in BONUS_MODES:
            raise ValueError(f"bonus must be one of {BONUS_MODES}, got {bonus!r}")
        if bonus == "pi" and q.shape[1] != g + 1:
            raise ValueError("bonus='pi' needs the draft distribution at position gamma: q must be [B, gamma + 1, V]")
    if drafts.numel() and (int(drafts.min()) < 0 or int(drafts.max()) >= p.shape[-1]):
        raise ValueError(f"draft token ids must lie in [0, {p.shape[-1]})")


def emitted_tokens(
    drafts: Tensor,  # [B, gamma] drafted tokens
    accepted: Tensor,  # [B] number of accepted drafts
    final_tok: Tensor,  # [B] residual or bonus token emitted after them
) -> Tensor:
    """The block's emitted tokens ``[B, gamma + 1]``: accepted drafts, the final token, then :data:`PAD`."""
    b, g = drafts.shape
    pos = torch.arange(g + 1, device=drafts.device)
    padded = torch.cat([drafts, drafts.new_full((b, 1), PAD)], dim=1)
    tokens = torch.where(pos < accepted.unsqueeze(1), padded, drafts.new_full((b, g + 1), PAD))
    return torch.where(pos == accepted.unsqueeze(1), final_tok.unsqueeze(1), tokens)


def verify_block(
    drafts: Tensor,  # [B, gamma] drafted token ids
    q: Tensor,  # [B, gamma + 1, V] draft dists, tempered (gamma positions allowed when bonus='target')
    p: Tensor,  # [B, gamma + 1, V] target dists, tempered
    rule: Rule,
    *,
    q_rule: Tensor | None = None,  # [B, gamma(+1), V] untempered draft dists (default: q)
    p_rule: Tensor | None = None,  # [B, gamma + 1, V] untempered target dists (default: p)
    bonus: str | Tensor = "pi",
    generator: torch.Generator | None = None,
    uniforms: BlockUniforms | None = None,
    features: Any = None,
    validate: bool = True,
    limit: Tensor | None = None,  # [B] long in 0..gamma: drafts each row offers (None: all gamma)
) -> VerifyResult:
    """Verify a block of drafts for every row at once.

    ``limit`` ends each row's block after its first ``limit`` drafts (the decoder's draft stop): drafts after
    them are never verified, and if all ``limit`` pass, position ``limit`` takes the bonus token, as in a block
    of ``limit`` drafts (with ``bonus`` a tensor, that ``[B, V]`` distribution).

    ``bonus`` is ``"pi"`` (default, exact token-level cascade), ``"target"``, or, for tests of wrong
    variants, an explicit ``[B, V]`` distribution. Randomness comes from ``uniforms`` if given, else from
    ``torch.rand`` with ``generator``. ``validate=False`` skips the checks that sync with the host.
    """
    q_rule = q if q_rule is None else q_rule
    p_rule = p if p_rule is None else p_rule
    if validate:
        _check_inputs(drafts, q, p, q_rule, p_rule, bonus)
    b, g = drafts.shape
    v = p.shape[-1]
    if q.shape[1] == g:  # bonus='target': position gamma's rule output is never used, pad it with p
        q = torch.cat([q, p[:, g:]], dim=1)
        q_rule = torch.cat([q_rule, p_rule[:, g:]], dim=1)

    out = rule(q, p, q_rule=q_rule, p_rule=p_rule, features=features, validate=validate)
    drafts = drafts.long()
    accept_prob = out.accept[:, :g].gather(-1, drafts.unsqueeze(-1)).squeeze(-1)  # [B, G]

    if uniforms is None:
        u_accept = torch.rand((b, g), generator=generator, device=p.device, dtype=p.dtype)
        u_sample = torch.rand((b, g + 1), generator=generator, device=p.device, dtype=p.dtype)
    else:
        u_accept, u_sample = uniforms.accept, uniforms.sample
        if validate and (u_accept.shape != (b, g) or u_sample.shape != (b, g + 1)):
            raise ValueError(f"uniforms must be accept [{b}, {g}] and sample [{b}, {g + 1}]")

    ok = u_accept.to(accept_prob.dtype) < accept_prob
    accepted = ok.long().cumprod(dim=-1).sum(dim=-1)  # [B]
    if limit is not None:
        if validate and (limit.shape != (b,) or int(limit.min()) < 0 or int(limit.max()) > g):
            raise ValueError(f"limit must be [{b}] in 0..{g}, got shape {tuple(limit.shape)}")
        accepted = torch.minimum(accepted, limit)

    if isinstance(bonus, Tensor):
        bonus_dist = bonus
    else:
        source = out.pi if bonus == "pi" else p
        # position g, or each row's limit: the position after its last offered draft
        bonus_dist = source[:, g] if limit is None else source.gather(1, limit.view(b, 1, 1).expand(b, 1, v)).squeeze(1)
    # Residual at the first rejected position, or the bonus distribution if all (offered) drafts passed.
    idx = accepted.clamp(max=g - 1).view(b, 1, 1).expand(b, 1, v)
    resid = out.residual.gather(1, idx).squeeze(1)
    final_dist = torch.where((accepted < (g if limit is None else limit)).unsqueeze(-1), resid, bonus_dist)
    final_u = u_sample.gather(1, accepted.unsqueeze(1)).squeeze(1)
    final_tok = sample_categorical(final_dist, final_u)

    tokens = emitted_tokens(drafts, accepted, final_tok)

    if out.defer.dim() == 3:
        defer_drafted = out.defer[:, :g].gather(-1, drafts.unsqueeze(-1)).squeeze(-1)
    else:
        defer_drafted = out.defer[:, :g]
    return VerifyResult(
        accepted=accepted,
        tokens=tokens,
        num_emitted=accepted + 1,
        defer=out.defer,
        defer_drafted=defer_drafted,
        accept_prob=accept_prob,
        rejection_prob=out.rejection_rate(q),
        pi=out.pi,
    )
