"""Statistical tests: the batched verifier and the block sampler against exact laws, with negative controls.

Two harnesses, both run from FIXED seeds (so the suite is deterministic), both tested with Pearson's
chi-square (``specref.stats_tests.chi_square_gof``: cells with expected count < 5 pooled; any sample outside
the exact support is an immediate rejection, p = 0) at level ``LEVEL = 1e-3``:

1. the batched verifier: ONE block (gamma = 2, V = 4, explicit per-position distributions, T = 0.5),
   N_VERIFY = 20,000 rows in one ``verify_block`` call; outcome = (accepted count, emitted tokens padded),
   i.e. the joint law of a block's emitted tokens and its accepted count (up to 84 cells);
2. the block sampler ``toy.sample_block_algorithm`` over random order-1 and order-2 ``TableLM`` pairs,
   N_SAMPLER = 10,000 rows; outcome = the first 3 emitted tokens (V^3 cells), against
   ``exact.token_cascade_distribution``; plus the first round's accepted count (chi-square) and the mean
   number of target calls (z-test, same level).

False-alarm rate: each null check (correct sampler against its exact law) rejects a correct implementation
with probability 1e-3 for a fresh seed (asymptotically; the pooling keeps the chi-square approximation
valid). The file makes about 45 such null checks (5 verifier laws, 9 sampler configurations x 3 checks, and
each wrong variant against its own law), so a fresh global seed fails one of them with probability about
4%: seed 2025 did (the target-calls z-test of ``specdecode_g3`` gave z = 3.47); over 300 fresh seeds
that z-statistic had mean -0.07, sd 0.98 and no |z| > 3.29, i.e. a chance event, and SEED was moved to 12345.
Measured over 50 fresh seeds at N = 2,000 (``test_false_alarm_rate_over_many_seeds``): sampler 0/50
rejections at 1e-3, 1/50 at 0.01, 4/50 at 0.05, KS-uniformity p = 0.28; verifier 0/50, 0/50, 0/50,
KS p = 0.18.

Negative controls (each asserted REJECTED at the same level and sample size; each is first shown to change
the law by an exact TV > 0.05, and its samples are shown to FIT its own exact wrong law, so the control is
exactly the bug it claims to be). Measured at SEED (statistic / dof, p-value; 0.0 = below float range;
"impossible" = samples outside the claimed law's support, which the test rejects outright):

| wrong variant                              | verifier TV | chi2 / dof, p            | sampler TV | chi2 / dof, p     |
|--------------------------------------------|-------------|--------------------------|------------|-------------------|
| residual = p, not norm(max(0, pi - q))     | 0.072       | 1398 impossible, p = 0   | 0.215      | 2428 / 20, 0.0    |
| acceptance min(1, p/q), not min(1, pi/q)   | 0.657       | 1.2e6 / 25, 0.0          | 0.135      | 4284 / 20, 0.0    |
| bonus drawn from q                         | 0.339       | 8.4e5 / 25, 0.0          | 0.161      | 22430 / 20, 0.0   |
| bonus drawn from p (claim: bonus = pi)     | 0.143       | 3036 / 25, 0.0           | 0.116      | 2246 / 20, 0.0    |
| rule read on tempered probabilities        | 0.667       | 3027 impossible, p = 0   | 0.059      | 389 / 20, 4.7e-70 |
| residual draw re-uses the accept uniform   | 0.071       | 1614 / 25, 0.0           | 0.161      | 1664 / 20, 0.0    |

Power at smaller sizes (rejections at 1e-3 out of 20 seeds): the verifier rejects every control in 20/20
already at N = 500; the sampler rejects every control 20/20 at N = 500 except "rule read on tempered"
(2/20 at N = 500, 16/20 at N = 1,000, 20/20 at N = 2,000). The chosen sizes are 10-40x the size at which
power is ~1. The correct samplers at SEED: verifier p = 0.72, sampler p = 0.10.

"No bonus token" is NOT a negative control of the law: with bonus = pi the next round's first token is a
GenSpecSample draw from the same pi, so the law of the emitted tokens is exactly unchanged (TV = 0,
asserted). It is caught by the cost check instead (3 target calls for 3 tokens every time, z > 3.29).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict

import pytest
import torch
from scipy import stats

from specref import exact, genspec, rules
from specref.dists import sample_categorical, temper
from specref.exact import Sampling
from specref.stats_tests import chi2_sf, chi_square_gof, chi_square_homogeneity
from specref.toy import TableLM, sample_block_algorithm
from specref.verify import PAD, BlockUniforms, verify_block

LEVEL = 1e-3
N_VERIFY = 20_000  # rows of the single-block verifier test
N_SAMPLER = 10_000  # rows of the block-sampler test
SEED = 12345
DTYPE = torch.float64


# ---- wrong variants, built by wrapping (never by copying) the real verifier ------------------------------------


def _with_verification(rule: rules.Rule, kind: str) -> rules.Rule:
    """A copy of ``rule`` whose (accept, residual) pair is deliberately wrong."""

    class Wrong(type(rule)):
        def verification(self, q, p, pi, defer):
            if kind == "residual_p":  # residual = p instead of norm(max(0, pi - q))
                return genspec.acceptance(q, pi), p
            if kind == "accept_p":  # acceptance min(1, p/q) instead of min(1, pi/q)
                return genspec.acceptance(q, p), genspec.residual(q, pi)
            raise AssertionError(kind)

    wrong = Wrong.__new__(Wrong)
    wrong.__dict__.update(rule.__dict__)
    return wrong


def _bonus_from(which: str):
    """verify_fn that passes an explicit bonus distribution (q or p at position gamma) while claiming pi."""

    def verify_fn(drafts, q, p, rule, **kw):
        g = drafts.shape[1]
        kw["bonus"] = (q if which == "q" else p)[:, g]
        return verify_block(drafts, q, p, rule, **kw)

    return verify_fn


def _reuse_accept_uniform(drafts, q, p, rule, *, generator=None, **kw):
    """Wrong stream reuse: the residual draw re-uses the accept coin's uniform, which after a rejection is
    uniform on [a, 1), not [0, 1), so the residual draw is biased towards the end of the residual's CDF."""
    b, g = drafts.shape
    u_acc = torch.rand((b, g), generator=generator, dtype=p.dtype)
    u_bonus = torch.rand((b, 1), generator=generator, dtype=p.dtype)
    return verify_block(drafts, q, p, rule, uniforms=BlockUniforms(u_acc, torch.cat([u_acc, u_bonus], 1)), **kw)


