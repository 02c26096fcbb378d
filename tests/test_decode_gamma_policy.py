"""Block-size policies (specref.decode.gamma_policy): the choice itself, and that the decoder's law does not
change when the block size varies between rounds (chi-square against exact enumeration on the dynamic and
static engines, with negative controls: a shorter round keying its uniforms at the wrong positions, and a plain
target step drawing with the next position's uniform, which the same test must reject); the static engines
give the fast engine's tokens and counters under a policy."""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_decode_exact import LEVEL, SEED, N, combined_gof, report, rule_refs, sample
from test_decode_fast import _assert_same

from specref import rules
from specref.decode import SpecCascadeDecoder, make_decoder
from specref.decode import decoder as decoder_mod
from specref.decode.gamma_policy import (
    AdaptiveGamma,
    expected_max_normal,
    expected_tokens,
    expected_tokens_at,
    round_cost,
    straggler_factor,
    tokens_per_round_sd,
)
from specref.decode.testing import TOY_PROMPTS, ragged_batch, toy_pair

# ---- the policy ---------------------------------------------------------------------------------------------


def test_expected_tokens_and_cost():
    assert expected_tokens(3, 0.0) == 1.0 and expected_tokens(3, 1.0) == 4.0
    assert expected_tokens(2, 0.5) == pytest.approx(1 + 0.5 + 0.25)
    assert round_cost(4, 0.1, 0.0) == pytest.approx(1.5) and round_cost(4, 0.1, 0.05) == pytest.approx(1.7)
    # the per-round work is paid once per round; a plain target step pays its own
    assert round_cost(4, 0.1, 0.05, 0.3, 0.1) == pytest.approx(2.0)
    assert round_cost(0, 0.1, 0.05, 0.3, 0.1) == pytest.approx(1.1) and round_cost(0, 0.1, 0.05) == 1.0


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 12), st.floats(0.0, 1.0))
def test_expected_tokens_by_position_is_eq1_when_every_position_accepts_alike(g, a):
    assert expected_tokens_at(g, [a] * g) == pytest.approx(expected_tokens(g, a))


def test_position_rates_shrink_along_the_positions():
    pol = AdaptiveGamma(prior_weight=4.0)
    assert pol.position_rates(3, 0.7, [], []) == pytest.approx([0.7] * 3)  # nothing counted: the overall rate
    # counted positions move towards their counts; an uncounted one takes its neighbour's rate, not the overall
    rates = pol.position_rates(4, 0.7, [60, 90, 0, 0], [100, 100, 0, 0])
    assert rates[0] == pytest.approx((60 + 4 * 0.7) / 104) and rates[1] == pytest.approx((90 + 4 * rates[0]) / 104)
    assert rates[2] == pytest.approx(rates[1]) == pytest.approx(rates[3])


def test_a_weak_first_draft_and_strong_later_ones_favour_longer_blocks():
    """The measured shape (arith-llama, CPU): the first draft of a round accepted 0.64 of the time, later ones
    0.82-0.94. One overall rate (0.83 here) underrates long blocks; per position the policy drafts longer.
    ``by_position=False`` ignores the per-position counts."""
    acc_at, ver_at = [401, 361, 325, 267, 227], [626, 402, 361, 325, 267]
    acc, ver = sum(acc_at), sum(ver_at)
    costs = dict(c=0.19, verify_slope=0.074, round_overhead=0.4, prior_weight=8.0)
    overall = AdaptiveGamma(**costs).choose(8, 0.0, acc, ver)
    by_pos = AdaptiveGamma(**costs).choose(8, 0.0, acc, ver, by_position=(acc_at, ver_at))
    assert by_pos > overall
    assert AdaptiveGamma(**costs, by_position=False).choose(8, 0.0, acc, ver, by_position=(acc_at, ver_at)) == overall


