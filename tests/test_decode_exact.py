"""The decoder samples EXACTLY what the theory says: chi-square tests against exact enumeration.

For every method, N = 4000 rows (two prompts of different lengths, left-padded into one ragged batch, one
seed per row) are decoded for 3 tokens with real tiny Hugging Face models; the joint law of the 3 tokens
is held against the exact distribution computed from the same models' probabilities, evaluated by plain
uncached forwards (:class:`specref.decode.testing.HFToyLM`). The two prompt groups' Pearson statistics are
summed (independent samples), cells with expected count < 5 are pooled, and any impossible outcome is an
immediate failure.

False-alarm rate: each test rejects a correct decoder with probability LEVEL = 1e-3 (about 2-3% for the
whole file of ~25 tests); seeds are fixed, so the suite is deterministic. The negative controls (cache not
rolled back, position ids off by one on ragged rows, bonus token drawn from q) run the SAME test at the SAME
sample size and must be rejected; their p-values are printed (run with ``-s``). T5 on the ``static`` engine has
its own test and controls (cross-attention of another row, relative bias counted in slots, no rollback).
"""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch

from specref import exact, rules
from specref.baselines_exact import bild_distribution, seq_cascade_distribution
from specref.decode import SpecCascadeDecoder, make_decoder
from specref.decode import decoder as decoder_mod
from specref.decode import static as static_mod
from specref.decode.testing import TOY_PROMPTS, HFToyLM, ragged_batch, toy_pair
from specref.exact import Sampling
from specref.stats_tests import GofResult, chi2_sf, chi_square_gof

LEVEL = 1e-3
PLAIN = Sampling()
N = 4000
GAMMA = 2
SEED = 20251125

pytestmark = pytest.mark.slow


class TokenHead:
    """A fixed 'learned' token head: scores candidates by the average of the two untempered models."""

    kind = "token"

    def estimate(self, q_rule, p_rule, q, p, features=None):
        return 0.5 * (q_rule + p_rule)


class CascadeHead:
    """A fixed 'learned' cascade head: expected losses 1 - max q and 1 - max p (the Diff plug-in)."""

    kind = "cascade"

    def estimate(self, q_rule, p_rule, q, p, features=None):
        return torch.stack([1 - q_rule.amax(-1), 1 - p_rule.amax(-1)], dim=-1)


class MixtureHead:
    """A fixed 'learned' mixture head: weight on the target ``sigmoid(4 (max p - max q) + 0.5 - softplus(0)
    alpha)``, fractional on the toy models (continuous deferral, THEORY.md section 7)."""

    kind = "mixture"

    def estimate(self, q_rule, p_rule, q, p, features=None):
        a = 4 * (p_rule.amax(-1) - q_rule.amax(-1)) + 0.5
        return torch.stack([a, torch.zeros_like(a)], dim=-1)


class _RoundedMixtureHead(MixtureHead):
    """A plausible bug: the mixture weight read as a yes/no decision (w rounded to 0 or 1)."""

    def estimate(self, q_rule, p_rule, q, p, features=None):
        est = super().estimate(q_rule, p_rule, q, p, features)
        w = rules.mixture_weight(est, 0.5)
        return torch.stack([torch.where(w > 0.5, 30.0, -30.0), torch.full_like(w, -30.0)], dim=-1)


_LMS: dict[str, list[tuple[HFToyLM, HFToyLM]]] = {}


def toy_lms(family: str) -> list[tuple[HFToyLM, HFToyLM]]:
    if family not in _LMS:
        draft, target = toy_pair(family)
        _LMS[family] = [(HFToyLM(draft, p).precompute(2), HFToyLM(target, p).precompute(2)) for p in TOY_PROMPTS]
    return _LMS[family]


def combined_gof(samples: torch.Tensor, refs: list[dict]) -> GofResult:
    """Chi-square over the prompt groups (rows alternate between the prompts), statistics summed."""
    stat, dof, impossible = 0.0, 0, 0
    for g, ref in enumerate(refs):
        r = chi_square_gof(samples[g :: len(refs)], ref)
        impossible += r.impossible
        stat += r.statistic if not r.impossible else 0.0
        dof += r.dof
    if impossible:
        return GofResult(math.inf, dof, 0.0, impossible, samples.shape[0])
    return GofResult(stat, dof, chi2_sf(stat, dof), 0, samples.shape[0])


