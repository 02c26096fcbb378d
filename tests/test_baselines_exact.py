"""The exact references of the sequential baselines agree with each other and with specref.exact."""

from __future__ import annotations

import math

import pytest
import torch

from specref import exact, rules
from specref.baselines_exact import bild_distribution, seq_cascade_distribution, sequence_confidence
from specref.exact import Sampling
from specref.toy import TableLM


@pytest.fixture(scope="module")
def lms():
    g = torch.Generator().manual_seed(0)
    return TableLM.random(4, 2, g, concentration=0.5), TableLM.random(4, 2, g, concentration=0.5)


def close(a, b, tol=1e-12):
    return exact.total_variation(a, b) < tol


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(0.7, 3, 0.9), Sampling(0.0)])
def test_bild_without_rollback_is_token_cascade_chow(lms, sampling):
    draft, target = lms
    for alpha in (0.2, 0.5):
        a = bild_distribution(draft, target, 3, fallback=1 - alpha, sampling=sampling)
        b = exact.token_cascade_distribution(draft, target, rules.get("chow", alpha=alpha), 3, sampling)
        assert close(a, b)


def test_bild_limits(lms):
    draft, target = lms
    assert close(bild_distribution(draft, target, 3, fallback=0.0, rollback=0.5), exact.lm_distribution(draft, 3))
    assert close(bild_distribution(draft, target, 3, fallback=1.01, rollback=0.5), exact.lm_distribution(target, 3))
    d = bild_distribution(draft, target, 3, fallback=0.6, rollback=0.7)
    assert abs(sum(d.values()) - 1) < 1e-12
    assert not close(d, bild_distribution(draft, target, 3, fallback=0.6))  # rollback changes the law


def test_seq_cascade_limits(lms):
    draft, target = lms
    for agg in ("mean", "sum", "quantile"):
        assert close(
            seq_cascade_distribution(draft, target, 3, aggregate=agg, threshold=math.inf),
            exact.lm_distribution(target, 3),
        )
        assert close(
            seq_cascade_distribution(draft, target, 3, aggregate=agg, threshold=-math.inf),
            exact.lm_distribution(draft, 3),
        )
        mid = seq_cascade_distribution(draft, target, 3, aggregate=agg, alpha=0.5)
        assert abs(sum(mid.values()) - 1) < 1e-12


def test_eos_ends_outcomes(lms):
    draft, target = lms
    for d in (
        seq_cascade_distribution(draft, target, 3, alpha=0.5, eos=1),
        bild_distribution(draft, target, 3, fallback=0.6, rollback=0.7, eos=[1]),
    ):
        assert abs(sum(d.values()) - 1) < 1e-12
        assert all(len(k) == 3 or k[-1] == 1 for k in d)
        assert all(1 not in k[:-1] for k in d)


def test_sequence_confidence_matches_torch():
    from specref.decode.baselines import sequence_confidence as batched

    lps = (-0.3, -2.0, -0.1, -1.2, -0.7)
    t = torch.tensor([list(lps)], dtype=torch.float64)
    for q in (0.0, 0.25, 0.5, 0.9, 1.0):
        assert sequence_confidence(lps, "quantile", q) == pytest.approx(torch.quantile(t[0], q).item())
        assert batched(t, torch.tensor([5]), "quantile", q).item() == pytest.approx(torch.quantile(t[0], q).item())
        short = batched(torch.cat([t, torch.zeros(1, 3, dtype=torch.float64)], 1), torch.tensor([3]), "quantile", q)
        assert short.item() == pytest.approx(torch.quantile(t[0, :3], q).item())
    assert sequence_confidence(lps, "sum") == pytest.approx(sum(lps))
    assert sequence_confidence(lps, "mean") == pytest.approx(sum(lps) / 5)