def test_the_decoder_gives_the_policy_per_position_counts_that_add_up():
    """Each round the policy sees, per draft position, the drafts accepted there and verified there (reached:
    the drafts before it passed); they sum to its overall counts, and at the end they equal the call's own
    per-position statistics minus the last round."""
    seen = []

    @dataclasses.dataclass(frozen=True)
    class Recording(AdaptiveGamma):
        def choose(self, gamma_max, c, accepted, verified, allow_zero=False, since_draft=0, **kw):
            acc_at, ver_at = kw["by_position"]
            assert kw["rows"] == 3 and kw["new_tokens"] == 30  # the call's batch and token budget
            seen.append((accepted, verified, list(acc_at), list(ver_at)))
            return super().choose(gamma_max, c, accepted, verified, allow_zero, since_draft, **kw)

    draft, target = toy_pair("llama")
    ids, mask = ragged_batch(TOY_PROMPTS, 3)
    for engine in ("plain", "fast"):
        seen.clear()
        dec = make_decoder(draft, target, "opt", alpha=0.5, gamma=4, engine=engine, gamma_policy=Recording(c=0.1))
        out = dec.generate(ids, mask, max_new_tokens=30, seed=[1, 2, 3], no_eos=True, temperature=1.0)
        assert len(seen) >= 3
        for acc, ver, acc_at, ver_at in seen:
            assert len(acc_at) == len(ver_at) == 4 and sum(acc_at) == acc and sum(ver_at) == ver
            assert all(a <= v for a, v in zip(acc_at, ver_at, strict=True))
        # the counts only grow, and never past the call's own per-position statistics
        last = seen[-1]
        st_ = out.stats
        assert all(x <= y for x, y in zip(last[2], st_.pos_accepted.sum(0).tolist()[:4], strict=True))
        assert all(x <= y for x, y in zip(last[3], st_.pos_reached.sum(0).tolist()[:4], strict=True))
        assert last[3][0] > 0


@pytest.mark.parametrize("name", ["by_position", "stragglers"])
def test_switches_must_be_bools(name):
    with pytest.raises(ValueError, match=f"{name} must be True or False"):
        AdaptiveGamma(**{name: 1})


# ---- stragglers: a batch runs until its slowest row is done ------------------------------------------------------


def _round_tokens_law(rates: list[float], g: int) -> dict[int, float]:
    """P(X = x) of a round's tokens, by enumerating where the first rejection falls."""
    law, alive = {}, 1.0
    for k in range(g):
        law[k + 1] = alive * (1 - rates[k])
        alive *= rates[k]
    law[g + 1] = alive
    return law


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 8).flatmap(lambda g: st.tuples(
    st.just(g), st.lists(st.sampled_from([0.0, 1.0, 0.5]) | st.floats(0.0, 1.0), min_size=g, max_size=g))))
def test_round_token_sd_matches_enumeration(case):
    g, rates = case
    law = _round_tokens_law(rates, g)
    mean = sum(x * p for x, p in law.items())
    var = sum((x - mean) ** 2 * p for x, p in law.items())
    assert sum(law.values()) == pytest.approx(1.0)
    assert mean == pytest.approx(expected_tokens_at(g, rates))
    assert tokens_per_round_sd(g, rates) == pytest.approx(var ** 0.5, abs=1e-7)


def test_expected_max_of_normals():
    assert expected_max_normal(1) == 0.0 and expected_max_normal(2) == pytest.approx(1 / 3.141592653589793 ** 0.5)
    assert expected_max_normal(3) == pytest.approx(1.5 / 3.141592653589793 ** 0.5, rel=1e-6)  # 3 / (2 sqrt(pi))
    zs = [expected_max_normal(n) for n in (1, 2, 8, 32, 64, 1000)]
    assert zs == sorted(zs) and expected_max_normal(32) == pytest.approx(2.0697, abs=1e-3)
    with pytest.raises(ValueError, match="n >= 1"):
        expected_max_normal(0)


def test_straggler_factor_predicts_the_batch_rounds():
    """Simulated batches of rows that each need 128 tokens, acceptance 0.8 i.i.d., g = 5: the rounds until the
    slowest row is done, per round the mean row needs, against the factor (which a factor of 1, the model
    without stragglers, misses by 13-21%)."""
    gen = torch.Generator().manual_seed(0)
    a, g, n = 0.8, 5, 128
    mean, sd = expected_tokens(g, a), tokens_per_round_sd(g, [a] * g)
    for rows in (8, 32, 64):
        trials = 300
        # tokens of each row's rounds: 1 + the accepted drafts before the first rejection, at most g
        acc = torch.rand(trials, rows, 80, g, generator=gen) < a
        tokens = 1 + acc.int().cumprod(-1).sum(-1)  # [trials, rows, rounds]
        rounds = (tokens.cumsum(-1) < n).sum(-1) + 1  # [trials, rows] rounds to reach n tokens
        measured = rounds.max(dim=1).values.float().mean().item() / (n / mean)
        predicted = straggler_factor(rows, n, mean, sd)
        assert measured == pytest.approx(predicted, rel=0.03), (rows, measured, predicted)
        assert measured > 1.1
    assert straggler_factor(1, n, mean, sd) == 1.0 and straggler_factor(32, n, 1.0, 0.0) == 1.0


