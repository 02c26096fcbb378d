"""Exactness of the block algorithm (THEORY.md section 7) by enumeration over random toy LMs.

``block_distribution`` enumerates the literal algorithm; ``chain_distribution`` is the closed-form Markov
chain; ``token_cascade_distribution`` is prod_t pi_t. The tests hold them against each other, against the
target LM for SpecDecode, and against a second literal enumeration written here, round by round, which also
gives the expected number of target calls by brute force.
"""

from __future__ import annotations

import math
from collections import defaultdict
from functools import cache
from itertools import product

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import ALL_RULES, DTYPE, make_rule

from specref import cost, rules
from specref.exact import (
    Sampling,
    block_distribution,
    chain_distribution,
    expected_round_tokens,
    expected_target_calls,
    first_round_accepted,
    lm_distribution,
    token_cascade_distribution,
    total_variation,
)
from specref.toy import TableLM

TOL = 1e-12

samplings = st.sampled_from(
    [Sampling(), Sampling(0.5), Sampling(0.0), Sampling(1.0, top_k=2), Sampling(0.5, top_p=0.8), Sampling(2.0, 3, 0.9)]
)


@st.composite
def toy_pairs(draw, max_vocab: int = 4):
    """(draft LM, target LM, gamma, n, sampling, alpha) with zeros and one-hot rows in the tables."""
    vocab = draw(st.integers(2, max_vocab))
    gamma = draw(st.integers(1, 3))
    n = draw(st.integers(1, 4))
    if vocab == 4 and gamma == 3:
        n = min(n, 3)  # keep the literal enumeration quick
    order = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**31 - 1))
    zero_prob = draw(st.sampled_from([0.0, 0.3]))
    one_hot_prob = draw(st.sampled_from([0.0, 0.2]))
    conc = draw(st.sampled_from([1.0, 0.3]))
    gen = torch.Generator().manual_seed(seed)
    draft = TableLM.random(vocab, order, gen, conc, zero_prob, one_hot_prob)
    target = TableLM.random(vocab, order, gen, conc, zero_prob, one_hot_prob)
    alpha = draw(st.sampled_from([-0.5, 0.0, 0.2, 0.5, 0.9]))
    return draft, target, gamma, n, draw(samplings), alpha


def _assert_same(a, b, tol=TOL):
    assert abs(sum(a.values()) - 1) < 1e-9 and abs(sum(b.values()) - 1) < 1e-9
    assert total_variation(a, b) < tol, total_variation(a, b)


@pytest.mark.parametrize("name", ALL_RULES)
@settings(max_examples=8)
@given(toy_pairs())
def test_block_algorithm_is_the_token_level_cascade(name, config):
    """Bonus from pi: literal enumeration = closed-form chain = prod_t pi_t, for every rule."""
    draft, target, gamma, n, sampling, alpha = config
    rule = make_rule(name, alpha)
    block = block_distribution(draft, target, rule, gamma, n, sampling=sampling)
    _assert_same(block, token_cascade_distribution(draft, target, rule, n, sampling))
    _assert_same(block, chain_distribution(draft, target, rule, gamma, n, sampling=sampling))
    # bonus from the target has its own exact law: literal enumeration = chain with bonus='target'
    block_t = block_distribution(draft, target, rule, gamma, n, bonus="target", sampling=sampling)
    _assert_same(block_t, chain_distribution(draft, target, rule, gamma, n, bonus="target", sampling=sampling))


@settings(max_examples=30)
@given(toy_pairs(), st.sampled_from(["pi", "target"]))
def test_specdecode_is_the_target_lm(config, bonus):
    draft, target, gamma, n, sampling, _ = config
    law = block_distribution(draft, target, rules.get("specdecode"), gamma, n, bonus=bonus, sampling=sampling)
    _assert_same(law, lm_distribution(target, n, sampling))


@settings(max_examples=20)
@given(toy_pairs())
def test_trivial_cascades_are_the_models(config):
    draft, target, _, n, sampling, _ = config
    for name, lm in (("draft", draft), ("target", target)):
        law = token_cascade_distribution(draft, target, rules.get(name), n, sampling)
        _assert_same(law, lm_distribution(lm, n, sampling))