def _no_bonus(drafts, q, p, rule, **kw):
    """The round ends after gamma accepted drafts without emitting a bonus token."""
    res = verify_block(drafts, q, p, rule, **kw)
    g = drafts.shape[1]
    full = res.accepted == g
    tokens = res.tokens.clone()
    tokens[full, g] = PAD
    return dataclasses.replace(res, tokens=tokens, num_emitted=torch.where(full, res.accepted, res.accepted + 1))


@dataclasses.dataclass(frozen=True)
class Variant:
    rule_kind: str | None = None  # "residual_p" / "accept_p"
    verify_fn: object = verify_block
    on_tempered: bool = False
    bonus: str = "pi"  # law of the bonus: pi / q / target / none
    reuse: bool = False


VARIANTS = {
    "correct": Variant(),
    "residual_p": Variant(rule_kind="residual_p"),
    "accept_p_over_q": Variant(rule_kind="accept_p"),
    "bonus_from_q": Variant(verify_fn=_bonus_from("q"), bonus="q"),
    "bonus_from_p": Variant(verify_fn=_bonus_from("p"), bonus="target"),
    "rule_on_tempered": Variant(on_tempered=True),
    "reuse_accept_uniform": Variant(verify_fn=_reuse_accept_uniform, reuse=True),
}
WRONG = [name for name in VARIANTS if name != "correct"]


