"""Distribution helpers: validation, temperature, top-k / top-p, TV, inverse-CDF sampling (THEORY.md 1, 5)."""

from __future__ import annotations

from fractions import Fraction

import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import DTYPE, dist_batches, dists, temperatures, vocab_sizes

from specref.dists import (
    check_distribution,
    check_same_vocab,
    normalize,
    one_hot_argmax,
    probs_from_logits,
    sample_categorical,
    stable_top_k,
    temper,
    top_k_filter,
    top_p_filter,
    tv,
)

TOL = 1e-12


@st.composite
def a_dist(draw, exact: bool = False):
    return draw(dists(draw(vocab_sizes), exact))


def _stable_order(p: torch.Tensor) -> list[int]:
    """Token indices by decreasing probability, ties by increasing index (the documented order)."""
    return sorted(range(p.shape[-1]), key=lambda i: (-float(p[i]), i))


# ---- validation -----------------------------------------------------------------------------------------


@given(st.integers(1, 4).flatmap(lambda rows: vocab_sizes.flatmap(lambda v: dist_batches(v, rows))))
def test_check_distribution_accepts_valid_batches(x):
    assert check_distribution(x) is x
    assert check_distribution(x.to(torch.float32)).dtype == torch.float32


def test_check_same_vocab_accepts_matching_pair():
    q = torch.full((2, 3), 1 / 3, dtype=DTYPE)
    check_same_vocab(q, q.clone())


# ---- temperature ----------------------------------------------------------------------------------------


@given(a_dist())
def test_temperature_zero_is_one_hot_at_lowest_argmax(p):
    out = temper(p, 0.0)
    first_max = int(torch.nonzero(p == p.max())[0, 0])
    expected = torch.zeros_like(p)
    expected[first_max] = 1.0
    assert torch.equal(out, expected)
    assert torch.equal(one_hot_argmax(p), expected)


def test_temperature_zero_ties_hand_case():
    p = torch.tensor([[0.2, 0.4, 0.4], [0.5, 0.5, 0.0]], dtype=DTYPE)
    assert temper(p, 0).tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


@given(a_dist())
def test_temperature_one_is_identity(p):
    out = temper(p, 1.0)
    assert out is p  # not even a copy: T = 1 must not perturb the distribution by rounding


@given(a_dist(), temperatures.filter(lambda t: t > 0))
def test_temperature_formula_support_order_and_ties(p, t):
    out = temper(p, t)
    # Independent formula: (p / max p) ** (1 / T), renormalised.
    r = (p / p.max()) ** (1.0 / t)
    torch.testing.assert_close(out, r / r.sum(), atol=TOL, rtol=0)
    assert abs(float(out.sum()) - 1) < TOL
    assert torch.equal(out > 0, p > 0) or t < 0.1  # tiny T may underflow tiny entries to 0
    assert torch.all(out[p == 0] == 0)
    for i in range(p.shape[-1]):
        for j in range(p.shape[-1]):
            if p[i] == p[j]:
                assert out[i] == out[j]  # exact ties stay exact ties
            elif p[i] < p[j]:
                assert out[i] <= out[j]  # order preserved


@given(a_dist(), st.floats(0.2, 3.0), st.floats(0.2, 3.0))
def test_temperature_composes(p, t1, t2):
    torch.testing.assert_close(temper(temper(p, t1), t2), temper(p, t1 * t2), atol=1e-9, rtol=0)


def test_temperature_hand_case():
    # [1/2, 1/4, 1/4] at T = 1/2: squares [1/4, 1/16, 1/16] sum to 3/8 -> [2/3, 1/6, 1/6].
    out = temper(torch.tensor([0.5, 0.25, 0.25], dtype=DTYPE), 0.5)
    torch.testing.assert_close(out, torch.tensor([2 / 3, 1 / 6, 1 / 6], dtype=DTYPE), atol=TOL, rtol=0)


# ---- top-k ----------------------------------------------------------------------------------------------


@given(a_dist(), st.integers(1, 6))
def test_top_k_keeps_the_k_largest_lowest_index_on_ties(p, k):
    out = top_k_filter(p, k)
    vocab = p.shape[-1]
    if k >= vocab:
        assert out is p
        return
    keep = set(_stable_order(p)[:k])  # the k largest; boundary ties go to the lower index
    expected = torch.tensor([float(p[i]) if i in keep else 0.0 for i in range(vocab)], dtype=DTYPE)
    torch.testing.assert_close(out, expected / expected.sum(), atol=TOL, rtol=0)
    assert int((out > 0).sum()) == min(k, int((p > 0).sum()))