def _fixed_pair(seed=3, vocab=3, order=1):
    gen = torch.Generator().manual_seed(seed)
    return TableLM.random(vocab, order, gen), TableLM.random(vocab, order, gen)


@pytest.mark.parametrize("name", ["token_v3", "opt", "draft", "lossy"])
def test_bonus_from_target_really_differs_from_prod_pi(name):
    draft, target = _fixed_pair()
    rule = make_rule(name, 0.5)
    exact_pi = token_cascade_distribution(draft, target, rule, 3)
    with_target_bonus = block_distribution(draft, target, rule, 1, 3, bonus="target")
    assert total_variation(exact_pi, with_target_bonus) > 0.02
    # ... and for SpecDecode the two bonus modes coincide
    sd = rules.get("specdecode")
    sd_target_bonus = block_distribution(draft, target, sd, 1, 3, bonus="target")
    _assert_same(sd_target_bonus, token_cascade_distribution(draft, target, sd, 3))


def test_exact_laws_at_temperature_zero_hand_case():
    # Order-0 LMs (no context): q = [0.5, 0.3, 0.2] -> one-hot at 0; p = [0.2, 0.2, 0.6] -> one-hot at 2.
    # Any rule at T = 0 mixes one-hots: SpecDecode emits 2, 2, ...; draft-only 0, 0, ...
    draft = TableLM(torch.tensor([[0.5, 0.3, 0.2]], dtype=DTYPE), 3, 0)
    target = TableLM(torch.tensor([[0.2, 0.2, 0.6]], dtype=DTYPE), 3, 0)
    t0 = Sampling(0.0)
    assert block_distribution(draft, target, rules.get("specdecode"), 2, 3, sampling=t0) == {(2, 2, 2): 1.0}
    assert block_distribution(draft, target, rules.get("draft"), 2, 3, sampling=t0) == {(0, 0, 0): 1.0}
    # Chow, alpha = 0.6 reads UNtempered max q = 0.5 < 1 - 0.6 = 0.4? No -> keeps the draft: (0, 0, 0).
    assert block_distribution(draft, target, rules.get("chow", alpha=0.6), 2, 3, sampling=t0) == {(0, 0, 0): 1.0}
    # alpha = 0.4: 0.5 < 0.6 -> defers every time: the tempered target's token 2.
    assert block_distribution(draft, target, rules.get("chow", alpha=0.4), 2, 3, sampling=t0) == {(2, 2, 2): 1.0}


# ---- an independent literal enumeration of rounds, and the expected number of target calls ----------------


def _round_law(draft, target, rule, gamma, sampling, prefix, stop=None):
    """One round from ``prefix``: enumerate drafts, then each accept / reject pattern, residual and bonus.
    ``stop``: the draft stop, which ends the drafts after one whose probability under q is below it."""
    law = defaultdict(float)

    @cache
    def at(ctx):
        qr, pr = draft(ctx), target(ctx)
        q, p = sampling.apply(qr), sampling.apply(pr)
        return q, rule(q, p, q_rule=qr, p_rule=pr)

    vocab = draft(prefix).shape[-1]
    for drafts in product(range(vocab), repeat=gamma):
        outs, prob, g = [], 1.0, gamma
        for j in range(gamma):
            q, out = at(prefix + drafts[:j])
            prob *= float(q[drafts[j]])
            outs.append(out)
            if stop is not None and float(q[drafts[j]]) < stop:
                g = j + 1
                break
        if prob == 0 or any(drafts[g:]):
            continue  # a block the stop cut short never draws its later drafts: count it once (zeros after it)
        drafts = drafts[:g]
        for pattern in product((True, False), repeat=g):  # accept coin of each draft
            k = pattern.index(False) if False in pattern else g
            if any(pattern[k + 1 :]):
                continue  # coins after the first rejection are never flipped: count each path once
            pr = prob
            for j in range(k):
                pr *= float(outs[j].accept[drafts[j]])
            if k < g:
                pr *= 1 - float(outs[k].accept[drafts[k]])
                final = outs[k].residual
            else:
                final = at(prefix + drafts)[1].pi
            for v in range(vocab):
                if pr * float(final[v]) > 0:
                    law[drafts[:k] + (v,)] += pr * float(final[v])
    return law


