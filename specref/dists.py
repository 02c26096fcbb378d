"""Distributions over a vocabulary: validation, temperature, top-k / top-p filters, total variation.

Every function here is pure tensor math over the last dimension ``[..., V]``. Nothing syncs with the host
except the explicit validators, which the hot loop of the decoder does not call, and :func:`stable_top_k` on
a CPU tensor only (reading a CPU tensor costs no device round trip).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_ATOL",
    "check_distribution",
    "check_logits",
    "check_same_vocab",
    "normalize",
    "one_hot_argmax",
    "probs_from_logits",
    "sample_categorical",
    "stable_top_k",
    "temper",
    "top_k_filter",
    "top_p_filter",
    "tv",
]

DEFAULT_ATOL = 1e-4


def _require_float(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{name} must have a non-empty last (vocabulary) dimension, got shape {tuple(x.shape)}")


def check_distribution(x: Tensor, name: str = "probs", atol: float = DEFAULT_ATOL) -> Tensor:
    """Raise ``ValueError`` unless ``x`` ``[..., V]`` is finite, non-negative and sums to 1 along ``V``.

    Returns ``x`` so calls can be chained. This syncs with the host; keep it out of hot loops.
    """
    _require_float(x, name)
    if x.numel() == 0:
        return x
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    most_negative = float(x.min())
    if most_negative < -atol:
        raise ValueError(f"{name} has a negative entry ({most_negative:.3g}); probabilities must be >= 0")
    sums = x.sum(dim=-1)
    worst = float((sums - 1).abs().max())
    if worst > atol * max(1.0, math.sqrt(x.shape[-1]) / 10):
        raise ValueError(
            f"{name} does not sum to 1 along the vocabulary dimension (worst row sums to "
            f"{float(sums.flatten()[(sums - 1).abs().flatten().argmax()]):.6g}); pass probabilities, not logits"
        )
    return x


def check_logits(x: Tensor, name: str = "logits") -> Tensor:
    """Raise ``ValueError`` if ``x`` ``[..., V]`` has NaN or +inf entries (-inf masks a token and is fine)."""
    _require_float(x, name)
    if bool(torch.isnan(x).any()) or bool(torch.isposinf(x).any()):
        raise ValueError(f"{name} contain NaN or +inf")
    if bool(torch.isneginf(x).all(dim=-1).any()):
        raise ValueError(f"{name} mask every token of some row (all -inf)")
    return x


def check_same_vocab(q: Tensor, p: Tensor, names: tuple[str, str] = ("q", "p")) -> None:
    """Raise ``ValueError`` unless two distributions share shape, vocabulary size, dtype and device."""
    if q.shape[-1] != p.shape[-1]:
        raise ValueError(
            f"{names[0]} and {names[1]} have different vocabulary sizes ({q.shape[-1]} vs {p.shape[-1]}); "
            "draft and target must share one vocabulary"
        )
    if q.shape != p.shape:
        raise ValueError(f"{names[0]} and {names[1]} have different shapes: {tuple(q.shape)} vs {tuple(p.shape)}")
    if q.device != p.device:
        raise ValueError(f"{names[0]} and {names[1]} are on different devices: {q.device} vs {p.device}")


def normalize(x: Tensor) -> Tensor:
    """Rescale non-negative ``x`` ``[..., V]`` to sum to 1; an all-zero row stays all-zero."""
    total = x.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, x / total.clamp_min(torch.finfo(x.dtype).tiny), x)


def one_hot_argmax(x: Tensor) -> Tensor:
    """One-hot of the argmax of ``x`` ``[..., V]``; ties go to the LOWEST index (torch.argmax's rule)."""
    return torch.nn.functional.one_hot(x.argmax(dim=-1), x.shape[-1]).to(x.dtype)


def temper(probs: Tensor, temperature: float) -> Tensor:
    """Temperature-scale a distribution ``[..., V]``: ``probs ** (1 / T)`` renormalised.

    ``T = 0`` gives the one-hot argmax (lowest index on ties), ``T = 1`` returns ``probs`` unchanged.
    """
    temperature = _check_temperature(temperature)
    if temperature == 1.0:
        return probs
    if temperature == 0.0:
        return one_hot_argmax(probs)
    logp = torch.log(probs)  # zeros become -inf and stay zero after softmax
    return torch.softmax(logp / temperature, dim=-1)


def _check_temperature(temperature: float) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        t = math.nan  # reported below with the same message as any other bad value
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    return t


def stable_top_k(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of ``x`` ``[..., V]`` (finite values): ids ``[..., k]`` long and values
    ``[..., k]``, descending, ties to the lower token index.

    Exactly the first ``k`` of ``torch.sort(x, descending=True, stable=True)``, so ``ids[..., 0]`` is
    torch.argmax's answer and nothing depends on a device's top-k tie order, but in O(V) work: a full stable
    sort over a large vocabulary is what made a learned head's features cost ten times the rest of a round.

    On a CPU one partial selection of ``k + 1`` entries decides most rows: where the (k+1)-th largest value
    is strictly below the k-th, the k selected entries are the only ones at or above the k-th largest, so the
    selected set is the stable sort's whatever the kernel's tie order; only their order is then fixed. Rows
    with a tie across that boundary (and every row on other devices, where the test would cost a host sync)
    go through :func:`_tie_aware_ids`.
    """
    v = x.shape[-1]
    k = min(int(k), v)
    if x.device.type == "cpu" and k < v:
        top, ids = _cpu_top(x, k + 1)
        ids = ids[..., :k]
        # a NaN (topk ranks it first) takes the general path too, as every row did before
        tie = ~(top[..., k] < top[..., k - 1]) | torch.isnan(top[..., 0])
        if bool(tie.any()):
            ids = ids.clone()
            ids[tie] = _tie_aware_ids(x[tie], k, top[tie][..., k - 1 : k])
        ids = ids.sort(dim=-1).values  # ascending index
    else:
        ids = _tie_aware_ids(x, k, torch.topk(x, k, dim=-1).values[..., k - 1 :])
    values = x.gather(-1, ids)
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices  # k entries: cheap
    return ids.gather(-1, order), values.gather(-1, order)


# Entries per block of the CPU top-k's prefilter.
_BLOCK = 64


def _cpu_top(x: Tensor, n: int) -> tuple[Tensor, Tensor]:  # [..., V] -> values [..., n] descending, ids [..., n]
    """The ``n`` largest values of each row, with ids of entries holding them (any ids among equal values).

    Rows are cut into blocks of ``_BLOCK``; the ``n`` blocks with the largest maxima (plus any last partial
    block) hold the answer: those maxima are ``n`` entries at or above the n-th largest block maximum ``t``,
    so the row's n-th largest value is at least ``t``, while every other entry is at most its block's maximum,
    at most ``t``. So one contiguous max pass and a top-k of a few hundred candidates replace a top-k over V,
    which copies every row into (value, index) pairs.
    """
    v = x.shape[-1]
    blocks = v // _BLOCK
    if blocks < 4 * n or not x.is_contiguous():
        return torch.topk(x, n, dim=-1)
    xf = x.view(-1, v)
    best = torch.topk(xf[:, : blocks * _BLOCK].view(-1, blocks, _BLOCK).amax(dim=-1), n, dim=-1).indices
    ids = (best.unsqueeze(-1) * _BLOCK + torch.arange(_BLOCK, device=x.device)).flatten(1)  # [R, n * _BLOCK]
    if blocks * _BLOCK < v:
        ids = torch.cat([ids, torch.arange(blocks * _BLOCK, v, device=x.device).expand(ids.shape[0], -1)], dim=-1)
    top, at = torch.topk(xf.gather(-1, ids), n, dim=-1)
    return top.view(*x.shape[:-1], n), ids.gather(-1, at).view(*x.shape[:-1], n)


def _tie_aware_ids(
    x: Tensor,  # [..., V]
    k: int,
    kth: Tensor,  # [..., 1] the k-th largest value of each row
) -> Tensor:  # [..., k] ascending
    """The ids of every entry above ``kth`` plus the lowest-index entries equal to it, k per row.

    Keys: ``index - V`` above the k-th largest, ``index`` at it, ``V`` below. Fewer than k entries lie above
    it and at least k at or above it, so the k smallest keys are distinct and exactly that set: the smallest-k
    selection is unambiguous whatever the kernel's tie order.
    """
    v = x.shape[-1]
    # int32 keys where they fit: the key passes are memory-bound
    index = torch.arange(v, device=x.device, dtype=torch.int32 if v < 2**30 else torch.long)
    key = torch.where(x > kth, index - v, torch.where(x == kth, index, v))
    chosen = torch.topk(key, k, dim=-1, largest=False).values.long()
    return torch.where(chosen < 0, chosen + v, chosen).sort(dim=-1).values


def top_k_filter(probs: Tensor, k: int | None) -> Tensor:
    """Keep the ``k`` most likely tokens of ``probs`` ``[..., V]`` and renormalise.

    Ties at the boundary are broken towards the lower token index so the result is deterministic.
    ``k`` of None or >= V is a no-op.
    """
    if k is None:
        return probs
    if isinstance(k, bool) or not isinstance(k, numbers.Real) or int(k) != k or k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {k!r}")
    if k >= probs.shape[-1]:
        return probs
    ids, _ = stable_top_k(probs, int(k))
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, ids, True)
    return normalize(torch.where(keep, probs, torch.zeros_like(probs)))


def top_p_filter(probs: Tensor, top_p: float | None) -> Tensor:
    """Nucleus filter: keep the smallest most-likely set whose mass reaches ``top_p``, renormalised.

    The most likely token is always kept; ties are ordered by token index. ``top_p`` of None or 1 is a no-op.
    """
    if top_p is None:
        return probs
    try:
        tp = float(top_p)
    except (TypeError, ValueError):
        tp = math.nan  # reported below
    if not (0.0 < tp <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if tp == 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    keep_sorted = mass_before < tp
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return normalize(torch.where(keep, probs, torch.zeros_like(probs)))


def probs_from_logits(
    logits: Tensor,  # [..., V]
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Turn logits into (untempered probs, tempered-and-filtered probs), both ``[..., V]``.

    The first is what deferral rules read, the second what is sampled and mixed (THEORY.md section 5).
    Filters apply after temperature, the order Hugging Face uses. Computed in float32 at least.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.to(dtype)
    raw = torch.softmax(logits, dim=-1)
    t = _check_temperature(temperature)
    if t == 0.0:
        sampled = one_hot_argmax(logits)
    elif t == 1.0:
        sampled = raw
    else:
        sampled = torch.softmax(logits / t, dim=-1)
    sampled = top_p_filter(top_k_filter(sampled, top_k), top_p)
    return raw, sampled


def tv(p: Tensor, q: Tensor) -> Tensor:
    """Total variation distance ``sum_v max(0, p(v) - q(v))`` over the last dimension: ``[..., V] -> [...]``."""
    return (p - q).clamp_min_(0).sum(dim=-1)  # in place on the fresh difference: one [..., V] temporary, not two


def sample_categorical(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw from ``probs`` ``[..., V]`` with uniforms ``u`` ``[...]`` in [0, 1): ``[...]`` long.

    Explicit uniforms make a path reproducible and let a row's randomness be keyed by its own counter.
    A zero-probability token is never returned, even when rounding pushes ``u * total`` to the top.
    """
    cdf = torch.cumsum(probs, dim=-1)
    total = cdf[..., -1:]
    x = (u.to(cdf.dtype).unsqueeze(-1) * total).contiguous()
    idx = torch.searchsorted(cdf.contiguous(), x, right=True).squeeze(-1)
    positive = probs > 0
    last_positive = probs.shape[-1] - 1 - positive.flip(-1).to(torch.int8).argmax(dim=-1)
    return torch.minimum(idx, last_positive)