@given(st.integers(1, 4).flatmap(lambda rows: vocab_sizes.flatmap(lambda v: dist_batches(v, rows))),
       st.integers(1, 9), st.sampled_from([torch.float64, torch.float32, torch.bfloat16]))
def test_stable_top_k_is_the_stable_sorts_prefix(x, k, dtype):
    """Ids and values are exactly the first k of the documented order (descending, ties to the lower index),
    which is torch's stable sort: zeros, one-hots, many-way ties (dyadic, and bf16 rounding) included."""
    x = x.to(dtype)
    ids, values = stable_top_k(x, k)
    kk = min(k, x.shape[-1])
    for row in range(x.shape[0]):
        assert ids[row].tolist() == _stable_order(x[row].double())[:kk]
    assert torch.equal(values, x.gather(-1, ids))
    ref_values, ref_ids = torch.sort(x, dim=-1, descending=True, stable=True)
    assert torch.equal(ids, ref_ids[..., :kk]) and torch.equal(values, ref_values[..., :kk])


def test_stable_top_k_negative_control_an_unstable_tie_order_is_caught():
    """A top-k that breaks ties towards the higher index (what a device kernel may do) fails the same check."""
    x = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.0, 0.25, 0.25]], dtype=torch.float64)
    ids, _ = stable_top_k(x, 2)
    assert ids.tolist() == [[0, 1], [0, 2]]
    wrong = torch.sort(x.flip(-1), dim=-1, descending=True, stable=True).indices[..., :2]
    wrong = x.shape[-1] - 1 - wrong  # ties towards the higher index
    assert wrong.tolist() != [_stable_order(r)[:2] for r in x]


def test_top_k_tie_at_boundary_is_deterministic():
    p = torch.tensor([0.1, 0.3, 0.3, 0.3], dtype=DTYPE)
    # three-way tie for the top; k = 2 keeps indices 1 and 2 (lowest indices), renormalised to 1/2 each.
    assert top_k_filter(p, 2).tolist() == [0.0, 0.5, 0.5, 0.0]
    assert top_k_filter(p, None) is p


# ---- top-p ----------------------------------------------------------------------------------------------


@given(a_dist(exact=True), st.integers(1, 32).map(lambda k: k / 32))
def test_top_p_keeps_the_minimal_prefix(p, top_p):
    out = top_p_filter(p, top_p)
    if top_p == 1.0:
        assert out is p
        return
    # Exact arithmetic (dyadic probabilities): the shortest prefix of the stable order reaching top_p.
    order = _stable_order(p)
    mass, kept = Fraction(0), []
    for i in order:
        kept.append(i)
        mass += Fraction(float(p[i]))
        if mass >= Fraction(top_p):
            break
    assert set(torch.nonzero(out > 0).flatten().tolist()) == {i for i in kept if p[i] > 0}
    # minimal: dropping the last kept token falls short of top_p; the most likely token is always kept
    assert mass - Fraction(float(p[kept[-1]])) < Fraction(top_p) <= mass
    assert out[order[0]] > 0
    expected = torch.tensor([float(p[i]) if i in kept else 0.0 for i in range(p.shape[-1])], dtype=DTYPE)
    torch.testing.assert_close(out, expected / expected.sum(), atol=TOL, rtol=0)


def test_top_p_hand_cases():
    p = torch.tensor([0.25, 0.5, 0.125, 0.125], dtype=DTYPE)
    # order 1 (0.5), 0 (0.25), 2 (0.125), 3 (0.125): top_p = 0.5 -> {1}; 0.75 -> {1, 0}; 0.8 -> {1, 0, 2}
    assert top_p_filter(p, 0.5).tolist() == [0.0, 1.0, 0.0, 0.0]
    torch.testing.assert_close(top_p_filter(p, 0.75), torch.tensor([1 / 3, 2 / 3, 0, 0], dtype=DTYPE))
    # 0.8: the tie between 2 and 3 at the boundary goes to the lower index, 2.
    torch.testing.assert_close(top_p_filter(p, 0.8), torch.tensor([2 / 7, 4 / 7, 1 / 7, 0], dtype=DTYPE))
    # tiny top_p still keeps the most likely token
    assert top_p_filter(p, 1e-9).tolist() == [0.0, 1.0, 0.0, 0.0]


# ---- logits -> probabilities ----------------------------------------------------------------------------


