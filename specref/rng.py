"""Counter-based uniforms: a pure function of (row seed, counter, stream).

The decoder keys every random number by the row's own seed and the absolute position of the token it
serves, so a row's output never depends on which other rows share its batch, on the batch size, or on the
device. A keyed hash (splitmix64's finaliser over a combined key) is vectorised, device-agnostic and needs
no per-row ``torch.Generator`` loop.

Reusing a key after a rejection is safe: the uniforms of position ``t + 1`` never influence whether the
draft at ``t`` is accepted, so, conditioned on everything emitted up to ``t``, they are still fresh.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["STREAM_ACCEPT", "STREAM_DRAFT", "STREAM_SAMPLE", "hash64", "key_uniform", "keyed_uniform"]

# One stream per purpose, so the draft draw, the accept coin and the residual draw at a position differ.
STREAM_DRAFT = 1
STREAM_ACCEPT = 2
STREAM_SAMPLE = 3

_M1 = -0x40A7B892E31B1A47  # 0xBF58476D1CE4E5B9 as a signed int64
_M2 = -0x6B2FB644ECCEEE15  # 0x94D049BB133111EB as a signed int64
_GOLDEN = -0x61C8864680B583EB  # 0x9E3779B97F4A7C15 as a signed int64


def _srl(x: Tensor, s: int) -> Tensor:
    """Logical right shift on int64 (torch's ``>>`` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def hash64(x: Tensor) -> Tensor:
    """splitmix64 finaliser on int64 tensors (wrapping arithmetic)."""
    x = x ^ _srl(x, 30)
    x = x * _M1
    x = x ^ _srl(x, 27)
    x = x * _M2
    return x ^ _srl(x, 31)


def keyed_uniform(
    seed: Tensor,  # [B] int64 per-row seeds
    counter: Tensor,  # [B, K] int64 per-row counters (e.g. absolute token positions)
    stream: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniforms in [0, 1) of shape ``[B, K]``, a pure function of ``(seed[b], counter[b, k], stream)``.

    float64 gives 53 random bits; any other dtype gives float32 with 24 bits (half types could round to 1).
    """
    seed = seed.to(torch.int64)
    counter = counter.to(torch.int64)
    key = hash64(hash64(seed) + stream)  # [B] the row's key for this stream
    return key_uniform(key.unsqueeze(-1), counter, dtype)


def key_uniform(
    key: Tensor,  # [...] int64 stream keys hash64(hash64(seed) + stream), broadcastable against counter
    counter: Tensor,  # [...] int64 counters
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The last step of :func:`keyed_uniform`: uniforms of the broadcast shape of ``key`` and ``counter``.

    Public so that a caller holding the keys already (the lean decoding round draws all of a round's
    streams in one pass, :func:`specref.decode.rounds.round_uniforms`) gets exactly the same bits.
    """
    # splitmix64's own construction: output i of the generator seeded with `key` is mix(key + i * golden).
    h = hash64(key + (counter + 1) * _GOLDEN)
    if dtype == torch.float64:
        bits, scale = 53, 2.0**-53
    else:
        # 24 bits: every value is exact in float32 and strictly below 1.
        bits, scale = 24, 2.0**-24
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return (_srl(h, 64 - bits).to(torch.float64) * scale).to(out_dtype)
