"""Calibration and ranking metrics of probability estimates (pure functions)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["auc", "brier", "ece"]


def ece(prob: Tensor, target: Tensor, bins: int = 15, weight: Tensor | None = None) -> float:
    """Expected calibration error with ``bins`` equal-width bins: ``sum_b w_b |mean(target) - mean(prob)|``.

    ``target`` may be soft (in [0, 1]): calibration compares the predicted to the realized mean either way.
    """
    prob, target = prob.reshape(-1).double(), target.reshape(-1).double()
    w = torch.ones_like(prob) if weight is None else weight.reshape(-1).double()
    total = float(w.sum())
    if total <= 0:
        return math.nan
    idx = (prob * bins).long().clamp(0, bins - 1)
    p_b = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, w * prob)
    t_b = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, w * target)
    return float((p_b - t_b).abs().sum() / total)


def auc(prob: Tensor, target: Tensor) -> float:
    """Area under the ROC curve for binary targets (ties count one half); NaN with a single class or soft
    targets (AUC needs hard labels)."""
    prob, target = prob.reshape(-1).double(), target.reshape(-1).double()
    if not bool(((target == 0) | (target == 1)).all()):
        return math.nan
    pos, neg = int((target == 1).sum()), int((target == 0).sum())
    if pos == 0 or neg == 0:
        return math.nan
    # Mann-Whitney U with average ranks for ties.
    order = torch.argsort(prob)
    _, inverse, counts = torch.unique(prob[order], return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1  # 1-based rank of each distinct value's first occurrence
    ranks = torch.empty_like(prob)
    ranks[order] = (first + (counts - 1) / 2).double()[inverse]
    u = float(ranks[target == 1].sum()) - pos * (pos + 1) / 2
    return u / (pos * neg)


def brier(prob: Tensor, target: Tensor) -> float:
    return float(((prob.double() - target.double()) ** 2).mean())
