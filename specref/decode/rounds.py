"""What differs between the engines' speculative rounds, as small strategy objects for the ONE round loop of
:class:`specref.decode.decoder.SpecCascadeDecoder`.

Two variants, chosen by the engine table (:attr:`specref.decode.engines.Engine.lean_round`); both draw the
same uniforms and emit the same tokens:

* the reference round (``plain``): uniforms from :func:`specref.rng.keyed_uniform` stream by stream, a
  non-finite check after every forward, :func:`specref.verify.verify_block`, counters added into the
  per-call :class:`~specref.decode.stats.Counters` every round, one cache summary per session;
* the lean round (``fast`` and the static engines): every uniform a call can draw computed once, at its
  start (:func:`round_uniforms`, bit for bit the same values), and gathered per round; one non-finite check
  per round on the stacked distributions, fused rule + verification (:mod:`specref.decode.fused`) when no
  ``on_round`` hook needs the full tensors, per-row counters accumulated in one ``[B, 2 gamma]`` tensor of
  the live rows (the other counters follow from it and from host-side round counts, written back when rows
  leave and at the end), one cache summary for both sessions (their slot tables are equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from specref.decode.base import CallContext, any_nonfinite
from specref.rng import STREAM_ACCEPT, STREAM_DRAFT, STREAM_SAMPLE, hash64, key_uniform, keyed_uniform

__all__ = ["DraftStop", "RoundPlan", "round_plan", "round_uniforms", "stream_keys"]

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
    """Lean: the three streams' uniforms at every token index a call can reach, computed at its start from
    per-row keys (``[B, 3, horizon]`` float32, following the live rows); a round gathers its block."""

    def __init__(self, gamma: int, device: torch.device, horizon: int) -> None:
        self.gamma = gamma
        #: token indices 0..horizon - 1 (a round of g drafts at gen < max_new reads gen..gen + g)
        self.horizon = horizon
        self.ar = torch.arange(gamma + 1, device=device)

    def keys(self, seeds: Tensor) -> Tensor:  # seeds [B] -> [B, 3, horizon] uniforms
        keys = stream_keys(seeds)
        start = torch.zeros_like(seeds, dtype=torch.long)
        # in chunks of indices: the hash's int64 temporaries stay small for long generations
        step = max(1, (1 << 20) // max(3 * seeds.shape[0], 1))
        parts = [round_uniforms(keys, start + s, min(step, self.horizon - s)) for s in range(0, self.horizon, step)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def round(self, keys: Tensor, gen: Tensor, g: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        g = self.gamma if g is None else g
        at = gen.unsqueeze(1) + self.ar[: g + 1]  # [B, g + 1] token indices of the round
        u = keys.gather(2, at.unsqueeze(1).expand(-1, keys.shape[1], -1))  # [B, 3, g + 1]
        return u[:, 0], u[:, 1, :g], u[:, 2]


# ---- the in-round draft stop -------------------------------------------------------------------------------


class DraftStop:
    """One round's draft stop on the draft's confidence in its own tokens (``draft_confidence_threshold``).

    After the draft samples ``x_i`` from ``q_i`` (the distribution it sampled from: tempered and filtered), a
    row whose ``q_i(x_i)`` is below the threshold drafts nothing more this round: its block ends with ``x_i``,
    and position ``i + 1`` takes the token a round of ``i`` drafts would give it there, the bonus draw (from
    ``pi``, or ``p`` with ``bonus="target"``) with the sample stream's uniform at that token index. Rows that
    stopped keep being fed drafts (the batch's forwards are shared) which nothing reads: verification never
    passes a row's ``limit``.

    Exact: whether position ``i + 1`` is drafted depends only on ``x_1..x_i`` and the draft's distributions
    there, i.e. on position ``i + 1``'s prefix; when verification reaches ``i + 1`` those tokens have all been
    accepted, so the choice is a function of the emitted prefix, like a block size chosen before the round
    (THEORY.md section 7), and the token there is drawn from ``pi`` at its prefix either way.
    """

    def __init__(self, threshold: float, batch: int, device: torch.device) -> None:
        self.threshold = threshold
        #: [B] bool: rows still drafting
        self.going = torch.ones(batch, dtype=torch.bool, device=device)
        #: [B] long: drafts each row offers for verification (its block ends after them)
        self.limit = torch.zeros(batch, dtype=torch.long, device=device)

    def step(
        self,
        q: Tensor,  # [B, V] the distribution the draft just sampled from
        drafted: Tensor,  # [B] the tokens it sampled
    ) -> Tensor:
        """Count ``drafted`` in the blocks of the rows still drafting, then stop those that doubt it; returns
        the rows still drafting ``[B]`` bool."""
        low = q.gather(1, drafted.unsqueeze(1)).squeeze(1) < self.threshold
        self.limit += self.going
        self.going &= ~low
        return self.going


# ---- per-row counters -------------------------------------------------------------------------------------

#: per-row statistics of the draft stop, in ``CallContext.extra`` (DecodeStats.extra) while it is on: the drafts
#: each row offered for verification, and the rounds whose drafting its stop ended before the round's gamma
STOP_EXTRA = ("drafts_offered", "confidence_stops")


def _stop_extra(ctx: CallContext) -> None:
    for name in STOP_EXTRA:
        ctx.extra[name] = torch.zeros(ctx.batch, dtype=torch.long, device=ctx.device)


class _DirectCounters:
    """Reference: every round adds into the call's counters at the live rows' ids."""

    def __init__(self, ctx: CallContext, gamma: int) -> None:
        self.cnt, self.gamma = ctx.counters, gamma
        self.ar_g = torch.arange(gamma, device=ctx.device)
        #: per-live-row tensors that follow the live rows (none: the counters are indexed by row id)
        self.live: tuple[Tensor, ...] = ()
        self.extra = ctx.extra
        if ctx.draft_stop is not None:
            _stop_extra(ctx)

    def add(self, row_ids: Tensor, acc: Tensor, defer_drafted: Tensor, g: int | None = None,
            limit: Tensor | None = None, planned: int | None = None, track: bool = False) -> Tensor | None:
        """``acc`` ``[B]`` accepted drafts of a round of ``g`` (default gamma) drafts, ``defer_drafted``
        ``[B, g]`` deferral at the drafted tokens (None: 1 at each; both unused when ``g = 0``). With the draft
        stop, ``limit`` ``[B]`` drafts each row offered (<= g) out of the round's ``planned`` gamma: a row's
        drafts after its limit were never offered, and ending there is not a rejection. ``track``: also
        return the round's ``[B, 2 gamma]`` per-position indicators (verified, then accepted), as the lean
        counters keep them."""
        cnt = self.cnt
        g = self.gamma if g is None else g
        if g == 0:  # a plain target step: one round, one target call, nothing drafted
            cnt.rounds[row_ids] += 1
            cnt.target_calls[row_ids] += 1
            return None
        ar_g = self.ar_g[:g]
        reached = ar_g.unsqueeze(0) <= acc.unsqueeze(1)
        if limit is not None:  # verified: offered and reached
            reached = reached & (ar_g.unsqueeze(0) < limit.unsqueeze(1))
            self.extra[STOP_EXTRA[0]][row_ids] += limit
            self.extra[STOP_EXTRA[1]][row_ids] += (limit < planned).long()
        n_reached = reached.sum(dim=1)
        cnt.rounds[row_ids] += 1
        cnt.draft_calls[row_ids] += g + 1
        cnt.target_calls[row_ids] += 1
        cnt.drafted[row_ids] += n_reached
        cnt.accepted[row_ids] += acc
        cnt.rejections[row_ids] += (acc < (g if limit is None else limit)).long()
        passed = ar_g.unsqueeze(0) < acc.unsqueeze(1)
        cnt.pos_reached[row_ids, :g] += reached.long()
        cnt.pos_accepted[row_ids, :g] += passed.long()
        if defer_drafted is None:  # deferral 1 at every drafted token
            cnt.deferred[row_ids] += reached.double().sum(dim=1)
        else:
            cnt.deferred[row_ids] += (defer_drafted.double() * reached).sum(dim=1)
        cnt.defer_positions[row_ids] += n_reached
        if not track:
            return None
        pad = (0, self.gamma - g)  # positions g.. of a shorter round: neither verified nor accepted
        return torch.cat([torch.nn.functional.pad(reached, pad), torch.nn.functional.pad(passed, pad)], dim=1)

    def flush(self, row_ids: Tensor) -> None:
        pass


class _LiveCounters:
    """Lean: per live row, one ``[B, 2 gamma]`` long tensor of how often each draft position was verified
    (columns ``j < gamma``) and accepted (columns ``gamma + j``), and one ``[B]`` float64 deferral sum;
    assigned back (so float sums keep their order) when rows leave and at the end.

    The other counters follow exactly: drafted = sum of the verified columns, accepted = sum of the accepted
    ones, rejections = drafted - accepted (a round verifies ``min(acc + 1, g)`` drafts and rejects one iff
    ``acc < g``), and every live row took part in every round so far (rows only leave), so rounds, target
    calls and draft calls are host-side numbers. While every round's deferral is 1 at each drafted token
    (``defer_drafted=None``), the deferral sum is drafted itself (integers, exact in float64) and is neither
    accumulated nor carried. With the draft stop, a row's drafts after its ``limit`` are neither verified nor
    accepted (the columns' masks say so; the identities above still hold, since a row ending at its limit
    is not a rejection), and one more ``[B, 2]`` long tensor counts its offered drafts and its stops."""

    def __init__(self, ctx: CallContext, gamma: int) -> None:
        self.cnt, self.gamma = ctx.counters, gamma
        ar = torch.arange(gamma, device=ctx.device)
        # position j was verified iff j <= acc and accepted iff j + 1 <= acc: one comparison for both halves
        self.thresholds = torch.cat([ar, ar + 1]).unsqueeze(0)  # [1, 2 gamma]
        self._drafted: dict[int, Tensor] = {}  # g -> [1, 2 gamma] bool: positions < g (a shorter round)
        acc_i = torch.zeros((ctx.batch, 2 * gamma), dtype=torch.long, device=ctx.device)
        self.extra = ctx.extra
        #: (acc_i, acc_s, acc_d): acc_s [B, 2] (offered drafts, stops) only with the draft stop; acc_d only once
        #: a round's deferral was not 1 at each drafted token (until then the deferral sum is the drafted count)
        self.live: tuple[Tensor, ...] = (acc_i,)
        self._fixed = 1  # leading entries of live that are always there
        if ctx.draft_stop is not None:
            _stop_extra(ctx)
            self.positions = torch.cat([ar, ar]).unsqueeze(0)  # [1, 2 gamma]: the draft position of each column
            self.live = (acc_i, torch.zeros((ctx.batch, 2), dtype=torch.long, device=ctx.device))
            self._fixed = 2
        self.rounds = self.draft_calls = 0

    def add(self, row_ids: Tensor, acc: Tensor | None, defer_drafted: Tensor | None, g: int | None = None,
            limit: Tensor | None = None, planned: int | None = None, track: bool = False) -> Tensor | None:
        """``acc`` ``[B]`` accepted drafts of a round of ``g`` (default gamma) drafts, ``defer_drafted``
        ``[B, g]`` deferral at the drafted tokens (both unused, and may be None, when ``g = 0``). With the draft
        stop, ``limit`` ``[B]`` drafts each row offered (<= g) out of the round's ``planned`` gamma. Returns the
        round's ``[B, 2 gamma]`` per-position indicators (verified, then accepted; None when ``g = 0``)."""
        gamma = self.gamma
        g = gamma if g is None else g
        self.rounds += 1
        if g == 0:  # a plain target step: one round, one target call, nothing drafted
            return None
        self.draft_calls += g + 1
        acc_i = self.live[0]
        hit = self.thresholds <= acc.unsqueeze(1)  # [B, 2 gamma]: verified | accepted
        if limit is not None:  # positions from a row's limit on were not offered (limit <= g: shorter rounds too)
            hit = hit & (self.positions < limit.unsqueeze(1))
            self.live[1].add_(torch.stack([limit, (limit < planned).long()], dim=1))
        elif g < gamma:  # a shorter round: positions g.. were not drafted (acc <= g, so only j = g can be hit)
            mask = self._drafted.get(g)
            if mask is None:
                mask = self._drafted[g] = (torch.arange(gamma, device=acc.device) < g).repeat(2).unsqueeze(0)
            hit = hit & mask
        fixed = self._fixed
        if defer_drafted is None:
            acc_i += hit
            if len(self.live) > fixed:
                self.live[fixed].add_(hit[:, :g].double().sum(dim=1))
            return hit
        if len(self.live) == fixed:  # the deferral sum so far, of exact integers: the drafted count
            self.live = (*self.live, acc_i[:, :gamma].sum(dim=1).double())
        acc_i += hit
        self.live[fixed].add_((defer_drafted.double() * hit[:, :g]).sum(dim=1))
        return hit

    def flush(self, row_ids: Tensor) -> None:
        g, cnt = self.gamma, self.cnt
        acc_i = self.live[0]
        if self._fixed > 1:
            for j, name in enumerate(STOP_EXTRA):
                self.extra[name][row_ids] = self.live[1][:, j]
        drafted, n_acc = acc_i[:, :g].sum(dim=1), acc_i[:, g:].sum(dim=1)
        table = cnt.table
        table[row_ids, cnt.CALLS.start] = self.draft_calls
        table[row_ids, cnt.CALLS.start + 1 : cnt.CALLS.stop] = self.rounds  # target calls, rounds
        # drafted, defer_positions, accepted, rejections, pos_reached, pos_accepted
        counts = torch.cat([torch.stack([drafted, drafted, n_acc, drafted - n_acc], dim=1), acc_i], dim=1)
        table[row_ids, cnt.SPECULATIVE_START : cnt.SPECULATIVE_START + 4 + 2 * g] = counts
        cnt.deferred[row_ids] = self.live[self._fixed] if len(self.live) > self._fixed else drafted.double()


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

        Softmax rows are in [0, 1] or all NaN: a max is NaN iff some row is (max propagates NaN), and
        softmax is non-finite iff the logits are NaN, +inf or all -inf.
        """
        # a max over everything is NaN iff some entry is: the same verdict as per-row maxima, in fewer ops
        return (q_rule.amax() + p_rule.amax()).isnan()

    @staticmethod
    def logits_nonfinite(logits: Tensor) -> Tensor:
        return any_nonfinite(logits)


def round_plan(lean: bool, ctx: CallContext, gamma: int) -> RoundPlan:
    """The reference (``lean=False``) or lean round of one call."""
    if lean:
        # every index a row can reach: gen < max_new, plus a block of gamma + 1 (and a margin)
        horizon = ctx.max_new + gamma + 2
        return RoundPlan(_BatchedUniforms(gamma, ctx.device, horizon), _LiveCounters(ctx, gamma), False, True, True)
    return RoundPlan(_KeyedUniforms(gamma, ctx.device), _DirectCounters(ctx, gamma), True, False, False)
