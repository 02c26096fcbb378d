"""Block-size policies: the number of drafts ``g`` of each speculative round, chosen before the round.

The sampled law does not depend on the block size: every emitted token is drawn from the rule's ``pi`` at its
prefix (THEORY.md section 5), whichever position of a block it takes, and a choice made from what earlier
rounds did uses no randomness of the rounds to come (each draw is keyed by its row, position and stream,
:mod:`specref.rng`). So any policy that reads only the past keeps the decoder exact; the exactness tests
check it with the block size varying between rounds. What a policy changes is the cost, and, because rows of
a batch share a round's block size, which tokens a row gets for its seed: with a policy, a row's tokens
depend on its batch (their law does not).

:class:`AdaptiveGamma` picks the ``g`` in ``1..gamma_max`` (``0..gamma_max`` when the rule's ``pi`` is the
target's ``p``, as for SpecDecode: ``g = 0`` is then a plain target step, one token for one target step, and
the draft catches up on the skipped tokens in its next forward) with the most expected tokens per modeled cost,
from the running acceptance rate of the call's verified drafts (with a prior) and the step costs. A round
of ``g`` drafts costs ``(g + 1) c + 1 + verify_slope * g + round_overhead`` target steps (``g + 1`` draft
forwards, one target call scoring ``g + 1`` positions, each extra position costing ``verify_slope`` of a target
step: about 0 at small batch, where a forward reads the weights once whatever the block, and larger at large
batch; and the work outside the forwards that every round pays once: sampling, verification, bookkeeping,
the host sync) and emits ``(1 - a^(g + 1)) / (1 - a)`` tokens in expectation when each draft is accepted with
probability ``a`` independently (Leviathan et al. 2023, Eq. 1). Acceptances are not independent in practice: a
round's first draft is rejected more often than the drafts that follow an accepted one (text the draft knows
comes in stretches; on the ``arith-llama`` pair 0.64 at the first draft, 0.82-0.94 after it), so with
``by_position`` (the default) the policy estimates the acceptance at each draft position ``j`` given that the
drafts before it passed, ``a_j``, from the call's verified drafts at that position (shrunk towards the call's
overall rate by ``prior_weight``), and a round of ``g`` drafts emits ``1 + a_0 + a_0 a_1 + ... + a_0 ... a_(g-1)``
tokens in expectation (the same as Eq. 1 when every ``a_j`` is ``a``). A plain target step (``g = 0``) costs
``1 + plain_overhead`` (its own, smaller, work outside the forward: sampling and bookkeeping, no
verification); it is only chosen once the call has verified as many drafts as the prior counts
(``prior_weight``), so the prior alone never turns speculation off. The per-round work is what makes long
blocks worth more than their draft forwards alone say: folding it into ``c`` instead charges it once per draft
forward, so short blocks and plain steps look cheaper than they are.

A batch shares its rounds, so it runs until its slowest row is done; a plain step gives every row exactly one
token, a drafting round a random number. With ``stragglers`` (the default) and a batch of ``B > 1`` rows that
may each emit ``N`` tokens, the policy divides a drafting round's expected tokens ``mu`` by the rounds the
batch needs per round its mean row needs, ``1 + z_B sigma / sqrt(N mu)`` (:func:`straggler_factor`): a row's
rounds to ``N`` tokens have mean about ``N / mu`` and standard deviation ``sqrt(N sigma^2 / mu^3)`` (the
renewal central limit theorem; ``sigma`` is the standard deviation of a round's tokens,
:func:`tokens_per_round_sd`), and the largest of ``B`` such counts exceeds the mean by about ``z_B`` of them,
``z_B`` the expected largest of ``B`` standard normals (:func:`expected_max_normal`). On the 7B / 1B pair at
acceptance 0.8 the factor is 1.13 / 1.19 / 1.21 at batch 8 / 32 / 64 for 128 tokens and ``g = 5``; the
measured rounds were 1.09-1.27x / 1.15-1.19x / 1.20-1.32x those of the mean row. The factor charges the
whole call's waste to every round, which is right for a block size held through the call; it takes the
call's batch and token budget, not what is left of them, since the spread of the rows already made is sunk.
It models the static engines, where a finished row keeps its place in every forward; on the dynamic ones
(``plain``, ``fast``) finished rows leave the batch, so the tail costs less than the factor charges. EOS ends
rows early too: ``N`` is the budget, not the expected length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from specref.cost import expected_tokens_per_call

__all__ = ["AdaptiveGamma", "expected_max_normal", "expected_tokens", "expected_tokens_at", "round_cost",
           "round_token_moments", "straggler_factor", "tokens_per_round_sd"]


def expected_tokens(g: int, a: float) -> float:
    """Expected tokens of a round of ``g`` drafts, each accepted with probability ``a`` (then a bonus): Eq. 1,
    :func:`specref.cost.expected_tokens_per_call`, and 1 for a plain step (``g = 0``)."""
    return 1.0 if g == 0 else expected_tokens_per_call(min(max(a, 0.0), 1.0), g)


def round_token_moments(g_max: int, rates: list[float]) -> list[tuple[float, float]]:
    """``(E X, sd X)`` of a round's tokens ``X`` for every ``g`` in ``0..g_max``, in one pass: ``g`` drafts,
    draft ``j`` accepted with probability ``rates[j]`` given that the drafts before it were, then a residual or
    bonus token. From ``P(X >= k + 1) = r_0 ... r_(k-1)``: ``E X = sum_k P(X >= k + 1)`` and
    ``E X^2 = sum_k (2k + 1) P(X >= k + 1)``, partial sums over ``k = 0..g``."""
    out, mean, second, alive = [], 0.0, 0.0, 1.0
    for k in range(g_max + 1):
        mean += alive
        second += (2 * k + 1) * alive
        out.append((mean, math.sqrt(max(0.0, second - mean * mean))))
        if k < g_max:
            alive *= rates[k]
    return out


def expected_tokens_at(g: int, rates: list[float]) -> float:
    """Expected tokens of a round of ``g`` drafts when draft ``j`` is accepted with probability ``rates[j]`` given
    that drafts ``0..j-1`` were (then a bonus): ``1 + r_0 + r_0 r_1 + ... + r_0 ... r_(g-1)``."""
    return round_token_moments(g, rates)[g][0]


def tokens_per_round_sd(g: int, rates: list[float]) -> float:
    """Standard deviation of a round's tokens (``g`` drafts, per-position ``rates``; :func:`round_token_moments`)."""
    return round_token_moments(g, rates)[g][1]