def test_stragglers_turn_speculation_down_where_the_batch_would_lose():
    """The H100 costs at batch 32 (c 0.28, verify slope 0.029, round overhead 0.24, plain 0.06) with acceptance
    0.7: per mean row a block of 3 beats a plain step (1.02 against 0.94 tokens per target step), but the batch's
    slowest row makes it 0.93 tokens per step: the policy takes plain steps. One row, or no token budget: no
    charge. With acceptance 0.8 it still drafts, shorter than without the charge."""
    pol = AdaptiveGamma(c=0.282, verify_slope=0.029, round_overhead=0.238, plain_overhead=0.061, prior_weight=1e-9,
                        by_position=False)
    at_07 = (700, 1000)
    assert pol.choose(5, 0.0, *at_07, allow_zero=True) == 3
    assert pol.choose(5, 0.0, *at_07, allow_zero=True, rows=1, new_tokens=128) == 3
    assert pol.choose(5, 0.0, *at_07, allow_zero=True, rows=32) == 3  # no budget given
    assert pol.choose(5, 0.0, *at_07, allow_zero=True, rows=32, new_tokens=128) == 0
    assert dataclasses.replace(pol, stragglers=False).choose(5, 0.0, *at_07, allow_zero=True, rows=32,
                                                             new_tokens=128) == 3
    at_08 = (800, 1000)
    assert pol.choose(5, 0.0, *at_08, allow_zero=True) == 4
    assert 1 <= pol.choose(5, 0.0, *at_08, allow_zero=True, rows=32, new_tokens=128) <= 4
    # a longer budget spreads the rows less, relative to the call: the charge shrinks towards none
    assert pol.choose(5, 0.0, *at_07, allow_zero=True, rows=32, new_tokens=10 ** 7) == 3


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 1000), st.integers(1, 1000), st.integers(2, 128), st.integers(1, 4096))
def test_more_rows_never_lengthen_the_block(acc, ver, rows, budget):
    pol = AdaptiveGamma(c=0.25, verify_slope=0.03, round_overhead=0.2, plain_overhead=0.05, prior_weight=1.0)
    acc = min(acc, ver)
    one = pol.choose(6, 0.0, acc, ver, allow_zero=True)
    many = pol.choose(6, 0.0, acc, ver, allow_zero=True, rows=rows, new_tokens=budget)
    more = pol.choose(6, 0.0, acc, ver, allow_zero=True, rows=2 * rows, new_tokens=budget)
    assert more <= many <= one


def test_round_overhead_favours_long_blocks_over_plain_steps():
    """The measured case the term is for (one H200, 7B target, batch 1): c 0.31, per-round work 0.17 target
    steps, a plain step's 0.05. Without the term, folding the work into c (0.36) at a running acceptance of
    0.65 makes a plain step look best; with it the policy keeps drafting."""
    at_065 = (65, 100)
    folded = AdaptiveGamma(c=0.36, prior_weight=1e-9)
    split = AdaptiveGamma(c=0.31, round_overhead=0.17, plain_overhead=0.05, prior_weight=1e-9)
    assert folded.choose(5, 0.0, *at_065, allow_zero=True) == 0
    assert split.choose(5, 0.0, *at_065, allow_zero=True) >= 2
    # a larger per-round cost never shortens the block (it is amortised over more tokens)
    for a in range(5, 100, 5):
        chosen = [AdaptiveGamma(c=0.2, round_overhead=o, prior_weight=1e-9).choose(8, 0.0, a, 100)
                  for o in (0.0, 0.2, 0.5, 1.0, 3.0)]
        assert chosen == sorted(chosen), (a, chosen)
    # and a costlier plain step only makes drafting likelier
    assert AdaptiveGamma(plain_overhead=5.0).choose(8, 2.0, 5, 100, allow_zero=True) >= 1