@st.composite
def logit_rows(draw):
    vocab = draw(vocab_sizes)
    vals = draw(
        st.lists(
            st.one_of(st.integers(-3, 3).map(float), st.floats(-5, 5), st.just(-float("inf"))),
            min_size=vocab,
            max_size=vocab,
        ).filter(lambda xs: any(x > -float("inf") for x in xs))
    )
    return torch.tensor(vals, dtype=DTYPE)


@given(logit_rows(), temperatures, st.one_of(st.none(), st.integers(1, 5)), st.one_of(st.none(), st.floats(0.05, 1)))
def test_probs_from_logits_matches_temper_then_filters(logits, t, k, top_p):
    raw, sampled = probs_from_logits(logits, t, k, top_p)
    torch.testing.assert_close(raw, torch.softmax(logits, -1), atol=TOL, rtol=0)
    expected = top_p_filter(top_k_filter(temper(raw, t), k), top_p)
    if t == 0:
        # one-hot at the lowest-index argmax of the LOGITS (exact even where softmax rounds two logits to
        # the same probability, e.g. logits [-8e-42, 0], which hypothesis found)
        assert torch.equal(sampled, top_p_filter(top_k_filter(one_hot_argmax(logits), k), top_p))
        if len(set(raw.tolist())) == raw.numel():
            assert torch.equal(sampled, expected)
    else:
        torch.testing.assert_close(sampled, expected, atol=1e-9, rtol=0)
    check_distribution(sampled)


def test_probs_from_logits_zero_temperature_ties():
    raw, sampled = probs_from_logits(torch.tensor([1.0, 3.0, 3.0]), temperature=0.0)
    assert sampled.tolist() == [0.0, 1.0, 0.0]
    # the argmax is taken on the logits, not on the rounded probabilities (which tie here)
    raw64, sampled64 = probs_from_logits(torch.tensor([-8e-42, 0.0], dtype=torch.float64), temperature=0.0)
    assert raw64[0] == raw64[1] and sampled64.tolist() == [0.0, 1.0]
    assert raw.dtype == torch.float32
    raw16, _ = probs_from_logits(torch.tensor([1.0, 2.0], dtype=torch.float16))
    assert raw16.dtype == torch.float32  # computed in float32 at least


# ---- TV ---------------------------------------------------------------------------------------------------


@given(st.integers(2, 5).flatmap(lambda v: st.tuples(dists(v), dists(v), dists(v))))
def test_tv_is_a_metric_in_unit_interval(abc):
    a, b, c = abc
    d_ab = float(tv(a, b))
    assert abs(d_ab - float(tv(b, a))) < TOL
    assert abs(d_ab - 0.5 * float((a - b).abs().sum())) < TOL
    assert -TOL <= d_ab <= 1 + TOL
    assert float(tv(a, a)) == 0.0
    assert float(tv(a, c)) <= d_ab + float(tv(b, c)) + TOL


# ---- inverse-CDF sampling ------------------------------------------------------------------------------

uniforms = st.one_of(st.sampled_from([0.0, 0.5, 1 - 2.0**-53, 1 - 2.0**-24]), st.floats(0.0, 1.0, exclude_max=True))


@given(a_dist(), uniforms)
def test_sample_categorical_never_returns_a_zero_probability_token(p, u):
    for dtype in (torch.float64, torch.float32):
        tok = int(sample_categorical(p.to(dtype), torch.tensor(u, dtype=dtype)))
        assert 0 <= tok < p.shape[-1]
        assert p[tok] > 0


@given(a_dist())
def test_sample_categorical_is_the_inverse_cdf(p):
    # Midpoints of m equal cells: token v gets the cells inside [cdf(v-1), cdf(v)), within one cell.
    m = 2000
    u = (torch.arange(m, dtype=DTYPE) + 0.5) / m
    toks = sample_categorical(p.expand(m, -1), u)
    assert torch.all(toks[1:] >= toks[:-1])  # monotone in u
    freq = torch.bincount(toks, minlength=p.shape[-1]).to(DTYPE) / m
    assert float((freq - p).abs().max()) <= 1.0 / m + 1e-12


def test_sample_categorical_batched_shapes():
    p = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[0.5, 0.5], [0.25, 0.75]]], dtype=DTYPE)  # [2, 2, 2]
    u = torch.tensor([[0.9, 0.9], [0.4, 0.3]], dtype=DTYPE)
    assert sample_categorical(p, u).tolist() == [[1, 0], [0, 1]]


def test_normalize_keeps_zero_rows_zero():
    x = torch.tensor([[0.0, 0.0], [1.0, 3.0]], dtype=DTYPE)
    assert normalize(x).tolist() == [[0.0, 0.0], [0.25, 0.75]]