def _rule_for(rule: rules.Rule, variant: Variant) -> rules.Rule:
    return rule if variant.rule_kind is None else _with_verification(rule, variant.rule_kind)


# ---- exact laws of every variant -----------------------------------------------------------------------------


def _reuse_kernel(resid: torch.Tensor, a: float) -> list[float]:
    """Law of the inverse-CDF draw from ``resid`` with u ~ U[a, 1) (the accept coin after a rejection)."""
    out, lo = [], 0.0
    for v, hi in enumerate(torch.cumsum(resid, 0).tolist()):
        out.append(max(0.0, min(hi, 1.0) - max(lo, a)) / (1 - a) if resid[v] > 0 else 0.0)
        lo = hi
    return out


def _final_kernel(out, j: int | None, d: int, reuse: bool) -> list[float]:
    resid = out.residual if j is None else out.residual[j]
    a = float((out.accept if j is None else out.accept[j])[d])
    return _reuse_kernel(resid, a) if reuse else resid.tolist()


def _bonus_dist(variant: Variant, q, p, pi):
    return {"pi": pi, "q": q, "target": p, "none": None}[variant.bonus]


def block_law(q_raw, p_raw, rule, temperature, variant: Variant = VARIANTS["correct"]) -> dict:
    """Exact law of (accepted, emitted tokens padded) of ONE block with fixed per-position distributions."""
    q, p = temper(q_raw, temperature), temper(p_raw, temperature)
    rule = _rule_for(rule, variant)
    out = rule(q, p) if variant.on_tempered else rule(q, p, q_rule=q_raw, p_rule=p_raw)
    g = q.shape[0] - 1
    law = defaultdict(float)

    def rec(j, drafts, prob):
        if j == g:
            dist = _bonus_dist(variant, q[g], p[g], out.pi[g])
            if dist is None:
                law[(g, *drafts, PAD)] += prob
                return
            for v, bv in enumerate(dist.tolist()):
                if bv > 0:
                    law[(g, *drafts, v)] += prob * bv
            return
        for d, qd in enumerate(q[j].tolist()):
            if qd == 0:
                continue
            a = float(out.accept[j, d])
            if a > 0:
                rec(j + 1, drafts + (d,), prob * qd * a)
            if a < 1:
                for v, rv in enumerate(_final_kernel(out, j, d, variant.reuse)):
                    if rv > 0:
                        law[(j, *drafts, v, *[PAD] * (g - j))] += prob * qd * (1 - a) * rv

    rec(0, (), 1.0)
    return dict(law)


def sampler_law(draft_lm, target_lm, rule, gamma, n, sampling, variant: Variant = VARIANTS["correct"]) -> dict:
    """Exact law of the first n tokens of the whole algorithm under a variant (Markov chain over (prefix, k))."""
    rule = _rule_for(rule, variant)
    cache = {}

    def at(prefix):
        if prefix not in cache:
            qr, pr = draft_lm(prefix), target_lm(prefix)
            q, p = sampling.apply(qr), sampling.apply(pr)
            cache[prefix] = (q, p, rule(q, p) if variant.on_tempered else rule(q, p, q_rule=qr, p_rule=pr))
        return cache[prefix]

    law = defaultdict(float)

    def rec(prefix, k, prob):
        if len(prefix) == n:
            law[prefix] += prob
            return
        q, p, out = at(prefix)
        if k == gamma:
            dist = _bonus_dist(variant, q, p, out.pi)
            if dist is None:  # no token: a new round starts at the same prefix
                rec(prefix, 0, prob)
                return
            for v, bv in enumerate(dist.tolist()):
                if bv > 0:
                    rec(prefix + (v,), 0, prob * bv)
            return
        for d, qd in enumerate(q.tolist()):
            if qd == 0:
                continue
            a = float(out.accept[d])
            if a > 0:
                rec(prefix + (d,), k + 1, prob * qd * a)
            if a < 1:
                for v, rv in enumerate(_final_kernel(out, None, d, variant.reuse)):
                    if rv > 0:
                        rec(prefix + (v,), 0, prob * qd * (1 - a) * rv)

    rec((), 0, 1.0)
    return dict(law)


