"""What differs between the engines' speculative rounds, as small strategy objects for the ONE round loop of
:class:`specref.decode.decoder.SpecCascadeDecoder`.

Two variants, chosen by the engine table (:attr:`specref.decode.engines.Engine.lean_round`); both draw the
same uniforms and emit the same tokens:

* the reference round (``plain``): uniforms from :func:`specref.rng.keyed_uniform` stream by stream, a
  non-finite check after every forward, :func:`specref.verify.verify_block`, counters added into the
  per-call :class:`~specref.decode.stats.Counters` every round, one cache summary per session;
* the lean round (``fast`` and the static engines): all of a round's uniforms in one pass
  (:func:`round_uniforms`, bit for bit the same values), one non-finite check per round on the stacked
  distributions, fused rule + verification (:mod:`specref.decode.fused`) when no ``on_round`` hook needs the
  full tensors, per-row counters accumulated in one ``[B, K]`` tensor of the live rows (written back when
  rows leave and at the end), one cache summary for both sessions (their slot tables are equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from specref.decode.base import CallContext, any_nonfinite
from specref.rng import STREAM_ACCEPT, STREAM_DRAFT, STREAM_SAMPLE, hash64, key_uniform, keyed_uniform

__all__ = ["RoundPlan", "round_plan", "round_uniforms", "stream_keys"]

_ROUND_STREAMS = (STREAM_DRAFT, STREAM_ACCEPT, STREAM_SAMPLE)


def stream_keys(seeds: Tensor, streams: Sequence[int] = _ROUND_STREAMS) -> Tensor:
    """``[B, S]`` per-row keys of :func:`specref.rng.keyed_uniform` for each stream (constant per row)."""
    st = torch.tensor(list(streams), dtype=torch.long, device=seeds.device)
    return hash64(hash64(seeds.to(torch.int64)).unsqueeze(1) + st)


def round_uniforms(keys: Tensor, start: Tensor, k: int) -> Tensor:
    """``[B, S, k]`` float32: ``keyed_uniform(seed, start + j, stream_s)`` for j < k, in one pass.

    The same integer arithmetic as :func:`specref.rng.keyed_uniform` (tests check it bit for bit), for
    all of a round's streams at once and with the per-row keys computed once per ``generate``.
    """
    counter = start.unsqueeze(1) + torch.arange(k, device=start.device)  # [B, k]
    return key_uniform(keys.unsqueeze(-1), counter.unsqueeze(1))  # [B, S, 1] keys against [B, 1, k] counters


# ---- uniforms: (draft [B, >= g], accept [B, g], sample [B, g + 1]) for a round of g drafts at token gen --
# (g: the call's gamma unless a block-size policy picks a smaller one for the round; the values at a
# position do not depend on g)


class _KeyedUniforms:
    """Reference: one :func:`keyed_uniform` call per stream; the per-row key is the seed itself."""

    def __init__(self, gamma: int, device: torch.device) -> None:
        self.ar_g = torch.arange(gamma, device=device)
        self.ar_g1 = torch.arange(gamma + 1, device=device)

    def keys(self, seeds: Tensor) -> Tensor:  # seeds [B] -> [B]
        return seeds

    def round(self, keys: Tensor, gen: Tensor, g: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        ar_g, ar_g1 = (self.ar_g, self.ar_g1) if g is None else (self.ar_g1[:g], self.ar_g1[: g + 1])
        at_g, at_g1 = gen.unsqueeze(1) + ar_g, gen.unsqueeze(1) + ar_g1
        return (
            keyed_uniform(keys, at_g, STREAM_DRAFT),
            keyed_uniform(keys, at_g, STREAM_ACCEPT),
            keyed_uniform(keys, at_g1, STREAM_SAMPLE),
        )


class _BatchedUniforms:
    """Lean: the three streams in one pass from per-row keys hashed once per call."""

    def __init__(self, gamma: int, device: torch.device) -> None:
        self.gamma = gamma

    def keys(self, seeds: Tensor) -> Tensor:  # seeds [B] -> [B, 3]
        return stream_keys(seeds)

    def round(self, keys: Tensor, gen: Tensor, g: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        g = self.gamma if g is None else g
        u = round_uniforms(keys, gen, g + 1)  # [B, 3, g + 1]
        return u[:, 0], u[:, 1, :g], u[:, 2]


# ---- per-row counters -------------------------------------------------------------------------------------


class _DirectCounters:
    """Reference: every round adds into the call's counters at the live rows' ids."""

    def __init__(self, ctx: CallContext, gamma: int) -> None:
        self.cnt, self.gamma = ctx.counters, gamma
        self.ar_g = torch.arange(gamma, device=ctx.device)
        #: per-live-row tensors that follow the live rows (none: the counters are indexed by row id)
        self.live: tuple[Tensor, ...] = ()

    def add(self, row_ids: Tensor, acc: Tensor, defer_drafted: Tensor, g: int | None = None) -> None:
        """``acc`` ``[B]`` accepted drafts of a round of ``g`` (default gamma) drafts, ``defer_drafted``
        ``[B, g]`` deferral at the drafted tokens."""
        cnt = self.cnt
        g = self.gamma if g is None else g
        if g == 0:  # a plain target step: one round, one target call, nothing drafted
            cnt.rounds[row_ids] += 1
            cnt.target_calls[row_ids] += 1
            return
        ar_g = self.ar_g[:g]
        reached = ar_g.unsqueeze(0) <= acc.unsqueeze(1)
        n_reached = reached.sum(dim=1)
        cnt.rounds[row_ids] += 1
        cnt.draft_calls[row_ids] += g + 1
        cnt.target_calls[row_ids] += 1
        cnt.drafted[row_ids] += n_reached
        cnt.accepted[row_ids] += acc
        cnt.rejections[row_ids] += (acc < g).long()
        cnt.pos_reached[row_ids, :g] += reached.long()
        cnt.pos_accepted[row_ids, :g] += (ar_g.unsqueeze(0) < acc.unsqueeze(1)).long()
        cnt.deferred[row_ids] += (defer_drafted.double() * reached).sum(dim=1)
        cnt.defer_positions[row_ids] += n_reached

    def flush(self, row_ids: Tensor) -> None:
        pass


class _LiveCounters:
    """Lean: one ``[B, 4 + 2g]`` long and one ``[B]`` float64 accumulator over the live rows, assigned back
    (so float sums keep their order) when rows leave and at the end."""

    def __init__(self, ctx: CallContext, gamma: int) -> None:
        self.cnt, self.gamma = ctx.counters, gamma
        self.ar_col = torch.arange(gamma, device=ctx.device).unsqueeze(0)
        # rounds, drafted, accepted, rejections, pos_reached[g], pos_accepted[g]
        acc_i = torch.zeros((ctx.batch, 4 + 2 * gamma), dtype=torch.long, device=ctx.device)
        acc_d = torch.zeros(ctx.batch, dtype=torch.float64, device=ctx.device)
        self.live: tuple[Tensor, ...] = (acc_i, acc_d)
        # every live row took part in every round so far (rows only leave), so their draft calls are one
        # host-side number: no device op per round
        self.draft_calls = 0

    def add(self, row_ids: Tensor, acc: Tensor, defer_drafted: Tensor, g: int | None = None) -> None:
        gamma = self.gamma
        g = gamma if g is None else g
        acc_i, acc_d = self.live
        if g == 0:  # a plain target step: one round, one target call, nothing drafted
            acc_i[:, 0] += 1
            return
        self.draft_calls += g + 1
        acc_col = acc.unsqueeze(1)
        reached = self.ar_col <= acc_col
        if g < gamma:  # a shorter round: positions g.. were not drafted
            reached = reached & (self.ar_col < g)
        n_reached = reached.sum(dim=1)
        acc_i[:, 0] += 1
        acc_i[:, 1:] += torch.cat(
            [torch.stack([n_reached, acc, (acc < g).long()], dim=1), reached.long(), (self.ar_col < acc_col).long()],
            dim=1,
        )
        acc_d += (defer_drafted.double() * reached[:, :g]).sum(dim=1)

    def flush(self, row_ids: Tensor) -> None:
        g, cnt = self.gamma, self.cnt
        acc_i, acc_d = self.live
        r = acc_i[:, 0]
        cnt.rounds[row_ids] = r
        cnt.draft_calls[row_ids] = self.draft_calls
        cnt.target_calls[row_ids] = r
        cnt.drafted[row_ids] = acc_i[:, 1]
        cnt.defer_positions[row_ids] = acc_i[:, 1]
        cnt.accepted[row_ids] = acc_i[:, 2]
        cnt.rejections[row_ids] = acc_i[:, 3]
        cnt.pos_reached[row_ids] = acc_i[:, 4 : 4 + g]
        cnt.pos_accepted[row_ids] = acc_i[:, 4 + g :]
        cnt.deferred[row_ids] = acc_d


# ---- the plan -------------------------------------------------------------------------------------------


@dataclass
class RoundPlan:
    """The per-engine parts of one ``generate`` call's speculative rounds."""

    uniforms: Any
    counters: Any
    #: check every forward's logits (reference) instead of the round's stacked distributions once
    check_each_forward: bool
    #: fused rule + verification allowed (still only without an ``on_round`` hook)
    fused: bool
    #: one cache summary serves both sessions in the round's host sync
    shared_summary: bool

    def round_nonfinite(self, q_rule: Tensor, p_rule: Tensor) -> Tensor:
        """0-dim bool from the round's untempered ``[B, g + 1, V]`` distributions (lean check).

        Softmax rows are in [0, 1] or all NaN: a row max is NaN iff the row is (max propagates NaN), and
        softmax is non-finite iff the logits are NaN, +inf or all -inf.
        """
        return ~(torch.isfinite(q_rule.amax(dim=-1)).all() & torch.isfinite(p_rule.amax(dim=-1)).all())

    @staticmethod
    def logits_nonfinite(logits: Tensor) -> Tensor:
        return any_nonfinite(logits)


def round_plan(lean: bool, ctx: CallContext, gamma: int) -> RoundPlan:
    """The reference (``lean=False``) or lean round of one call."""
    if lean:
        return RoundPlan(_BatchedUniforms(gamma, ctx.device), _LiveCounters(ctx, gamma), False, True, True)
    return RoundPlan(_KeyedUniforms(gamma, ctx.device), _DirectCounters(ctx, gamma), True, False, False)