def test_choice_follows_acceptance_and_costs():
    policy = AdaptiveGamma(prior_weight=1e-9)  # no prior: the measured rate alone
    assert policy.choose(8, 0.05, 95, 100) == 8  # cheap drafts, high acceptance: the longest block
    assert policy.choose(8, 0.05, 5, 100) == 1  # drafts almost always rejected: the shortest
    mid = policy.choose(8, 0.2, 70, 100)
    assert 1 < mid < 8
    # the choice is the argmax of expected tokens per cost (ties to the smaller g)
    rates = [expected_tokens(g, 0.7) / round_cost(g, 0.2, 0.0) for g in range(1, 9)]
    assert mid == 1 + rates.index(max(rates))
    # a costlier verification of long blocks (large batch) shortens them
    assert AdaptiveGamma(verify_slope=0.3, prior_weight=1e-9).choose(8, 0.2, 70, 100) < mid
    assert AdaptiveGamma(c=0.9).choose(8, 0.05, 95, 100) == AdaptiveGamma().choose(8, 0.9, 95, 100)
    assert AdaptiveGamma().acceptance(0, 0) == 0.7
    # plain target steps (g = 0) where pi = p: chosen when drafting does not pay, with a probe round
    assert AdaptiveGamma().choose(8, 2.0, 5, 100) == 1
    assert AdaptiveGamma().choose(8, 2.0, 5, 100, allow_zero=True) == 0
    assert AdaptiveGamma(probe_every=4).choose(8, 2.0, 5, 100, allow_zero=True, since_draft=4) == 1
    assert AdaptiveGamma().choose(8, 0.05, 95, 100, allow_zero=True) == 8
    # ... but not on the prior alone: g = 0 needs as many verified drafts as the prior counts
    assert AdaptiveGamma(prior_acceptance=0.0).choose(8, 2.0, 0, 0, allow_zero=True) == 1
    assert AdaptiveGamma(prior_acceptance=0.0, prior_weight=4.0).choose(8, 2.0, 0, 3, allow_zero=True) == 1
    assert AdaptiveGamma(prior_acceptance=0.0, prior_weight=4.0).choose(8, 2.0, 0, 4, allow_zero=True) == 0


@pytest.mark.parametrize("field,value", [("c", -1.0), ("c", float("nan")), ("verify_slope", -0.1),
                                          ("round_overhead", -0.5), ("plain_overhead", float("inf")),
                                          ("prior_acceptance", 1.5), ("prior_weight", 0.0), ("probe_every", 0)])
def test_bad_policy_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        AdaptiveGamma(**{field: value})


def test_decoder_refuses_what_a_policy_cannot_do():
    draft, target = toy_pair("llama")
    with pytest.raises(ValueError, match="speculative methods"):
        make_decoder(draft, target, "target", gamma_policy="adaptive")
    with pytest.raises(ValueError, match="gamma_policy must be"):
        make_decoder(draft, target, "opt", alpha=0.5, gamma_policy="sometimes")


@dataclasses.dataclass(frozen=True)
class _Fixed(AdaptiveGamma):
    """Always the same answer, whatever it is."""

    answer: object = 0

    def choose(self, gamma_max, c, accepted, verified, allow_zero=False, since_draft=0, **kw):
        return self.answer


@pytest.mark.parametrize("method,answer,engine,match", [
    ("opt", 0, "fast", "integer in 1..3"),  # g = 0 only where pi = p
    ("specdecode", 4, "fast", "integer in 0..3"),
    ("specdecode", 2.0, "plain", "integer in 0..3"),
    ("specdecode", 0, "static", "at most probe_every = 2"),  # a static draft keeps room for probe_every skips
])
def test_a_block_size_out_of_range_is_refused(method, answer, engine, match):
    draft, target = toy_pair("llama")
    dec = make_decoder(draft, target, method, alpha=0.5 if method == "opt" else None, gamma=3, engine=engine,
                       gamma_policy=_Fixed(answer=answer, probe_every=2))
    ids, mask = ragged_batch(TOY_PROMPTS, 2)
    with pytest.raises(ValueError, match=match):
        dec.generate(ids, mask, max_new_tokens=12, seed=0, no_eos=True)


# ---- the law does not change ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cycling(AdaptiveGamma):
    """Causal but erratic: g cycles through its range (0..gamma where the rule allows plain target steps,
    else 1..gamma) with the drafts verified so far and the rounds since the last draft."""

    def choose(self, gamma_max, c, accepted, verified, allow_zero=False, since_draft=0, **kw):
        low = 0 if allow_zero else 1
        return low + (accepted + 2 * verified + since_draft) % (gamma_max + 1 - low)