def _brute_force(draft, target, rule, gamma, n, sampling, stop=None):
    """(law of the first n tokens, expected target calls to emit >= n tokens) by recursion over rounds."""
    law = defaultdict(float)
    round_law = cache(lambda prefix: _round_law(draft, target, rule, gamma, sampling, prefix, stop))

    def calls(prefix, emitted, prob):
        need = n - len(emitted)
        total = 1.0  # this round's target call
        for tokens, pr in round_law(prefix).items():
            if len(tokens) >= need:
                law[emitted + tokens[:need]] += prob * pr
            else:
                total += pr * calls(prefix + tokens, emitted + tokens, prob * pr)
        return total

    expected_calls = calls((), (), 1.0)
    return dict(law), expected_calls


@pytest.mark.parametrize(
    "name, gamma, n, sampling",
    [("token_v3", 2, 3, Sampling()), ("opt", 3, 3, Sampling(0.5)), ("lossy", 1, 4, Sampling(top_k=2)),
     ("specdecode", 2, 3, Sampling(0.0)), ("ensemble", 3, 3, Sampling()), ("learned_linear_token", 2, 3, Sampling())],
)
def test_expected_target_calls_by_brute_force(name, gamma, n, sampling):
    draft, target = _fixed_pair(seed=11)
    rule = make_rule(name, 0.3)
    law, calls = _brute_force(draft, target, rule, gamma, n, sampling)
    _assert_same(law, block_distribution(draft, target, rule, gamma, n, sampling=sampling))
    assert expected_target_calls(draft, target, rule, gamma, n, sampling=sampling) == pytest.approx(calls, abs=1e-12)
    assert 1.0 <= calls <= n
    # tokens per round from the first round's accepted count
    first = first_round_accepted(draft, target, rule, gamma, sampling=sampling)
    round_law = _round_law(draft, target, rule, gamma, sampling, ())
    lengths = torch.zeros(gamma + 1, dtype=DTYPE)
    for tokens, pr in round_law.items():
        lengths[len(tokens) - 1] += pr
    torch.testing.assert_close(first, lengths, atol=TOL, rtol=0)
    expected_len = float((lengths * torch.arange(1, gamma + 2, dtype=DTYPE)).sum())
    assert expected_round_tokens(draft, target, rule, gamma, sampling=sampling) == pytest.approx(expected_len, abs=TOL)


# ---- the in-round draft stop (the decoders' draft_confidence_threshold) -------------------------------------


@pytest.mark.parametrize("name", ALL_RULES)
@settings(max_examples=6)
@given(toy_pairs(), st.sampled_from([0.2, 0.4, 0.6]))
def test_the_draft_stop_keeps_the_token_level_cascade(name, config, stop):
    """Ending a round's drafts after a doubted one decides position i + 1 from its prefix: with the bonus from
    pi the law is still prod_t pi_t (literal enumeration = chain = token cascade); with the bonus from p, the
    literal enumeration equals the chain that treats a stopped position as the bonus position."""
    draft, target, gamma, n, sampling, alpha = config
    rule = make_rule(name, alpha)
    kw = {"sampling": sampling, "draft_confidence_threshold": stop}
    block = block_distribution(draft, target, rule, gamma, n, **kw)
    _assert_same(block, token_cascade_distribution(draft, target, rule, n, sampling))
    _assert_same(block, chain_distribution(draft, target, rule, gamma, n, **kw))
    block_t = block_distribution(draft, target, rule, gamma, n, bonus="target", **kw)
    _assert_same(block_t, chain_distribution(draft, target, rule, gamma, n, bonus="target", **kw))