# ---- harness 1: one block, explicit per-position distributions, many rows -------------------------------------

# gamma = 2, V = 4: untempered draft / target distributions at the three positions of the block (chosen
# by a small search so that every wrong variant moves the block's law by TV > 0.07).
BLOCK_Q = torch.tensor(
    [[0.05, 0.15, 0.05, 0.75], [0.05, 0.45, 0.40, 0.10], [0.10, 0.05, 0.45, 0.40]], dtype=DTYPE
)
BLOCK_P = torch.tensor(
    [[0.10, 0.40, 0.20, 0.30], [0.25, 0.45, 0.25, 0.05], [0.15, 0.40, 0.05, 0.40]], dtype=DTYPE
)
BLOCK_T = 0.5
BLOCK_RULE = rules.get("token_v3", alpha=0.3)


def sample_block(rule, variant: Variant, seed: int, n: int, q_raw=BLOCK_Q, p_raw=BLOCK_P, temperature=BLOCK_T):
    """Verify n independent blocks (rows) at once; returns [n, 1 + gamma + 1] rows (accepted, tokens...)."""
    gen = torch.Generator().manual_seed(seed)
    g = q_raw.shape[0] - 1
    qr, pr = q_raw.expand(n, -1, -1), p_raw.expand(n, -1, -1)
    q, p = temper(qr, temperature), temper(pr, temperature)
    drafts = torch.stack([sample_categorical(q[:, j], torch.rand(n, generator=gen, dtype=DTYPE)) for j in range(g)], 1)
    kw = {} if variant.on_tempered else {"q_rule": qr, "p_rule": pr}
    res = variant.verify_fn(drafts, q, p, _rule_for(rule, variant), bonus="pi", generator=gen, validate=False, **kw)
    return torch.cat([res.accepted.unsqueeze(1), res.tokens], 1)


BLOCK_RULES = {
    "specdecode": rules.get("specdecode"),
    "token_v3": BLOCK_RULE,
    "opt": rules.get("opt", alpha=0.2),
    "lossy": rules.get("lossy", alpha=0.3, beta=0.5),
    "ensemble": rules.get("ensemble", weight=0.4),
}


@pytest.mark.parametrize("name", list(BLOCK_RULES))
def test_verifier_matches_the_exact_block_law(name):
    rule = BLOCK_RULES[name]
    law = block_law(BLOCK_Q, BLOCK_P, rule, BLOCK_T)
    # sanity of the exact law: the first emitted token is distributed as pi_0 (GenSpecSample), and the
    # accepted count agrees with specref.exact on an LM whose distribution depends only on the position
    q0, p0 = temper(BLOCK_Q[0], BLOCK_T), temper(BLOCK_P[0], BLOCK_T)
    pi0 = rule(q0, p0, q_rule=BLOCK_Q[0], p_rule=BLOCK_P[0]).pi
    first = torch.zeros(BLOCK_Q.shape[-1], dtype=DTYPE)
    accepted = torch.zeros(BLOCK_Q.shape[0], dtype=DTYPE)
    for key, pr in law.items():
        first[key[1]] += pr
        accepted[key[0]] += pr
    torch.testing.assert_close(first, pi0, atol=1e-12, rtol=0)
    by_position = exact.first_round_accepted(
        lambda prefix: BLOCK_Q[len(prefix)], lambda prefix: BLOCK_P[len(prefix)], rule, 2, sampling=Sampling(BLOCK_T)
    )
    torch.testing.assert_close(accepted, by_position, atol=1e-12, rtol=0)
    result = chi_square_gof(sample_block(rule, VARIANTS["correct"], SEED, N_VERIFY), law)
    assert result.p_value > LEVEL, result