def report(name: str, res: GofResult) -> None:
    print(f"\n{name}: chi2={res.statistic:.1f} dof={res.dof} p={res.p_value:.3g}")


# ---- deliberately wrong decoders for the negative controls (test subclasses; production code has no switches)


class _NoRollback(SpecCascadeDecoder):
    """Rejected drafts stay in both caches (their keys and values leak into later rounds)."""

    def _start(self, ad, ctx, ids, mask):
        session, pend, pos = super()._start(ad, ctx, ids, mask)
        session.keep_last = lambda n, keep: None
        return session, pend, pos


class _PositionShift(SpecCascadeDecoder):
    """Rows with left padding get positions off by one."""

    def _start(self, ad, ctx, ids, mask):
        session, pend, pos = super()._start(ad, ctx, ids, mask)
        return session, pend, pos + (ctx.mask[:, 0] == 0).long()


class _BonusFromQ(SpecCascadeDecoder):
    """The bonus token is drawn from the draft's q instead of pi."""

    def _run(self, ctx):
        self._fused_kind = None  # every block through verify_block, whose bonus is replaced below
        real = decoder_mod.verify_block

        def wrong(drafts, q, p, rule, **kw):
            return real(drafts, q, p, rule, **{**kw, "bonus": q[:, drafts.shape[1]]})

        with mock.patch.object(decoder_mod, "verify_block", wrong):
            super()._run(ctx)


class _CrossAttentionOfAnotherRow(SpecCascadeDecoder):
    """Static engines, T5: each row's cross-attention reads the next row's encoder output (the rows alternate
    between the two prompts) under its own mask."""

    def _start(self, ad, ctx, ids, mask):
        session, pend, pos = super()._start(ad, ctx, ids, mask)
        enc = session.engine.enc_hidden  # the first forward computes the cross-attention keys/values from it
        enc.copy_(enc.roll(1, dims=0))
        return session, pend, pos


def _bias_from_slot_distances(engine, tok, pos, mask):
    """T5's relative bias from slot distances (what T5 computes itself), so holes left by rejected drafts
    shift it."""
    slots = engine.kv_index.expand(engine.b0, -1)
    saved, engine.pos = engine.pos, slots
    try:
        return _REAL_DECODER_STEP(engine, tok, engine.holder.widx.expand(engine.b0, -1), mask)
    finally:
        engine.pos = saved


_REAL_DECODER_STEP = static_mod.StaticEngine._decoder_step


class _BiasFromSlots(SpecCascadeDecoder):
    """Static engines, T5: the relative position bias counts slots instead of positions."""

    def _run(self, ctx):
        with mock.patch.object(static_mod.StaticEngine, "_decoder_step", _bias_from_slot_distances):
            super()._run(ctx)


WRONG_DECODERS = {
    "_bug_no_rollback": _NoRollback,
    "_bug_position_shift": _PositionShift,
    "_bug_bonus_from_q": _BonusFromQ,
    "_bug_t5_cross_attention_of_another_row": _CrossAttentionOfAnotherRow,
    "_bug_t5_bias_from_slots": _BiasFromSlots,
}


def sample(
    family: str, method, alpha=None, *, bug: str | None = None, sampling=PLAIN, gamma=GAMMA, max_new_tokens=3, **options
) -> torch.Tensor:
    draft, target = toy_pair(family)
    dec = make_decoder(draft, target, method, alpha=alpha, gamma=gamma, **options)
    if bug:
        dec.__class__ = WRONG_DECODERS[bug]  # the same decoder, with one deliberate mistake
    ids, mask = ragged_batch(TOY_PROMPTS, N)
    out = dec.generate(
        ids,
        mask,
        max_new_tokens=max_new_tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        seed=SEED,
    )
    assert (out.lengths == 3).all()
    return out.sequences


def rule_refs(family: str, rule, bonus="pi", sampling=PLAIN, gamma=GAMMA) -> list[dict]:
    return [exact.chain_distribution(d, t, rule, gamma, 3, bonus=bonus, sampling=sampling) for d, t in toy_lms(family)]


