"""Exact output distributions of the block algorithm, by enumeration over tiny vocabularies.

A toy LM is any callable ``prefix: tuple[int, ...] -> Tensor [V]`` giving UNtempered next-token
probabilities (float64 recommended). Sampling settings (temperature, top-k, top-p) are applied here exactly
as the decoder applies them: rules read the untempered pair, mixing and sampling use the tempered,
filtered pair.

Three independent computations, which the tests hold against each other:

* :func:`block_distribution` enumerates the LITERAL block algorithm: every draft sequence of a round,
  every verification outcome, the residual draw at the first rejection and the bonus token.
* :func:`chain_distribution` is the closed form: a Markov chain over (prefix, index within the round), in
  which each position emits ``v`` and continues the round with probability ``q(v) a(v)`` or ends it with
  probability ``(1 - sum q a) residual(v)``, and the position after ``gamma`` accepted drafts emits the bonus
  token. It handles both bonus modes.
* :func:`token_cascade_distribution` is the token-level cascade ``prod_t pi_t``, which the theory says the
  block algorithm equals when the bonus token is drawn from pi.

The first two take the decoder's in-round draft stop (``draft_confidence_threshold``): a round's drafting
ends after a draft ``v`` with ``q(v)`` below the threshold (tempered, filtered ``q``), and the next position
takes the bonus token. In the chain, drafting such a ``v`` leads to the bonus state instead of the next index.

Every function memoises per prefix, so cost is polynomial in the number of reachable prefixes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from specref.dists import check_distribution, temper, top_k_filter, top_p_filter
from specref.rules import Rule, RuleOutput

__all__ = [
    "Sampling",
    "ToyLM",
    "block_distribution",
    "chain_distribution",
    "expected_round_tokens",
    "expected_target_calls",
    "first_round_accepted",
    "lm_distribution",
    "token_cascade_distribution",
    "total_variation",
]

ToyLM = Callable[[tuple[int, ...]], Tensor]
Dist = dict[tuple[int, ...], float]


@dataclass(frozen=True)
class Sampling:
    """Sampling settings shared by the decoder and the exact references."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def apply(self, probs: Tensor) -> Tensor:  # [..., V] untempered -> tempered and filtered
        return top_p_filter(top_k_filter(temper(probs, self.temperature), self.top_k), self.top_p)


@dataclass(frozen=True)
class _Position:
    q: Tensor  # [V] tempered draft distribution
    p: Tensor  # [V] tempered target distribution
    out: RuleOutput


class _Oracle:
    """Memoised per-prefix distributions and rule outputs for one (draft, target, rule, sampling)."""

    def __init__(self, draft_lm: ToyLM, target_lm: ToyLM, rule: Rule, sampling: Sampling) -> None:
        self.draft_lm, self.target_lm, self.rule, self.sampling = draft_lm, target_lm, rule, sampling
        self._cache: dict[tuple[int, ...], _Position] = {}

    def __call__(self, prefix: tuple[int, ...]) -> _Position:
        hit = self._cache.get(prefix)
        if hit is None:
            q_rule = _lm_probs(self.draft_lm, prefix, "draft_lm")
            p_rule = _lm_probs(self.target_lm, prefix, "target_lm")
            if q_rule.shape != p_rule.shape:
                raise ValueError(f"draft and target vocabularies differ: {q_rule.shape} vs {p_rule.shape}")
            q, p = self.sampling.apply(q_rule), self.sampling.apply(p_rule)
            out = self.rule(q, p, q_rule=q_rule, p_rule=p_rule, validate=False)
            hit = self._cache[prefix] = _Position(q, p, out)
        return hit


def _resolve(sampling: Sampling | None, temperature: float, top_k: int | None, top_p: float | None) -> Sampling:
    if sampling is not None:
        return sampling
    return Sampling(temperature, top_k, top_p)


def _lm_probs(lm: ToyLM, prefix: tuple[int, ...], name: str) -> Tensor:
    x = lm(prefix)
    return check_distribution(x.to(torch.float64) if x.dtype != torch.float64 else x, f"{name}{prefix}")


def _support(x: Tensor) -> Iterator[tuple[int, float]]:
    for v, pv in enumerate(x.tolist()):
        if pv > 0:
            yield v, pv


def _check_args(gamma: int, n: int, bonus: str, stop: float | None = None) -> None:
    if int(gamma) != gamma or gamma < 1:
        raise ValueError(f"gamma must be an integer >= 1, got {gamma!r}")
    if stop is not None and not 0.0 < stop < 1.0:
        raise ValueError(f"draft_confidence_threshold must be in (0, 1) or None, got {stop!r}")
    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if bonus not in ("pi", "target"):
        raise ValueError(f"bonus must be 'pi' or 'target', got {bonus!r}")