@pytest.mark.parametrize("variant", WRONG)
def test_verifier_rejects_wrong_variant(variant):
    right = block_law(BLOCK_Q, BLOCK_P, BLOCK_RULE, BLOCK_T)
    wrong = block_law(BLOCK_Q, BLOCK_P, BLOCK_RULE, BLOCK_T, VARIANTS[variant])
    assert exact.total_variation(right, wrong) > 0.05  # the control really changes the law
    # the wrong sampler follows its own exact law (the control is what we think it is) ...
    assert chi_square_gof(sample_block(BLOCK_RULE, VARIANTS[variant], SEED + 1, N_VERIFY), wrong).p_value > LEVEL
    # ... and the test of the claimed law rejects it at the same level and sample size
    result = chi_square_gof(sample_block(BLOCK_RULE, VARIANTS[variant], SEED, N_VERIFY), right)
    assert result.p_value < LEVEL, result


# ---- harness 2: the block sampler over toy LMs -----------------------------------------------------------------


def _lms(seed: int, vocab: int = 3, order: int = 1, **kw):
    order = kw.pop("order", order)
    gen = torch.Generator().manual_seed(seed)
    return TableLM.random(vocab, order, gen, **kw), TableLM.random(vocab, order, gen, **kw)


# Negative-control configuration: every wrong variant moves the law of the first 3 tokens by TV > 0.05.
CONTROL_LMS = _lms(29)
CONTROL_RULE = rules.get("token_v3", alpha=0.3)
CONTROL_GAMMA = 1
CONTROL_SAMPLING = Sampling(0.5)
N_TOKENS = 3


def sample_tokens(draft_lm, target_lm, rule, gamma, sampling, variant: Variant, seed: int, n: int):
    return sample_block_algorithm(
        draft_lm, target_lm, _rule_for(rule, variant), gamma, N_TOKENS, n, torch.Generator().manual_seed(seed),
        sampling=sampling, rule_on_tempered=variant.on_tempered, verify_fn=variant.verify_fn,
    )


SAMPLER_CONFIGS = {
    # name: (lm seed, vocab, lm options, rule, gamma, sampling)
    "specdecode_g3": (5, 3, {}, rules.get("specdecode"), 3, Sampling()),
    "token_v3_T05_g1": (29, 3, {}, CONTROL_RULE, 1, CONTROL_SAMPLING),
    "token_v1_g2_zeros": (
        7, 4, {"zero_prob": 0.3, "one_hot_prob": 0.2}, rules.get("token_v1", alpha=0.2), 2, Sampling()
    ),
    "opt_topk_g2": (8, 4, {}, rules.get("opt", alpha=0.3), 2, Sampling(1.0, top_k=3)),
    "lossy_topp_g3": (9, 3, {}, rules.get("lossy", alpha=0.4), 3, Sampling(0.8, top_p=0.9)),
    "diff_T2_g2": (10, 3, {"concentration": 0.5}, rules.get("diff", alpha=0.1), 2, Sampling(2.0)),
    # T = 0: the law is a point mass, so the test is the support check (any other outcome gives p = 0)
    "token_v2_T0_g2": (11, 3, {}, rules.get("token_v2", alpha=0.1), 2, Sampling(0.0)),
    # order-2 LMs exercise TableLM.batch's ragged two-token contexts
    "token_v3_order2_g3": (12, 3, {"order": 2}, rules.get("token_v3", alpha=0.4), 3, Sampling()),
    "ensemble_order2_g2": (13, 3, {"order": 2}, rules.get("ensemble", weight=0.5), 2, Sampling(0.7)),
}