# (method, alpha, options): every rule of the speculative loop. Alphas are chosen so that each rule defers
# at 30-70% of positions on these models (a rule that always or never defers would test less).
RULE_CASES = [
    ("specdecode", None, {}),
    ("lossy", 0.3, {}),
    ("ensemble", 0.5, {}),
    ("chow", 0.3, {}),
    ("diff", 0.1, {}),
    ("opt", 0.5, {}),
    ("token_v1", 0.1, {}),
    ("token_v2", 0.6, {}),
    ("token_v3", 0.6, {}),
    ("learned", 0.05, {"head": TokenHead()}),
    ("learned", 0.0, {"head": CascadeHead()}),
    ("learned", 0.5, {"head": MixtureHead()}),
]


def _id(case):
    m, a, o = case
    return f"{m}-{a}" + ("-" + type(o["head"]).__name__ if "head" in o else "")


@pytest.mark.parametrize("case", RULE_CASES, ids=_id)
def test_rule_methods_match_exact_llama(case):
    method, alpha, options = case
    seqs = sample("llama", method, alpha, **options)
    rule = rules.get(method, alpha=alpha, **options)
    res = combined_gof(seqs, rule_refs("llama", rule))
    report(f"llama {method} alpha={alpha}", res)
    assert res.p_value >= LEVEL, res


def test_mixture_weights_are_fractional_and_rounding_them_is_rejected():
    """The mixture case above tests fractional weights (not 0/1 decisions in disguise), and the same test at
    the same sample size rejects a decoder that rounds them (the negative control)."""
    head = MixtureHead()
    (d, t), _ = toy_lms("llama")
    probs = torch.stack([d(()), t(())])  # the first position's q and p
    w = rules.mixture_weight(head.estimate(probs[0], probs[1], probs[0], probs[1]), 0.5)
    assert 0.05 < float(w) < 0.95, float(w)
    seqs = sample("llama", "learned", 0.5, head=_RoundedMixtureHead())
    res = combined_gof(seqs, rule_refs("llama", rules.get("learned", alpha=0.5, head=head)))
    report("negative control: mixture weight rounded to 0/1", res)
    assert res.p_value < LEVEL, res


@pytest.mark.parametrize("method,alpha", [("specdecode", None), ("token_v3", 0.6)])
def test_bonus_target_matches_exact(method, alpha):
    seqs = sample("llama", method, alpha, bonus="target")
    res = combined_gof(seqs, rule_refs("llama", rules.get(method, alpha=alpha), bonus="target"))
    report(f"llama {method} bonus=target", res)
    assert res.p_value >= LEVEL, res


def test_sampling_filters_match_exact():
    """Temperature, top-k and top-p: rules read untempered probabilities, mixing uses the filtered ones."""
    s = Sampling(temperature=1.5, top_k=6, top_p=0.95)
    seqs = sample("llama", "token_v3", 0.6, sampling=s)
    res = combined_gof(seqs, rule_refs("llama", rules.get("token_v3", alpha=0.6), sampling=s))
    report("llama token_v3 T=1.5 top_k=6 top_p=0.95", res)
    assert res.p_value >= LEVEL, res


# Per-family alphas with mixed deferral (the T5 draft is flatter than the Llama one).
FAMILY_ALPHA = {
    "t5": {"token_v3": 0.6, "chow": 0.6, "token_cascade": 0.6, "bild": (0.4, 1.0)},
    "gpt2": {"token_v3": 0.3, "chow": 0.45, "token_cascade": 0.5, "bild": (0.5, 1.5)},
    "llama": {"token_v3": 0.6, "chow": 0.3, "token_cascade": 0.3, "bild": (0.7, 1.0)},
}


@pytest.mark.parametrize("family", ["t5", "gpt2"])
@pytest.mark.parametrize("method,bonus", [("specdecode", "pi"), ("token_v3", "pi"), ("chow", "target")])
def test_other_families_match_exact(family, method, bonus):
    alpha = FAMILY_ALPHA[family].get(method)
    seqs = sample(family, method, alpha, bonus=bonus)
    res = combined_gof(seqs, rule_refs(family, rules.get(method, alpha=alpha), bonus=bonus))
    report(f"{family} {method} alpha={alpha} bonus={bonus}", res)
    assert res.p_value >= LEVEL, res


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_single_model_methods_match_exact(family):
    for method, which in (("target", 1), ("draft", 0)):
        seqs = sample(family, method)
        refs = [exact.lm_distribution(pair[which], 3) for pair in toy_lms(family)]
        res = combined_gof(seqs, refs)
        report(f"{family} {method}-only", res)
        assert res.p_value >= LEVEL, (method, res)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_token_cascade_matches_exact(family):
    alpha = FAMILY_ALPHA[family]["token_cascade"]
    seqs = sample(family, "token_cascade", alpha)
    refs = [exact.token_cascade_distribution(d, t, rules.get("chow", alpha=alpha), 3) for d, t in toy_lms(family)]
    res = combined_gof(seqs, refs)
    report(f"{family} token_cascade alpha={alpha}", res)
    assert res.p_value >= LEVEL, res