@cache
def expected_max_normal(n: int) -> float:
    """``E max(Z_1, ..., Z_n)`` of ``n`` independent standard normals (0 for ``n = 1``, ``1 / sqrt(pi)`` for 2),
    by the trapezoid rule on ``n z phi(z) Phi(z)^(n - 1)`` over [-9, 9]."""
    if n < 1:
        raise ValueError(f"expected_max_normal needs n >= 1, got {n!r}")
    if n == 1:
        return 0.0
    lo, hi, steps = -9.0, 9.0, 3600
    h = (hi - lo) / steps
    total = 0.0
    for i in range(steps + 1):
        z = lo + i * h
        dens = n * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * (0.5 * (1 + math.erf(z / math.sqrt(2)))) ** (n - 1)
        total += (0.5 if i in (0, steps) else 1.0) * z * dens
    return total * h


def straggler_factor(rows: int, new_tokens: int, mean: float, sd: float) -> float:
    """Rounds a batch of ``rows`` rows needs to give each ``new_tokens`` tokens, per round its mean row needs,
    when a round gives a row ``mean`` tokens with standard deviation ``sd``: ``1 + z_rows sd / sqrt(new_tokens
    mean)`` (see the module docstring; 1 for one row or a plain step)."""
    if rows <= 1 or sd <= 0.0:
        return 1.0
    return 1.0 + expected_max_normal(rows) * sd / math.sqrt(max(new_tokens, 1) * mean)


def round_cost(g: int, c: float, verify_slope: float, round_overhead: float = 0.0,
               plain_overhead: float = 0.0) -> float:
    """Modeled cost of a round of ``g`` drafts (``g = 0``: a plain target step), in target steps."""
    if g == 0:
        return 1.0 + plain_overhead
    return (g + 1) * c + 1.0 + verify_slope * g + round_overhead