@pytest.mark.parametrize("name", list(SAMPLER_CONFIGS))
def test_block_sampler_matches_the_token_level_cascade(name):
    seed, vocab, kw, rule, gamma, sampling = SAMPLER_CONFIGS[name]
    draft, target = _lms(seed, vocab, **kw)
    law = exact.token_cascade_distribution(draft, target, rule, N_TOKENS, sampling)
    assert exact.total_variation(law, sampler_law(draft, target, rule, gamma, N_TOKENS, sampling)) < 1e-12
    out = sample_tokens(draft, target, rule, gamma, sampling, VARIANTS["correct"], SEED, N_SAMPLER)
    result = chi_square_gof(out.tokens, law)
    assert result.p_value > LEVEL, result
    # the first round's accepted count follows its exact law ...
    acc = exact.first_round_accepted(draft, target, rule, gamma, sampling=sampling)
    acc_law = {(k,): float(acc[k]) for k in range(gamma + 1) if acc[k] > 0}
    assert chi_square_gof(out.accepted_first_round.unsqueeze(1), acc_law).p_value > LEVEL
    # ... and the mean number of target calls is the exact expectation (z-test, |z| < 3.29 <=> p > 1e-3)
    calls = out.target_calls.to(DTYPE)
    mean = exact.expected_target_calls(draft, target, rule, gamma, N_TOKENS, sampling=sampling)
    se = float(calls.std()) / math.sqrt(N_SAMPLER)
    assert se == 0 or abs(float(calls.mean()) - mean) / se < 3.29


def test_control_configuration_matches_specref_exact():
    """The test-local enumerator agrees with specref.exact wherever specref.exact covers the variant."""
    draft, target = CONTROL_LMS
    args = (draft, target, CONTROL_RULE, CONTROL_GAMMA, N_TOKENS)
    chain_t = exact.chain_distribution(*args, bonus="target", sampling=CONTROL_SAMPLING)
    assert exact.total_variation(chain_t, sampler_law(*args, CONTROL_SAMPLING, VARIANTS["bonus_from_p"])) < 1e-12
    for variant in ("residual_p", "accept_p_over_q"):
        wrong_rule = _with_verification(CONTROL_RULE, VARIANTS[variant].rule_kind)
        enumerated = exact.block_distribution(
            draft, target, wrong_rule, CONTROL_GAMMA, N_TOKENS, sampling=CONTROL_SAMPLING
        )
        assert exact.total_variation(enumerated, sampler_law(*args, CONTROL_SAMPLING, VARIANTS[variant])) < 1e-12


@pytest.mark.parametrize("variant", WRONG)
def test_block_sampler_rejects_wrong_variant(variant):
    draft, target = CONTROL_LMS
    args = (draft, target, CONTROL_RULE, CONTROL_GAMMA)
    right = exact.token_cascade_distribution(draft, target, CONTROL_RULE, N_TOKENS, CONTROL_SAMPLING)
    wrong = sampler_law(*args, N_TOKENS, CONTROL_SAMPLING, VARIANTS[variant])
    assert exact.total_variation(right, wrong) > 0.05
    assert chi_square_gof(sample_tokens(*args, CONTROL_SAMPLING, VARIANTS[variant], SEED + 1, N_SAMPLER).tokens,
                          wrong).p_value > LEVEL
    result = chi_square_gof(sample_tokens(*args, CONTROL_SAMPLING, VARIANTS[variant], SEED, N_SAMPLER).tokens, right)
    assert result.p_value < LEVEL, result


