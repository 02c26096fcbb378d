"""Goodness-of-fit tests of samples against an exact distribution, and of two samples against each other
(used by the statistical test suite and the real-pair exactness check).

The chi-square test pools cells whose expected count is small, and treats any sample outside the exact
support as an immediate rejection (p = 0): an impossible outcome is proof of a bug, not noise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GofResult", "chi2_sf", "chi_square_gof", "chi_square_homogeneity", "chi_square_test"]


def chi2_sf(x: float, dof: int) -> float:
    """Survival function of the chi-square distribution (regularised upper incomplete gamma)."""
    if dof <= 0:
        return 1.0
    if x <= 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                         torch.tensor(x / 2.0, dtype=torch.float64)))


@dataclass(frozen=True)
class GofResult:
    """Outcome of a goodness-of-fit test.

    Attributes:
        statistic: Pearson's chi-square statistic over the (pooled) cells.
        dof: degrees of freedom (cells - 1).
        p_value: probability of a statistic at least this large if the samples follow the exact law.
        impossible: number of samples that fell outside the exact support.
        n: number of samples.
    """

    statistic: float
    dof: int
    p_value: float
    impossible: int
    n: int

    def rejects(self, level: float) -> bool:
        return self.p_value < level


def _as_tuples(samples: Tensor | Iterable[Iterable[int]]) -> list[tuple[int, ...]]:
    if isinstance(samples, Tensor):
        return [tuple(row) for row in samples.tolist()]
    return [tuple(row) for row in samples]


def chi_square_gof(
    samples: Tensor | Iterable[Iterable[int]],  # [N, n] outcomes, one row per sample
    exact: Mapping[tuple[int, ...], float],
    min_expected: float = 5.0,
) -> GofResult:
    """Pearson chi-square test of ``samples`` against the exact law ``exact`` (outcome tuple -> prob).

    Cells with expected count below ``min_expected`` are pooled into one cell (and that pool merged into
    the smallest remaining cell if it is itself too small), the usual validity condition of the test.
    """
    rows = _as_tuples(samples)
    n = len(rows)
    if n == 0:
        raise ValueError("no samples")
    total = sum(exact.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"exact distribution sums to {total}, not 1")
    counts = Counter(rows)
    impossible = sum(c for k, c in counts.items() if exact.get(k, 0.0) <= 0.0)
    if impossible:
        return GofResult(float("inf"), 0, 0.0, impossible, n)
    big, pool_obs, pool_exp = [], 0.0, 0.0
    for key, prob in exact.items():
        if prob <= 0:
            continue
        e = prob * n
        if e >= min_expected:
            big.append((counts.get(key, 0), e))
        else:
            pool_obs += counts.get(key, 0)
            pool_exp += e
    if pool_exp > 0:
        if pool_exp >= min_expected or not big:
            big.append((pool_obs, pool_exp))
        else:
            i = min(range(len(big)), key=lambda j: big[j][1])
            o, e = big[i]
            big[i] = (o + pool_obs, e + pool_exp)
    stat = sum((o - e) ** 2 / e for o, e in big)
    dof = len(big) - 1
    return GofResult(stat, dof, chi2_sf(stat, dof), 0, n)


def chi_square_homogeneity(a: Mapping, b: Mapping, min_count: int = 5) -> GofResult:
    """Pearson chi-square test that two samples (outcome -> count) come from one law, its exact law unknown.

    Outcomes seen fewer than ``min_count`` times in the pooled sample are merged into one cell (dropped if
    that cell is itself too small), so every expected count is large enough for the test to hold.
    ``n`` is the pooled sample size; ``impossible`` is always 0 (no law to be outside of).
    """
    na, nb = sum(a.values()), sum(b.values())
    if na == 0 or nb == 0:
        raise ValueError(f"both samples need outcomes, got {na} and {nb}")
    pooled = Counter(a) + Counter(b)
    cells = [(a.get(k, 0), b.get(k, 0)) for k, n in pooled.items() if n >= min_count]
    rest = (sum(a.get(k, 0) for k, n in pooled.items() if n < min_count),
            sum(b.get(k, 0) for k, n in pooled.items() if n < min_count))
    if sum(rest) >= min_count:
        cells.append(rest)
    n = na + nb
    stat = 0.0
    for oa, ob in cells:
        for o, size in ((oa, na), (ob, nb)):
            e = size * (oa + ob) / n
            stat += (o - e) ** 2 / e
    dof = len(cells) - 1
    return GofResult(stat, dof, chi2_sf(stat, dof), 0, n)


#: Alias kept for callers that use the generic name.
chi_square_test = chi_square_gof