@pytest.mark.parametrize("name, stop", [("token_v3", 0.4), ("opt", 0.5), ("specdecode", 0.6), ("lossy", 0.3)])
def test_the_draft_stop_by_brute_force(name, stop):
    """An independent round-by-round enumeration with the stop: the law, the expected target calls (the stop
    ends rounds early, so there are more of them), and bonus='target' changing the law where pi != p."""
    draft, target = _fixed_pair(seed=11)
    rule, gamma, n = make_rule(name, 0.3), 3, 3
    law, calls = _brute_force(draft, target, rule, gamma, n, Sampling(), stop)
    _assert_same(law, block_distribution(draft, target, rule, gamma, n, draft_confidence_threshold=stop))
    got = expected_target_calls(draft, target, rule, gamma, n, draft_confidence_threshold=stop)
    assert got == pytest.approx(calls, abs=1e-12)
    assert got > expected_target_calls(draft, target, rule, gamma, n) + 1e-3  # the stop did end rounds
    with_target = block_distribution(draft, target, rule, gamma, n, bonus="target", draft_confidence_threshold=stop)
    without_stop = block_distribution(draft, target, rule, gamma, n, bonus="target")
    assert (total_variation(with_target, without_stop) > 1e-3) == (name != "specdecode")


def test_the_draft_stop_threshold_is_checked():
    draft, target = _fixed_pair()
    for bad in (0.0, 1.0, -0.2, math.nan):
        with pytest.raises(ValueError, match="draft_confidence_threshold must be in"):
            chain_distribution(draft, target, rules.get("specdecode"), 2, 2, draft_confidence_threshold=bad)


@pytest.mark.parametrize("name", ["specdecode", "token_v3", "opt", "lossy", "ensemble", "chow"])
@pytest.mark.parametrize("gamma", [1, 2, 3])
def test_leviathan_formula_in_the_iid_case(name, gamma):
    """Order-0 LMs: every position has the same acceptance b = sum_v q(v) a(v), so tokens per call are
    (1 - b^(gamma+1)) / (1 - b) and the accepted count is a geometric law truncated at gamma."""
    draft = TableLM(torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=DTYPE), 4, 0)
    target = TableLM(torch.tensor([[0.2, 0.3, 0.1, 0.4]], dtype=DTYPE), 4, 0)
    rule = make_rule(name, -0.5 if name == "opt" else 0.3)  # OPT at 0.3 would never defer here (b = 1)
    q = draft(())
    b = 1 - float(rule(q, target(())).rejection_rate(q))
    assert 0 < b < 1
    formula = (1 - b ** (gamma + 1)) / (1 - b)
    assert expected_round_tokens(draft, target, rule, gamma) == pytest.approx(formula, abs=TOL)
    assert cost.expected_tokens_per_call(b, gamma) == pytest.approx(formula, abs=TOL)
    geometric = torch.tensor([b**k * (1 - b) for k in range(gamma)] + [b**gamma], dtype=DTYPE)
    torch.testing.assert_close(first_round_accepted(draft, target, rule, gamma), geometric, atol=TOL, rtol=0)
    # expected calls to emit n tokens: renewal recursion over i.i.d. round lengths L in 1..gamma+1
    length_law = {k + 1: float(geometric[k]) for k in range(gamma + 1)}

    def calls(need):
        return 0.0 if need <= 0 else 1.0 + sum(pl * calls(need - length) for length, pl in length_law.items())

    for n in (1, 2, 4):
        assert expected_target_calls(draft, target, rule, gamma, n) == pytest.approx(calls(n), abs=1e-12)


def test_leviathan_limits():
    # b = 1: gamma + 1 tokens per call; b = 0: one token per call.
    draft = TableLM(torch.tensor([[0.25, 0.75]], dtype=DTYPE), 2, 0)
    assert expected_round_tokens(draft, draft, rules.get("specdecode"), 3) == pytest.approx(4.0)
    assert expected_target_calls(draft, draft, rules.get("specdecode"), 3, 8) == pytest.approx(2.0)
    other = TableLM(torch.tensor([[1.0, 0.0]], dtype=DTYPE), 2, 0)
    flip = TableLM(torch.tensor([[0.0, 1.0]], dtype=DTYPE), 2, 0)
    assert expected_round_tokens(other, flip, rules.get("specdecode"), 3) == pytest.approx(1.0)
    assert expected_target_calls(other, flip, rules.get("specdecode"), 3, 5) == pytest.approx(5.0)
    assert math.isclose(cost.expected_tokens_per_call(1.0, 3), 4.0)