@dataclass(frozen=True)
class AdaptiveGamma:
    """Choose each round's ``g`` in ``1..gamma_max`` by expected tokens per modeled cost.

    Attributes:
        c: draft/target step cost ratio; None: the decoder's ``c`` (the one its modeled latency uses).
        verify_slope: extra cost of each additional verified position, in target steps (>= 0).
        round_overhead: work outside the forwards that every drafting round pays once, in target steps (>= 0).
        plain_overhead: the same for a plain target step (``g = 0``), in target steps (>= 0).
        prior_acceptance: acceptance rate assumed before any draft is verified, in [0, 1].
        prior_weight: how many verified drafts the prior counts as (> 0).
        probe_every: after this many rounds in a row without drafts (``g = 0``), one round drafts 1 token,
            so the acceptance estimate can recover when the text gets easier (>= 1).
        by_position: estimate the acceptance per draft position (given the drafts before it passed) when the
            decoder gives the per-position counts, instead of one rate for all positions.
        stragglers: at a batch of several rows, count a drafting round's tokens at the rate the batch gets
            them, its slowest row setting the call's length (:func:`straggler_factor`).
    """

    c: float | None = None
    verify_slope: float = 0.0
    round_overhead: float = 0.0
    plain_overhead: float = 0.0
    prior_acceptance: float = 0.7
    prior_weight: float = 8.0
    probe_every: int = 16
    by_position: bool = True
    stragglers: bool = True

    def __post_init__(self) -> None:
        if self.c is not None and not (math.isfinite(self.c) and self.c >= 0):
            raise ValueError(f"AdaptiveGamma c must be a finite number >= 0 (or None), got {self.c!r}")
        if not (math.isfinite(self.verify_slope) and self.verify_slope >= 0):
            raise ValueError(f"AdaptiveGamma verify_slope must be a finite number >= 0, got {self.verify_slope!r}")
        for name in ("round_overhead", "plain_overhead"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"AdaptiveGamma {name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.prior_acceptance <= 1.0:
            raise ValueError(f"AdaptiveGamma prior_acceptance must be in [0, 1], got {self.prior_acceptance!r}")
        if not (math.isfinite(self.prior_weight) and self.prior_weight > 0):
            raise ValueError(f"AdaptiveGamma prior_weight must be a finite number > 0, got {self.prior_weight!r}")
        if isinstance(self.probe_every, bool) or not isinstance(self.probe_every, int) or self.probe_every < 1:
            raise ValueError(f"AdaptiveGamma probe_every must be an integer >= 1, got {self.probe_every!r}")
        for name in ("by_position", "stragglers"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"AdaptiveGamma {name} must be True or False, got {getattr(self, name)!r}")

    def acceptance(self, accepted: int, verified: int) -> float:
        """The running acceptance estimate from ``accepted`` of ``verified`` drafts so far."""
        w = self.prior_weight
        return (accepted + w * self.prior_acceptance) / (verified + w)

    def position_rates(self, gamma_max: int, a: float, accepted_at: list[int], verified_at: list[int]) -> list[float]:
        """``a_j`` for ``j < gamma_max``: the acceptance of draft ``j`` given that the drafts before it passed,
        from ``accepted_at[j]`` of ``verified_at[j]``, shrunk with ``prior_weight`` verified drafts' worth
        towards the rate of the position before (position 0: towards the overall rate ``a``). Shrinking along
        the positions lets a position that short rounds rarely reach take its neighbour's rate rather than the
        overall one, which the first position's lower rate pulls down."""
        w, rates, prev = self.prior_weight, [], a
        for j in range(gamma_max):
            acc_j, ver_j = (accepted_at[j], verified_at[j]) if j < len(verified_at) else (0, 0)
            prev = (acc_j + w * prev) / (ver_j + w)
            rates.append(prev)
        return rates

    def choose(self, gamma_max: int, c: float, accepted: int, verified: int, allow_zero: bool = False,
               since_draft: int = 0, *, by_position: tuple[list[int], list[int]] | None = None, rows: int = 1,
               new_tokens: int | None = None) -> int:
        """The block size of the next round (ties: the smaller ``g``). ``allow_zero``: a round may skip the
        draft; ``since_draft``: rounds in a row that did (a probe round follows ``probe_every`` of them);
        ``by_position``: the call's accepted and verified drafts at each draft position (used when
        :attr:`by_position` is on); ``rows`` and ``new_tokens``: the call's batch and the tokens each row may
        emit (used when :attr:`stragglers` is on; None: no budget known, no straggler charge)."""
        if allow_zero and since_draft >= self.probe_every:
            return 1
        c = self.c if self.c is not None else c
        a = self.acceptance(accepted, verified)
        # the prior alone never turns speculation off: a plain step verifies nothing, so a call that started
        # with g = 0 would learn nothing until its first probe; g = 0 needs as many verified drafts as the prior
        # counts
        low = 0 if allow_zero and verified >= self.prior_weight else 1
        costs = (self.verify_slope, self.round_overhead, self.plain_overhead)
        by_pos = self.by_position and by_position is not None
        at = self.position_rates(gamma_max, a, *by_position) if by_pos else [a] * gamma_max
        moments = round_token_moments(gamma_max, at)  # [(E X, sd X)] for g = 0..gamma_max
        tokens = {g: moments[g][0] for g in range(low, gamma_max + 1)}
        if self.stragglers and rows > 1 and new_tokens:
            tokens = {g: t / straggler_factor(rows, new_tokens, t, moments[g][1]) for g, t in tokens.items()}
        rates = {g: tokens[g] / round_cost(g, c, *costs) for g in tokens}
        return max(rates, key=lambda g: (rates[g], -g))