@pytest.mark.parametrize(
    "aggregate,quantile,alpha", [("mean", 0.5, 0.5), ("sum", 0.5, 0.8), ("quantile", 0.0, 0.7), ("quantile", 0.5, 0.5)]
)
def test_seq_cascade_matches_exact(aggregate, quantile, alpha):
    seqs = sample("llama", "seq_cascade", alpha, aggregate=aggregate, quantile=quantile)
    refs = [
        seq_cascade_distribution(d, t, 3, aggregate=aggregate, quantile=quantile, alpha=alpha)
        for d, t in toy_lms("llama")
    ]
    res = combined_gof(seqs, refs)
    report(f"llama seq_cascade {aggregate} q={quantile} alpha={alpha}", res)
    assert res.p_value >= LEVEL, res


@pytest.mark.parametrize("family", ["llama", "t5", "gpt2"])
def test_bild_matches_exact(family):
    fallback, rollback = FAMILY_ALPHA[family]["bild"]
    seqs = sample(family, "bild", fallback=fallback, rollback=rollback)
    refs = [bild_distribution(d, t, 3, fallback=fallback, rollback=rollback) for d, t in toy_lms(family)]
    res = combined_gof(seqs, refs)
    report(f"{family} bild fallback={fallback} rollback={rollback}", res)
    assert res.p_value >= LEVEL, res


# ---- T5 on a static engine: the encoder once per call, fixed cross-attention buffers, the bias from positions --


def test_t5_on_the_static_engine_matches_exact():
    alpha = FAMILY_ALPHA["t5"]["token_v3"]
    seqs = sample("t5", "token_v3", alpha, engine="static")
    res = combined_gof(seqs, rule_refs("t5", rules.get("token_v3", alpha=alpha)))
    report(f"t5 token_v3 alpha={alpha} (static engine)", res)
    assert res.p_value >= LEVEL, res


@pytest.mark.parametrize("bug", ["_bug_t5_cross_attention_of_another_row", "_bug_t5_bias_from_slots",
                                 "_bug_no_rollback"])
def test_t5_static_negative_controls_are_rejected(bug):
    """The same test at the same sample size rejects a static T5 whose cross-attention reads another row's
    encoder output, whose relative bias counts slots (holes included), or whose self-attention cache keeps the
    rejected drafts."""
    alpha = FAMILY_ALPHA["t5"]["token_v3"]
    seqs = sample("t5", "token_v3", alpha, bug=bug, engine="static")
    res = combined_gof(seqs, rule_refs("t5", rules.get("token_v3", alpha=alpha)))
    report(f"negative control {bug} (t5, static engine)", res)
    assert res.p_value < LEVEL, res


# ---- negative controls: the same test, the same sample size, deliberately wrong decoders ------------------


@pytest.mark.parametrize("bug", ["_bug_no_rollback", "_bug_position_shift", "_bug_bonus_from_q"])
def test_negative_controls_are_rejected(bug):
    seqs = sample("llama", "specdecode", bug=bug)
    res = combined_gof(seqs, rule_refs("llama", rules.get("specdecode")))
    report(f"negative control {bug}", res)
    assert res.p_value < LEVEL, res


def test_controls_are_exact_when_not_triggered():
    """The wrong variants are wrong only where they should be: the position bug touches only padded rows."""
    seqs = sample("llama", "specdecode", bug="_bug_position_shift")
    ref = rule_refs("llama", rules.get("specdecode"))
    unpadded = chi_square_gof(seqs[0::2], ref[0])  # prompt 0 is the longest: no left padding
    assert unpadded.p_value >= LEVEL