# specdecode (pi = p) also takes g = 0 rounds: plain target steps, after which the draft catches up
CASES = [("specdecode", None, {}), ("lossy", 0.3, {}), ("opt", 0.5, {}), ("token_v3", 0.6, {})]


# every case on the dynamic engines; SpecDecode (with g = 0) and a cascade rule on the static ones (``graph``
# runs eagerly on a CPU; its graph bookkeeping under a policy is tested in test_decode_static.py)
LAW_CASES = [(*c, e) for e in ("plain", "fast") for c in CASES] + [
    (*c, e) for e in ("static", "graph") for c in CASES if c[0] in ("specdecode", "token_v3")]


@pytest.mark.slow
@pytest.mark.parametrize("method,alpha,options,engine", LAW_CASES, ids=[f"{c[0]}-{c[3]}" for c in LAW_CASES])
def test_varying_block_sizes_keep_the_exact_law(method, alpha, options, engine):
    gamma = 3
    seq = sample("llama", method, alpha, gamma=gamma, engine=engine, gamma_policy=Cycling(), **options)
    rule = rules.get(method, alpha=alpha, **options)
    res = combined_gof(seq, rule_refs("llama", rule, gamma=gamma))
    report(f"{method} cycling gamma ({engine})", res)
    assert res.p_value > LEVEL, res


def test_the_policy_is_reported_and_varies():
    draft, target = toy_pair("llama")
    ids, mask = ragged_batch(TOY_PROMPTS, 16)
    dec = make_decoder(draft, target, "opt", alpha=0.5, gamma=3, gamma_policy=Cycling())
    out = dec.generate(ids, mask, max_new_tokens=12, seed=0)
    s = out.stats.summary()
    assert len(s["gamma_rounds"]) >= 2 and sum(s["gamma_rounds"].values()) == s["rounds"]
    assert s["gamma_policy"].startswith("Cycling(")
    # per-row draft calls count each round's own g + 1
    assert int(out.stats.draft_calls.max()) <= s["rounds"] * 4 and s["draft_forwards"] == sum(
        (g + 1) * n for g, n in s["gamma_rounds"].items())
    fixed = make_decoder(draft, target, "opt", alpha=0.5, gamma=3).generate(ids, mask, max_new_tokens=12, seed=0)
    assert "gamma_rounds" not in fixed.stats.summary()


def test_plain_target_steps_are_counted_and_skip_the_draft():
    draft, target = toy_pair("llama")
    ids, mask = ragged_batch(TOY_PROMPTS, 8)
    out = make_decoder(draft, target, "specdecode", gamma=3, gamma_policy=Cycling()).generate(
        ids, mask, max_new_tokens=20, seed=0)
    s = out.stats.summary()
    assert s["gamma_rounds"].get(0, 0) >= 2
    assert s["draft_forwards"] == sum((g + 1) * n for g, n in s["gamma_rounds"].items() if g)
    assert s["target_forwards"] == s["rounds"]
    # where drafting never pays, SpecDecode decodes as the target alone, but for a probe round now and then
    lone = make_decoder(draft, target, "specdecode", gamma=3, gamma_policy=AdaptiveGamma(c=2.0, probe_every=8))
    stats = lone.generate(ids, mask, max_new_tokens=20, seed=0).stats.summary()
    assert stats["gamma_rounds"][0] >= 16 and set(stats["gamma_rounds"]) <= {0, 1}


def test_fast_and_plain_engines_agree_under_a_policy():
    draft, target = toy_pair("llama")
    ids, mask = ragged_batch(TOY_PROMPTS, 8)
    outs = [make_decoder(draft, target, "token_v3", alpha=0.6, gamma=3, engine=e, gamma_policy=Cycling())
            .generate(ids, mask, max_new_tokens=10, seed=3) for e in ("plain", "fast")]
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    assert outs[0].stats.summary()["gamma_rounds"] == outs[1].stats.summary()["gamma_rounds"]
    for name in ("draft_calls", "drafted", "accepted", "rejections", "pos_reached", "pos_accepted"):
        assert torch.equal(getattr(outs[0].stats, name), getattr(outs[1].stats, name)), name


