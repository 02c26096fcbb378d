"""Deterministic train/validation split of logged rows by example id (never splits an example)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["holdout_mask"]


def _bucket(example_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def holdout_mask(example_ids: Sequence[str], fraction: float, seed: int = 0) -> Tensor:
    """``[N]`` bool: True for rows whose example is held out. A hash of (seed, id), so the split does not depend
    on row order, sharding or which other examples were logged, and training and evaluation agree on it."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1], got {fraction}")
    cache: dict[str, bool] = {}
    out = []
    for eid in example_ids:
        if eid not in cache:
            cache[eid] = _bucket(str(eid), seed) < fraction
        out.append(cache[eid])
    return torch.tensor(out, dtype=torch.bool)
