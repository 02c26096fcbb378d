"""Counter-based uniforms (specref.rng): determinism, independence of keys, uniformity, range, batch invariance.

The uniformity tests are chi-square tests at level 1e-3 on fixed keys, so they are deterministic; the
chosen keys are ordinary (not searched for), and a correct generator fails each with probability 1e-3.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from specref.rng import STREAM_ACCEPT, STREAM_DRAFT, STREAM_SAMPLE, hash64, keyed_uniform

LEVEL = 1e-3
MASK64 = (1 << 64) - 1

seeds = st.integers(-(2**63), 2**63 - 1)
counters = st.integers(0, 2**40)


def _py_mix(z: int) -> int:
    """splitmix64's finaliser on Python ints (the reference the int64 tensor version must match)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _signed(z: int) -> int:
    return z - (1 << 64) if z >= 1 << 63 else z


@given(st.lists(seeds, min_size=1, max_size=8))
def test_hash64_is_splitmix64(values):
    out = hash64(torch.tensor(values, dtype=torch.int64)).tolist()
    assert out == [_signed(_py_mix(v)) for v in values]


def test_hash64_known_answer():
    # First output of splitmix64 seeded with 0 is mix(0x9E3779B97F4A7C15) = 0xE220A8397B1DCDAF.
    assert hash64(torch.tensor([_signed(0x9E3779B97F4A7C15)])).item() == _signed(0xE220A8397B1DCDAF)


@given(st.lists(seeds, min_size=1, max_size=4), st.lists(counters, min_size=1, max_size=5), st.sampled_from([1, 2, 3]))
def test_deterministic_and_batch_invariant(seed_list, counter_list, stream):
    seed = torch.tensor(seed_list, dtype=torch.int64)
    counter = torch.tensor(counter_list, dtype=torch.int64).expand(len(seed_list), -1)
    for dtype in (torch.float32, torch.float64):
        u = keyed_uniform(seed, counter, stream, dtype)
        assert torch.equal(u, keyed_uniform(seed.clone(), counter.clone(), stream, dtype))
        for i in range(len(seed_list)):
            # a row alone, and each element alone, gives the same numbers as inside the batch
            assert torch.equal(keyed_uniform(seed[i : i + 1], counter[i : i + 1], stream, dtype)[0], u[i])
            for k in range(len(counter_list)):
                single = keyed_uniform(seed[i : i + 1], counter[i : i + 1, k : k + 1], stream, dtype)
                assert single.item() == u[i, k].item()


def test_values_in_unit_interval_and_dtypes():
    seed = torch.arange(-500, 500, dtype=torch.int64)
    counter = torch.arange(300, dtype=torch.int64).expand(1000, -1)
    for dtype, out_dtype in ((torch.float32, torch.float32), (torch.float64, torch.float64),
                             (torch.float16, torch.float32), (torch.bfloat16, torch.float32)):
        u = keyed_uniform(seed, counter, STREAM_DRAFT, dtype)
        assert u.dtype == out_dtype
        assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    # the largest possible hash maps strictly below 1 in both precisions (and float32 values are exact)
    top32 = torch.tensor(float((1 << 24) - 1) * 2.0**-24, dtype=torch.float32)
    top64 = torch.tensor(float((1 << 53) - 1) * 2.0**-53, dtype=torch.float64)
    assert float(top32) < 1.0 and float(top64) < 1.0


def test_uniformity_chi_square():
    seed = torch.arange(200, dtype=torch.int64) * 7919
    counter = torch.arange(1000, dtype=torch.int64).expand(200, -1)
    for stream in (STREAM_DRAFT, STREAM_ACCEPT, STREAM_SAMPLE):
        for dtype in (torch.float32, torch.float64):
            u = keyed_uniform(seed, counter, stream, dtype).flatten().double()
            counts = torch.histc(u, bins=100, min=0.0, max=1.0)
            assert int(counts.sum()) == u.numel()
            p = stats.chisquare(counts.numpy()).pvalue
            assert p > LEVEL, (stream, dtype, p)
            assert abs(float(u.mean()) - 0.5) < 4 * (1 / 12 / u.numel()) ** 0.5


def test_independence_of_seed_counter_and_stream():
    """Adjacent seeds, adjacent counters and the three streams give jointly uniform pairs (2-D chi-square)."""
    seed = torch.arange(400, dtype=torch.int64)
    counter = torch.arange(500, dtype=torch.int64).expand(400, -1)
    base = keyed_uniform(seed, counter, STREAM_DRAFT, torch.float64)
    neighbours = {
        "next seed": keyed_uniform(seed + 1, counter, STREAM_DRAFT, torch.float64),
        "next counter": keyed_uniform(seed, counter + 1, STREAM_DRAFT, torch.float64),
        "accept stream": keyed_uniform(seed, counter, STREAM_ACCEPT, torch.float64),
        "sample stream": keyed_uniform(seed, counter, STREAM_SAMPLE, torch.float64),
    }
    bins = 20
    for name, other in neighbours.items():
        cell = (base * bins).long() * bins + (other * bins).long()
        counts = torch.bincount(cell.flatten(), minlength=bins * bins).double()
        p = stats.chisquare(counts.numpy()).pvalue
        assert p > LEVEL, (name, p)
        corr = torch.corrcoef(torch.stack([base.flatten(), other.flatten()]))[0, 1]
        assert abs(float(corr)) < 4 / base.numel() ** 0.5, name
        assert not torch.equal(base, other)


@given(seeds, counters)
def test_distinct_keys_give_distinct_values(seed, counter):
    s = torch.tensor([seed], dtype=torch.int64)
    c = torch.tensor([[counter]], dtype=torch.int64)
    vals = {
        keyed_uniform(s, c, STREAM_DRAFT, torch.float64).item(),
        keyed_uniform(s, c + 1, STREAM_DRAFT, torch.float64).item(),
        keyed_uniform(s, c, STREAM_ACCEPT, torch.float64).item(),
        keyed_uniform(s, c, STREAM_SAMPLE, torch.float64).item(),
        keyed_uniform(s ^ 1, c, STREAM_DRAFT, torch.float64).item(),
    }
    assert len(vals) == 5  # a collision among 53-bit values would be a 1e-15 event
