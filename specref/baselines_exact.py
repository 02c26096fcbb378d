"""Exact output distributions of the sequential baselines over toy LMs, by enumeration.

Toy LMs are :data:`specref.exact.ToyLM` callables ``prefix -> [V]`` UNtempered next-token probabilities.
Sampling (temperature, top-k, top-p) is applied exactly as the decoder applies it: decisions read the
untempered distributions, tokens are drawn from the tempered, filtered ones. These references define what
:mod:`specref.decode.baselines` must sample; the statistical tests hold the decoder against them.

* :func:`seq_cascade_distribution`: SeqCascade [Chow] with the whole answer limited to ``n`` tokens.
* :func:`bild_distribution`: BiLD with ``max_new_tokens = n``.
* TokenCascade [Chow] needs no new code: it is ``exact.token_cascade_distribution`` with the ``chow`` rule
  (equivalently :func:`bild_distribution` with ``fallback = 1 - alpha`` and no rollback).

With ``eos`` (a set of token ids) an outcome may be shorter than ``n``: it ends with its EOS token.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from functools import cache

import torch

from specref.exact import Sampling, ToyLM

__all__ = ["bild_distribution", "lm_paths", "seq_cascade_distribution", "sequence_confidence"]

Dist = dict[tuple[int, ...], float]


def _probs(lm: ToyLM, prefix: tuple[int, ...]) -> torch.Tensor:
    x = lm(prefix)
    return x.to(torch.float64)


def _sampling(sampling: Sampling | None, temperature: float, top_k: int | None, top_p: float | None) -> Sampling:
    return sampling if sampling is not None else Sampling(temperature, top_k, top_p)


def _eos_set(eos: int | Iterable[int] | None) -> frozenset[int]:
    if eos is None:
        return frozenset()
    if isinstance(eos, int):
        return frozenset({eos})
    return frozenset(int(e) for e in eos)


def lm_paths(
    lm: ToyLM, n: int, sampling: Sampling, eos: frozenset[int] = frozenset()
) -> list[tuple[tuple[int, ...], float, tuple[float, ...]]]:
    """Every sampled path of at most ``n`` tokens: ``(tokens, probability, untempered log-probs)``."""
    out = []

    def rec(prefix: tuple[int, ...], prob: float, lps: tuple[float, ...]) -> None:
        if len(prefix) == n or (prefix and prefix[-1] in eos):
            out.append((prefix, prob, lps))
            return
        raw = _probs(lm, prefix)
        for v, pv in enumerate(sampling.apply(raw).tolist()):
            if pv > 0:
                rec(prefix + (v,), prob * pv, lps + (math.log(float(raw[v])) if raw[v] > 0 else -math.inf,))

    rec((), 1.0, ())
    return out


def sequence_confidence(logprobs: tuple[float, ...], aggregate: str, quantile: float = 0.5) -> float:
    """``sum``, ``mean`` or linear-interpolation ``quantile`` of a path's token log-probabilities."""
    if aggregate == "sum":
        return float(sum(logprobs))
    if aggregate == "mean":
        return float(sum(logprobs)) / len(logprobs)
    if aggregate != "quantile":
        raise ValueError(f"aggregate must be 'mean', 'sum' or 'quantile', got {aggregate!r}")
    s = sorted(logprobs)
    x = quantile * (len(s) - 1)
    lo = math.floor(x)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (x - lo) * (s[hi] - s[lo])


def seq_cascade_distribution(
    draft_lm: ToyLM,
    target_lm: ToyLM,
    n: int,
    *,
    aggregate: str = "mean",
    quantile: float = 0.5,
    threshold: float | None = None,
    alpha: float | None = None,
    sampling: Sampling | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos: int | Iterable[int] | None = None,
) -> Dist:
    """SeqCascade [Chow] with answers of at most ``n`` tokens: keep the draft's answer iff its confidence
    (``aggregate`` of its untempered token log-probs) is ``>= threshold`` (default ``log(1 - alpha)``),
    else the target's independent answer."""
    if threshold is None:
        threshold = math.log1p(-(0.0 if alpha is None else float(alpha)))
    s = _sampling(sampling, temperature, top_k, top_p)
    eos_ids = _eos_set(eos)
    out: Dist = defaultdict(float)
    defer = 0.0
    for path, prob, lps in lm_paths(draft_lm, n, s, eos_ids):
        if sequence_confidence(lps, aggregate, quantile) < threshold:
            defer += prob
        else:
            out[path] += prob
    if defer > 0:
        for path, prob, _ in lm_paths(target_lm, n, s, eos_ids):
            out[path] += defer * prob
    return dict(out)


def bild_distribution(
    draft_lm: ToyLM,
    target_lm: ToyLM,
    n: int,
    *,
    fallback: float,
    rollback: float = math.inf,
    sampling: Sampling | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos: int | Iterable[int] | None = None,
) -> Dist:
    """BiLD with ``max_new_tokens = n`` (the process of :class:`specref.decode.baselines.BiLDDecoder`).

    State: the tokens so far and how many of them the target has checked. The draft proposes while its
    untempered max probability is ``>= fallback``. At a fallback at position t, the target scores the
    unchecked positions; the first unchecked draft token x_j with ``-log p_j(x_j) > rollback`` (untempered)
    is replaced by a draw from p_j (the tokens after it are dropped), else position t is drawn from p_t.
    Everything up to the target's token is then checked. ``rollback = inf`` is TokenCascade with Chow's
    threshold ``fallback``.
    """
    s = _sampling(sampling, temperature, top_k, top_p)
    eos_ids = _eos_set(eos)

    @cache
    def draft_at(prefix: tuple[int, ...]) -> torch.Tensor:
        return _probs(draft_lm, prefix)

    @cache
    def target_at(prefix: tuple[int, ...]) -> torch.Tensor:
        return _probs(target_lm, prefix)

    out: Dist = defaultdict(float)

    def rec(x: tuple[int, ...], checked: int, prob: float) -> None:
        if len(x) == n or (x and x[-1] in eos_ids):
            out[x] += prob
            return
        t = len(x)
        q_raw = draft_at(x)
        if float(q_raw.max()) >= fallback:
            for v, pv in enumerate(s.apply(q_raw).tolist()):
                if pv > 0:
                    rec(x + (v,), checked, prob * pv)
            return
        m = t
        if math.isfinite(rollback):
            for j in range(checked, t):
                pj = float(target_at(x[:j])[x[j]])
                nll = -math.log(pj) if pj > 0 else math.inf
                if nll > rollback:
                    m = j
                    break
        for v, pv in enumerate(s.apply(target_at(x[:m])).tolist()):
            if pv > 0:
                rec(x[:m] + (v,), m + 1, prob * pv)

    rec((), 0, 1.0)
    return dict(out)