# every row runs to the limit, so the draft lags by up to probe_every tokens more than once
AGREE_CASES = [("token_v3", 0.6, Cycling()), ("specdecode", None, Cycling()),
               ("specdecode", None, AdaptiveGamma(c=2.0, probe_every=9)),  # 9 skipped tokens: 3 catch-up chunks
               ("specdecode", None, AdaptiveGamma(c=0.2, prior_weight=1.0, probe_every=4))]


@pytest.mark.parametrize("method,alpha,policy", AGREE_CASES, ids=[f"{c[0]}-{type(c[2]).__name__}-{c[2].c}"
                                                                   for c in AGREE_CASES])
def test_static_engines_agree_with_fast_under_a_policy(method, alpha, policy):
    """Token for token and counter for counter: the static engines take the same block sizes, and a draft
    that lagged behind reads the skipped tokens in gamma + 1-wide chunks instead of one forward."""
    draft, target = toy_pair("llama")
    ids, mask = ragged_batch(TOY_PROMPTS, 6)
    outs = {e: make_decoder(draft, target, method, alpha=alpha, gamma=3, engine=e, gamma_policy=policy)
            .generate(ids, mask, max_new_tokens=40, seed=list(range(5, 11)), no_eos=True, temperature=0.8)
            for e in ("fast", "static", "graph")}
    ref = outs["fast"]
    if isinstance(policy, Cycling) or policy.c == 2.0:
        assert len(ref.stats.gamma_rounds) >= 2
    for e in ("static", "graph"):
        _assert_same(outs[e], ref, exact_float=False)
        assert outs[e].stats.summary()["gamma_rounds"] == ref.stats.summary()["gamma_rounds"]
        assert outs[e].stats.summary()["mean_gamma"] == ref.stats.summary()["mean_gamma"]


# ---- negative control: uniforms keyed at the wrong positions when a round is shorter ---------------------------


class _ShiftedUniforms:
    """A shorter round's uniforms taken from the END of the full block's (keyed at positions gen + gamma - g
    on), so one uniform serves two positions of the sequence across rounds."""

    def __init__(self, inner, gamma):
        self.inner, self.gamma = inner, gamma

    def keys(self, seeds):
        return self.inner.keys(seeds)

    def round(self, keys, gen, g=None):
        g = self.gamma if g is None else g
        return self.inner.round(keys, gen + (self.gamma - g), g)


class _TargetStepWrongUniform(SpecCascadeDecoder):
    """A plain target step draws with the uniform of the NEXT position, which the next round draws with too."""

    def _target_step(self, target, ctx, plan, keys, row_ids, gen, pend, pos):
        inner = plan.uniforms

        class Ahead:
            def round(self, keys, gen, g=None):
                return inner.round(keys, gen + 1, g)

        shifted = dataclasses.replace(plan, uniforms=Ahead())
        return super()._target_step(target, ctx, shifted, keys, row_ids, gen, pend, pos)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["plain", "graph"])
def test_negative_control_a_target_step_reusing_a_uniform_is_rejected(engine):
    gamma = 3
    draft, target = toy_pair("llama")
    dec = make_decoder(draft, target, "specdecode", gamma=gamma, gamma_policy=Cycling(), engine=engine)
    dec.__class__ = _TargetStepWrongUniform
    ids, mask = ragged_batch(TOY_PROMPTS, N)
    seq = dec.generate(ids, mask, max_new_tokens=3, seed=SEED).sequences
    res = combined_gof(seq, rule_refs("llama", rules.get("specdecode"), gamma=gamma))
    report(f"negative control: target step with the next position's uniform ({engine})", res)
    assert res.p_value < LEVEL, res


@pytest.mark.slow
def test_negative_control_uniforms_at_the_wrong_positions_are_rejected():
    real = decoder_mod.round_plan

    def shifted_plan(lean, ctx, gamma):
        plan = real(lean, ctx, gamma)
        plan.uniforms = _ShiftedUniforms(plan.uniforms, gamma)
        return plan

    gamma = 3
    with mock.patch.object(decoder_mod, "round_plan", shifted_plan):
        seq = sample("llama", "specdecode", None, gamma=gamma, engine="plain", gamma_policy=Cycling())
    res = combined_gof(seq, rule_refs("llama", rules.get("specdecode"), gamma=gamma))
    report("negative control: shifted uniforms", res)
    assert res.p_value < LEVEL, res