def total_variation(a: Dist, b: Dist) -> float:
    """Total variation distance between two distributions given as dicts."""
    keys = set(a) | set(b)
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in keys)


def lm_distribution(
    lm: ToyLM,
    n: int,
    sampling: Sampling | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Dist:
    """Distribution of the first ``n`` tokens sampled from one LM (tempered and filtered)."""
    sampling = _resolve(sampling, temperature, top_k, top_p)
    out: Dist = {}

    def rec(prefix: tuple[int, ...], prob: float) -> None:
        if len(prefix) == n:
            out[prefix] = out.get(prefix, 0.0) + prob
            return
        for v, pv in _support(sampling.apply(_lm_probs(lm, prefix, "lm"))):
            rec(prefix + (v,), prob * pv)

    rec((), 1.0)
    return out


def token_cascade_distribution(
    draft_lm: ToyLM,
    target_lm: ToyLM,
    rule: Rule,
    n: int,
    sampling: Sampling | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Dist:
    """``prod_t pi_t``: the token-level cascade that samples each token from the rule's pi."""
    sampling = _resolve(sampling, temperature, top_k, top_p)
    _check_args(1, n, "pi")
    oracle = _Oracle(draft_lm, target_lm, rule, sampling)
    out: Dist = {}

    def rec(prefix: tuple[int, ...], prob: float) -> None:
        if len(prefix) == n:
            out[prefix] = out.get(prefix, 0.0) + prob
            return
        for v, pv in _support(oracle(prefix).out.pi):
            rec(prefix + (v,), prob * pv)

    rec((), 1.0)
    return out


def _draft_blocks(oracle: _Oracle, prefix: tuple[int, ...], gamma: int, stop: float | None) -> Iterator[
        tuple[tuple[int, ...], float, list[_Position]]]:
    """Every block the draft can produce from ``prefix``: (drafts, probability, the positions it visits). A
    block has ``gamma`` drafts, or ends early after a draft ``d`` with ``q(d) < stop`` (the draft stop)."""

    def rec(ctx: tuple[int, ...], drafts: tuple[int, ...], prob: float, positions: list[_Position]) -> Iterator[
            tuple[tuple[int, ...], float, list[_Position]]]:
        if len(drafts) == gamma:
            yield drafts, prob, positions
            return
        pos = oracle(ctx)
        for d, qd in _support(pos.q):
            block = (drafts + (d,), prob * qd, [*positions, pos])
            if stop is not None and qd < stop:
                yield block
            else:
                yield from rec(ctx + (d,), *block)

    yield from rec(prefix, (), 1.0, [])


def _round_outcomes(oracle: _Oracle, prefix: tuple[int, ...], gamma: int, bonus: str,
                    stop: float | None = None) -> Dist:
    """Literal enumeration of one round from ``prefix``: emitted-token tuple -> probability."""
    outcomes: Dist = defaultdict(float)
    for drafts, prob_drafts, positions in _draft_blocks(oracle, prefix, gamma, stop):
        # Verify left to right; stop at the first rejection.
        reach = prob_drafts
        for i, (d, pos) in enumerate(zip(drafts, positions)):
            a = float(pos.out.accept[d])
            reject = reach * (1.0 - a)
            if reject > 0:
                for v, rv in _support(pos.out.residual):
                    outcomes[drafts[:i] + (v,)] += reject * rv
            reach *= a
            if reach == 0.0:
                break
        if reach > 0:
            last = oracle(prefix + drafts)
            bonus_dist = last.out.pi if bonus == "pi" else last.p
            for v, bv in _support(bonus_dist):
                outcomes[drafts + (v,)] += reach * bv
    return outcomes


def block_distribution(
    draft_lm: ToyLM,
    target_lm: ToyLM,
    rule: Rule,
    gamma: int,
    n: int,
    bonus: str = "pi",
    sampling: Sampling | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    draft_confidence_threshold: float | None = None,
) -> Dist:
    """Exact distribution of the first ``n`` tokens emitted by the block algorithm (literal enumeration).

    Cost grows like ``V ** gamma`` per reachable prefix: meant for ``V <= 4``, ``gamma <= 3``, ``n <= 4``.
    """
    sampling = _resolve(sampling, temperature, top_k, top_p)
    stop = draft_confidence_threshold
    _check_args(gamma, n, bonus, stop)
    oracle = _Oracle(draft_lm, target_lm, rule, sampling)

    @cache
    def rounds(prefix: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], float], ...]:
        return tuple(_round_outcomes(oracle, prefix, gamma, bonus, stop).items())

    out: Dist = defaultdict(float)

    def rec(prefix: tuple[int, ...], emitted: tuple[int, ...], prob: float) -> None:
        for tokens, pr in rounds(prefix):
            need = n - len(emitted)
            if len(tokens) >= need:
                out[emitted + tokens[:need]] += prob * pr
            else:
                rec(prefix + tokens, emitted + tokens, prob * pr)

    rec((), (), 1.0)
    return dict(out)