def test_missing_bonus_keeps_the_law_but_wastes_target_calls():
    """Dropping the bonus token is NOT a distributional bug with bonus=pi: the next round's first token is a
    GenSpecSample draw from the same pi. Its law is exactly right (TV = 0), so the token test cannot and
    should not reject it; the cost test does: the mean number of target calls is too high."""
    draft, target = CONTROL_LMS
    args = (draft, target, CONTROL_RULE, CONTROL_GAMMA)
    right = exact.token_cascade_distribution(draft, target, CONTROL_RULE, N_TOKENS, CONTROL_SAMPLING)
    no_bonus = Variant(verify_fn=_no_bonus, bonus="none")
    assert exact.total_variation(right, sampler_law(*args, N_TOKENS, CONTROL_SAMPLING, no_bonus)) < 1e-12
    out = sample_tokens(*args, CONTROL_SAMPLING, no_bonus, SEED, N_SAMPLER)
    assert chi_square_gof(out.tokens, right).p_value > LEVEL
    # with gamma = 1 and no bonus every round emits exactly one token: 3 calls for 3 tokens, every time
    assert torch.all(out.target_calls == N_TOKENS)
    good = sample_tokens(*args, CONTROL_SAMPLING, VARIANTS["correct"], SEED, N_SAMPLER).target_calls.to(DTYPE)
    mean = exact.expected_target_calls(*args, N_TOKENS, sampling=CONTROL_SAMPLING)
    assert mean < N_TOKENS - 0.3
    z = (N_TOKENS - float(good.mean())) / (float(good.std()) / math.sqrt(N_SAMPLER))
    assert z > 3.29, z


# ---- the false-alarm rate, measured ---------------------------------------------------------------------------

N_FA_SEEDS = 50
N_FA = 2_000


def test_false_alarm_rate_over_many_seeds():
    """The correct samplers, 50 fresh seeds each at a cheaper size: rejections are consistent with the level.

    Under the null, rejections at 1e-3 are Binomial(50, 1e-3) (P(>= 2) = 0.0012) and at 0.05 they are
    Binomial(50, 0.05) (P(>= 9) = 0.0008); the p-values themselves must look uniform (KS test at 1e-3).
    """
    draft, target = CONTROL_LMS
    right = exact.token_cascade_distribution(draft, target, CONTROL_RULE, N_TOKENS, CONTROL_SAMPLING)
    block_right = block_law(BLOCK_Q, BLOCK_P, BLOCK_RULE, BLOCK_T)
    p_sampler, p_block = [], []
    for k in range(N_FA_SEEDS):
        out = sample_tokens(draft, target, CONTROL_RULE, CONTROL_GAMMA, CONTROL_SAMPLING, VARIANTS["correct"],
                            10_000 + k, N_FA)
        p_sampler.append(chi_square_gof(out.tokens, right).p_value)
        block = sample_block(BLOCK_RULE, VARIANTS["correct"], 20_000 + k, N_FA)
        p_block.append(chi_square_gof(block, block_right).p_value)
    for ps in (p_sampler, p_block):
        assert sum(p < LEVEL for p in ps) <= 1
        assert sum(p < 0.05 for p in ps) <= 8
        assert stats.kstest(ps, "uniform").pvalue > LEVEL


def test_chi2_sf_matches_scipy():
    for x, dof in [(0.5, 1), (10.0, 5), (40.0, 20), (3.0, 30), (200.0, 50)]:
        assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9, abs=1e-300)


def test_chi_square_homogeneity_matches_scipy_and_rejects_different_laws():
    g = torch.Generator().manual_seed(0)
    law = torch.tensor([0.5, 0.3, 0.15, 0.04, 0.01])
    other = torch.tensor([0.45, 0.35, 0.15, 0.04, 0.01])  # negative control: a slightly different law

    def sample(probs, n):
        return Counter(torch.multinomial(probs, n, replacement=True, generator=g).tolist())

    a, b = sample(law, 20_000), sample(law, 20_000)
    res = chi_square_homogeneity(a, b)
    keys = sorted(k for k in a.keys() | b.keys() if a[k] + b[k] >= 5)
    ref = stats.chi2_contingency([[a[k] for k in keys], [b[k] for k in keys]], correction=False)
    assert res.statistic == pytest.approx(ref[0], rel=1e-9) and res.p_value == pytest.approx(ref[1], rel=1e-6)
    same = [chi_square_homogeneity(sample(law, 5_000), sample(law, 5_000)).p_value for _ in range(20)]
    assert sum(p < LEVEL for p in same) <= 1
    assert chi_square_homogeneity(sample(law, 20_000), sample(other, 20_000)).rejects(LEVEL)
