"""Table-2 numbers per seed, their spread, and paired verdicts (specref.repro.seed_spread) on hand-made rows."""

from __future__ import annotations

import math
import statistics

import pytest
from test_repro_summary import _row

from specref.repro.seed_spread import compare, seed_spread

TARGET = {0: 20.0, 1: 21.0, 2: 19.0}  # each seed's target quality: its SD, pooled with SpecDecode's, is the noise


def _rows(opt_lat, learned_lat, learned_gain=1.0):
    """Per seed: target, draft, SpecDecode (the target's law), OPT matching the target at ``opt_lat[s]`` and
    the learned rule matching it at ``learned_lat[s]`` and beating it by ``learned_gain`` at latency 0.9."""
    rows = []
    for s, y in TARGET.items():
        rows += [_row("target", None, y, 1.0, seed=s), _row("draft", None, 10.0, 0.2, seed=s),
                 _row("specdecode", None, y, 0.7, seed=s),
                 _row("opt", 0.0, y, opt_lat[s], seed=s), _row("opt", 0.5, 10.0, 0.25, seed=s),
                 _row("learned", 0.0, y, learned_lat[s], seed=s), _row("learned", 0.5, 10.0, 0.25, seed=s),
                 _row("learned", -1.0, y + learned_gain, 0.9, seed=s)]
    return rows


def _spreads(rows):
    avg, spreads = seed_spread(rows, interpolate=False)
    return avg, {s.method: s for s in spreads}


def test_per_seed_numbers_and_their_spread():
    opt_lat, learned_lat = (0.5, 0.4, 0.625), (0.4, 0.35, 0.45)
    avg, by = _spreads(_rows(opt_lat, learned_lat))
    assert avg.seeds == 3 and avg.match_rule == "noise"
    opt = by["opt"]
    assert opt.seeds == (0, 1, 2)
    assert opt.speedup_per_seed == pytest.approx([1 / x for x in opt_lat])
    assert opt.speedup_spread == pytest.approx(statistics.stdev([1 / x for x in opt_lat]))
    assert opt.speedup == pytest.approx(1 / (sum(opt_lat) / 3))  # off the seed-averaged curve
    assert opt.best_delta_per_seed == pytest.approx([0.0, 0.0, 0.0]) and opt.best_delta_spread == 0.0
    learned = by["learned"]
    assert learned.best_delta_per_seed == pytest.approx([1.0, 1.0, 1.0]) and learned.best_delta == pytest.approx(1.0)


def test_paired_verdicts_and_their_negative_control():
    opt_lat = (0.5, 0.4, 0.625)
    _, by = _spreads(_rows(opt_lat, (0.4, 0.35, 0.45)))
    c = compare(by["learned"], by["opt"], "speedup")
    diffs = [1 / a - 1 / b for a, b in zip((0.4, 0.35, 0.45), opt_lat)]
    assert c.diff == pytest.approx(sum(diffs) / 3) and c.diff_spread == pytest.approx(statistics.stdev(diffs))
    assert c.verdict == "better"
    assert compare(by["opt"], by["learned"], "speedup").verdict == "worse"
    assert compare(by["learned"], by["opt"], "best_delta").verdict == "better"
    # Negative control: faster on average, but slower on seed 1: within noise, not "better".
    _, mixed = _spreads(_rows(opt_lat, (0.4, 0.5, 0.45)))
    assert compare(mixed["learned"], mixed["opt"], "speedup").verdict == "within noise"
    # and a gain smaller than the seed spread is not a win either
    _, small = _spreads(_rows(opt_lat, tuple(x * 0.97 for x in opt_lat)))
    assert compare(small["learned"], small["opt"], "speedup").verdict == "within noise"


def test_one_seed_is_not_judged_and_bad_input_is_refused():
    rows = [r for r in _rows((0.5, 0.4, 0.6), (0.4, 0.35, 0.45)) if r["seed"] == 0]
    _, by = _spreads(rows)
    assert math.isnan(by["opt"].speedup_spread)
    assert compare(by["learned"], by["opt"], "speedup").verdict == "not judged"
    with pytest.raises(ValueError, match="quantity must be"):
        compare(by["learned"], by["opt"], "latency")
    with pytest.raises(ValueError, match="exactly one setting"):
        seed_spread([r for r in rows if r["method"] != "target"])