def _chain_steps(oracle: _Oracle, prefix: tuple[int, ...], k: int, gamma: int, bonus: str,
                 stop: float | None = None):
    """Transitions out of state (prefix, k): yields (token, probability, next k). State ``gamma`` is the bonus
    position; an accepted draft the draft stop ends the round after (``q(v) < stop``) leads there too."""
    pos = oracle(prefix)
    if k == gamma:
        for v, bv in _support(pos.out.pi if bonus == "pi" else pos.p):
            yield v, bv, 0
        return
    kept = pos.q * pos.out.accept
    reject = max(0.0, 1.0 - float(kept.sum()))
    for v in range(kept.shape[-1]):
        if kept[v] > 0:
            yield v, float(kept[v]), gamma if stop is not None and float(pos.q[v]) < stop else k + 1
        if reject > 0 and pos.out.residual[v] > 0:
            yield v, reject * float(pos.out.residual[v]), 0


def chain_distribution(
    draft_lm: ToyLM,
    target_lm: ToyLM,
    rule: Rule,
    gamma: int,
    n: int,
    bonus: str = "pi",
    sampling: Sampling | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    draft_confidence_threshold: float | None = None,
) -> Dist:
    """Closed-form distribution of the first ``n`` emitted tokens (see the module docstring)."""
    sampling = _resolve(sampling, temperature, top_k, top_p)
    stop = draft_confidence_threshold
    _check_args(gamma, n, bonus, stop)
    oracle = _Oracle(draft_lm, target_lm, rule, sampling)
    out: Dist = defaultdict(float)

    def rec(prefix: tuple[int, ...], k: int, prob: float) -> None:
        if len(prefix) == n:
            out[prefix] += prob
            return
        for v, pv, nk in _chain_steps(oracle, prefix, k, gamma, bonus, stop):
            rec(prefix + (v,), nk, prob * pv)

    rec((), 0, 1.0)
    return dict(out)


def expected_target_calls(
    draft_lm: ToyLM,
    target_lm: ToyLM,
    rule: Rule,
    gamma: int,
    n: int,
    bonus: str = "pi",
    sampling: Sampling | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    draft_confidence_threshold: float | None = None,
) -> float:
    """Expected number of rounds (one target call each) until at least ``n`` tokens are emitted."""
    sampling = _resolve(sampling, temperature, top_k, top_p)
    stop = draft_confidence_threshold
    _check_args(gamma, n, bonus, stop)
    oracle = _Oracle(draft_lm, target_lm, rule, sampling)

    @cache
    def calls(prefix: tuple[int, ...], k: int, remaining: int) -> float:
        if remaining == 0:
            return 0.0
        total = 1.0 if k == 0 else 0.0
        for v, pv, nk in _chain_steps(oracle, prefix, k, gamma, bonus, stop):
            total += pv * calls(prefix + (v,), nk, remaining - 1)
        return total

    return calls((), 0, n)


def first_round_accepted(
    draft_lm: ToyLM,
    target_lm: ToyLM,
    rule: Rule,
    gamma: int,
    prefix: tuple[int, ...] = (),
    sampling: Sampling | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    """Exact distribution ``[gamma + 1]`` of the number of drafts accepted in the round starting at ``prefix``."""
    sampling = _resolve(sampling, temperature, top_k, top_p)
    _check_args(gamma, 1, "pi")
    oracle = _Oracle(draft_lm, target_lm, rule, sampling)
    out = torch.zeros(gamma + 1, dtype=torch.float64)

    def rec(ctx: tuple[int, ...], k: int, prob: float) -> None:
        if k == gamma:
            out[gamma] += prob
            return
        pos = oracle(ctx)
        kept = pos.q * pos.out.accept
        out[k] += prob * max(0.0, 1.0 - float(kept.sum()))
        for v, kv in _support(kept):
            rec(ctx + (v,), k + 1, prob * kv)

    rec(tuple(prefix), 0, 1.0)
    return out


def expected_round_tokens(
    draft_lm: ToyLM,
    target_lm: ToyLM,
    rule: Rule,
    gamma: int,
    prefix: tuple[int, ...] = (),
    sampling: Sampling | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> float:
    """Expected tokens emitted by one round (one target call) from ``prefix``: E[accepted] + 1."""
    sampling = _resolve(sampling, temperature, top_k, top_p)
    dist = first_round_accepted(draft_lm, target_lm, rule, gamma, prefix, sampling)
    return float((dist * torch.arange(gamma + 1, dtype=dist.dtype)).sum()) + 1.0
