"""Properties of every deferral rule (THEORY.md sections 2-5): pi, GenSpecSample, Lemmas 2 and 3, alpha limits."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    ALL_RULES,
    CASCADE_RULES,
    DTYPE,
    LENIENCE_RULES,
    PAPER_LENIENCE_RULES,
    TOKEN_RULES,
    alphas,
    dyadic_alphas,
    finite_alphas,
    lossy_alphas,
    make_rule,
    pairs,
    rule_builds,
    temperatures,
    unit_interval,
)

from specref import genspec, rules
from specref.dists import temper, tv

TOL = 1e-12


def _run(rule, q_raw, p_raw, temperature):
    q, p = temper(q_raw, temperature), temper(p_raw, temperature)
    return q, p, rule(q, p, q_rule=q_raw, p_rule=p_raw)


def _close(a, b, tol=TOL):
    torch.testing.assert_close(a, b, atol=tol, rtol=0)


# ---- every rule ----------------------------------------------------------------------------------------


def test_registry_has_every_method_name():
    assert set(rules.NAMES()) >= {
        "target", "draft", "specdecode", "lossy", "ensemble", "chow", "diff", "opt",
        "token_v1", "token_v2", "token_v3", "learned",
    }
    assert not rules.get("draft").needs_target
    assert rules.get("token_v3", alpha=0.2).token_level and not rules.get("opt", alpha=0.2).token_level


@given(rule_builds(), pairs(), temperatures)
def test_pi_is_a_distribution_and_genspec_emits_exactly_pi(name_rule, qp, t):
    name, rule = name_rule
    q_raw, p_raw = qp
    q, p, out = _run(rule, q_raw, p_raw, t)
    b, v = q.shape
    pi = out.pi
    assert pi.shape == (b, v) and torch.isfinite(pi).all()
    assert float(pi.min()) >= -TOL
    _close(pi.sum(-1), torch.ones(b, dtype=DTYPE))
    # pi only puts mass where the draft or the target does
    assert torch.all(pi[(q == 0) & (p == 0)].abs() <= TOL)
    # GenSpecSample's closed form with the rule's own accept / residual reproduces pi exactly
    _close(genspec.emitted(q, out.accept, out.residual), pi)
    assert float(out.accept.min()) >= 0 and float(out.accept.max()) <= 1
    _close(out.residual.sum(-1), torch.ones(b, dtype=DTYPE))
    assert float(out.residual.min()) >= 0
    expected_defer_shape = (b, v) if rule.token_level else (b,)
    assert out.defer.shape == expected_defer_shape
    assert float(out.defer.min()) >= 0 and float(out.defer.max()) <= 1
    rej = out.rejection_rate(q)
    assert float(rej.min()) >= -TOL and float(rej.max()) <= 1 + TOL


@given(rule_builds(names=tuple(n for n in ALL_RULES if n != "lossy")), pairs(), temperatures)
def test_rejection_rate_is_tv_of_pi_and_q(name_rule, qp, t):
    """GenSpecSample rejects with probability sum_v max(0, q(v) - pi(v)) = TV(pi, q)."""
    name, rule = name_rule
    q, p, out = _run(rule, *qp, t)
    rej = out.rejection_rate(q)
    _close(rej, (q - out.pi).clamp_min(0).sum(-1))
    _close(rej, tv(out.pi, q))
    _close(out.accept[q > 0], torch.minimum(torch.ones_like(q), out.pi / q)[q > 0])


@given(rule_builds(names=CASCADE_RULES), pairs(), temperatures)
def test_lemma3_cascade_rejection_is_r_times_tv(name_rule, qp, t):
    """Lemma 3: pi = (1 - r) q + r p is rejected with probability r * TV(p, q) (fractional r included)."""
    name, rule = name_rule
    q, p, out = _run(rule, *qp, t)
    r = out.defer
    _close(out.pi, (1 - r).unsqueeze(-1) * q + r.unsqueeze(-1) * p)
    _close(out.rejection_rate(q), r * tv(p, q))


@given(rule_builds(names=TOKEN_RULES), pairs(), temperatures)
def test_token_rules_mix_eq11_and_reject_at_most_the_deferred_mass(name_rule, qp, t):
    """Eq. 11: pi = q (1 - r) + p * eta with eta = sum_u q(u) r(u); rejection <= eta (only deferred drafts)."""
    name, rule = name_rule
    q, p, out = _run(rule, *qp, t)
    r = out.defer
    assert set(r.unique().tolist()) <= {0.0, 1.0}
    eta = (q * r).sum(-1)
    _close(out.pi, q * (1 - r) + p * eta.unsqueeze(-1))
    assert torch.all(out.rejection_rate(q) <= eta + TOL)


# ---- lossy speculative decoding (Lemma 2) ------------------------------------------------------------------


@given(pairs(), lossy_alphas, unit_interval, temperatures)
def test_lossy_pi_is_lemma2_and_its_rejection_rate(qp, alpha, beta, t):
    rule = rules.get("lossy", alpha=alpha, beta=beta)
    q, p, out = _run(rule, *qp, t)
    kept = torch.minimum(q, p / (1 - alpha))
    excess = (p - beta * q).clamp_min(0)
    mass = excess.sum(-1, keepdim=True)
    resid = torch.where(mass > 0, excess / mass.clamp_min(1e-300), p)
    lemma2 = kept + (1 - kept.sum(-1, keepdim=True)) * resid
    _close(out.pi, lemma2)
    # accept = min(1, p / ((1 - alpha) q)); its rejection rate is 1 - sum_v min(q, p / (1 - alpha)) ...
    pos = q > 0
    _close(out.accept[pos], torch.minimum(torch.ones_like(q), p / ((1 - alpha) * q))[pos])
    _close(out.rejection_rate(q), 1 - kept.sum(-1))
    # ... which is at least TV(pi, q), the rate GenSpecSample against pi would have (lossy is not optimal).
    assert torch.all(out.rejection_rate(q) >= tv(out.pi, q) - TOL)


@given(pairs(), temperatures)
def test_lossy_alpha0_beta1_is_specdecode(qp, t):
    q, p, lossy = _run(rules.get("lossy", alpha=0.0, beta=1.0), *qp, t)
    _, _, sd = _run(rules.get("specdecode"), *qp, t)
    _close(lossy.pi, p)
    _close(lossy.pi, sd.pi)
    _close(lossy.rejection_rate(q), tv(p, q))
    pos = q > 0
    _close(lossy.accept[pos], sd.accept[pos])
    rejecting = sd.rejection_rate(q) > 1e-9
    _close(lossy.residual[rejecting], sd.residual[rejecting])


def test_lossy_strictly_worse_rejection_than_genspec_against_its_pi():
    # q = [3/4, 1/4], p = [1/4, 3/4], alpha = 1/2: kept = min(q, 2p) = [1/2, 1/4], rejection 1/4;
    # residual norm(max(0, p - q)) = [0, 1]; pi = [1/2, 1/4 + 1/4] = [1/2, 1/2]; TV(pi, q) = 1/4 too here,
    # with beta = 0: residual = p, pi = [1/2 + 1/16, 1/4 + 3/16] = [9/16, 7/16], TV(pi, q) = 3/16 < 1/4.
    q = torch.tensor([0.75, 0.25], dtype=DTYPE)
    p = torch.tensor([0.25, 0.75], dtype=DTYPE)
    out = rules.get("lossy", alpha=0.5, beta=0.0)(q, p)
    _close(out.pi, torch.tensor([9 / 16, 7 / 16], dtype=DTYPE))
    assert float(out.rejection_rate(q)) == pytest.approx(0.25, abs=TOL)
    assert float(tv(out.pi, q)) == pytest.approx(3 / 16, abs=TOL)


# ---- ensemble --------------------------------------------------------------------------------------------------


@given(pairs(), unit_interval, temperatures)
def test_ensemble_is_a_constant_fractional_deferral(qp, w, t):
    q, p, out = _run(rules.get("ensemble", weight=w), *qp, t)
    _close(out.pi, w * p + (1 - w) * q)
    _close(out.rejection_rate(q), w * tv(p, q))
    _, _, via_alpha = _run(rules.get("ensemble", alpha=1 - w), *qp, t)
    _close(via_alpha.pi, out.pi)


def test_ensemble_endpoints_are_specdecode_and_draft():
    q = torch.tensor([0.5, 0.5, 0.0], dtype=DTYPE)
    p = torch.tensor([0.2, 0.3, 0.5], dtype=DTYPE)
    assert torch.equal(rules.get("ensemble", weight=1.0)(q, p).pi, p)
    assert torch.equal(rules.get("ensemble", weight=0.0)(q, p).pi, q)


# ---- alpha limits and monotonicity ------------------------------------------------------------------------


def _assert_specdecode(q, p, out):
    _close(out.pi, p)
    _close(out.rejection_rate(q), tv(p, q))
    pos = q > 0
    _close(out.accept[pos], torch.minimum(torch.ones_like(q), p / q)[pos])


def _assert_draft_only(q, p, out):
    _close(out.pi, q)
    _close(out.rejection_rate(q), torch.zeros(q.shape[0], dtype=DTYPE))
    assert torch.all(out.accept[q > 0] == 1)


@given(st.sampled_from(LENIENCE_RULES), pairs(), temperatures)
def test_alpha_minus_inf_is_specdecode_and_plus_inf_is_draft_only(name, qp, t):
    q, p, lo = _run(make_rule(name, -math.inf), *qp, t)
    _assert_specdecode(q, p, lo)
    _, _, hi = _run(make_rule(name, math.inf), *qp, t)
    _assert_draft_only(q, p, hi)


@given(st.sampled_from(PAPER_LENIENCE_RULES), pairs(), temperatures, st.floats(1.5, 1e6))
def test_paper_rules_saturate_beyond_alpha_one(name, qp, t, big):
    """Every paper rule is already SpecDecode for alpha <= -1.5 and draft-only for alpha >= 1.5.

    For OPT this needs max q - max p <= TV(p, q) of the SAME pair, so it holds at T = 1 only: OPT reads the
    maxima untempered but prices deferral with the tempered TV (see the next test).
    """
    if name == "opt":
        t = 1.0
    q, p, lo = _run(make_rule(name, -big), *qp, t)
    _assert_specdecode(q, p, lo)
    _, _, hi = _run(make_rule(name, big), *qp, t)
    _assert_draft_only(q, p, hi)


@given(st.sampled_from(LENIENCE_RULES), pairs(), temperatures, alphas, alphas)
def test_deferral_is_monotone_in_alpha(name, qp, t, a1, a2):
    lo, hi = min(a1, a2), max(a1, a2)
    q, p, out_lo = _run(make_rule(name, lo), *qp, t)
    _, _, out_hi = _run(make_rule(name, hi), *qp, t)
    d = tv(p, q)
    if name in ("opt", "learned_cascade", "learned_linear_cascade"):
        # decisions at TV = 0 do not depend on alpha's penalty (and do not change pi)
        mask = d > 0
        assert torch.all(out_lo.defer[mask] >= out_hi.defer[mask])
    else:
        assert torch.all(out_lo.defer >= out_hi.defer)
    if name in CASCADE_RULES:
        assert torch.all(out_lo.rejection_rate(q) >= out_hi.rejection_rate(q) - TOL)


def test_opt_at_finite_alpha_need_not_saturate_when_tempered():
    """Found by hypothesis: at T != 1 a large finite negative alpha is not yet SpecDecode for OPT.

    q_raw = [0, 0, 1], p_raw = [0, 1/32, 31/32], T = 1/2: p_T = [0, 1, 961] / 962, TV(p_T, q_T) = 1/962.
    OPT, alpha = -2: defer iff max q_raw = 1 < 31/32 + 2/962 = 0.9709 -> false: keeps the draft. Only the
    limit alpha = -inf (penalty -inf whenever TV > 0) is SpecDecode at every temperature.
    """
    q_raw = torch.tensor([0.0, 0.0, 1.0], dtype=DTYPE)
    p_raw = torch.tensor([0.0, 1 / 32, 31 / 32], dtype=DTYPE)
    q, p, out = _run(rules.get("opt", alpha=-2.0), q_raw, p_raw, 0.5)
    assert float(out.defer) == 0.0
    _close(out.pi, q)
    _, _, limit = _run(rules.get("opt", alpha=-math.inf), q_raw, p_raw, 0.5)
    _close(limit.pi, p)


# ---- TokenV3 at alpha = 0 is not SpecDecode ----------------------------------------------------------------


def test_token_v3_at_alpha_zero_is_not_specdecode():
    # p has a tie for its argmax (tokens 0 and 1). At alpha = 0, TokenV3 defers v iff p(v) < max p = 2/5:
    # r = [0, 0, 1]; eta = q(2) = 3/10; pi = q (1 - r) + p eta
    #   = [1/2 + 2/5 * 3/10, 1/5 + 2/5 * 3/10, 0 + 1/5 * 3/10] = [31/50, 16/50, 3/50] != p.
    q = torch.tensor([0.5, 0.2, 0.3], dtype=DTYPE)
    p = torch.tensor([0.4, 0.4, 0.2], dtype=DTYPE)
    out = rules.get("token_v3", alpha=0.0)(q, p)
    assert out.defer.tolist() == [0.0, 0.0, 1.0]
    _close(out.pi, torch.tensor([0.62, 0.32, 0.06], dtype=DTYPE))
    assert float(tv(out.pi, p)) > 0.2
    sd = rules.get("specdecode")(q, p)
    # rejection = sum max(0, q - pi) = 0.3 - 0.06 = 0.24; note it EXCEEDS SpecDecode's TV(p, q) = 0.2 here:
    # a token rule keeps more drafts without a coin, but the fresh p-draw it makes for deferred ones can move
    # pi further from q than p itself is.
    assert float(out.rejection_rate(q)) == pytest.approx(0.24, abs=TOL)
    assert float(sd.rejection_rate(q)) == pytest.approx(0.2, abs=TOL)
    # and the exact limit alpha -> -inf is SpecDecode
    _close(rules.get("token_v3", alpha=-math.inf)(q, p).pi, p)


@given(pairs(), temperatures)
def test_token_v3_alpha_zero_keeps_every_argmax_of_p_without_a_coin(qp, t):
    q_raw, p_raw = qp
    q, p, out = _run(rules.get("token_v3", alpha=0.0), q_raw, p_raw, t)
    top = p_raw == p_raw.max(-1, keepdim=True).values
    assert torch.all(out.defer[top] == 0)
    assert torch.all(out.defer[~top] == 1)
    assert torch.all(out.pi[top] >= q[top] - TOL)  # kept drafts of the argmax set are always accepted
    assert torch.all(out.accept[top & (q > 0)] == 1)


# ---- untempered decisions, tempered mixture (THEORY.md section 5) --------------------------------------------


def test_rule_reads_untempered_but_mixes_tempered():
    # Chow, alpha = 0.3: defer iff max q < 0.7.
    # untempered q = [0.6, 0.4]: 0.6 < 0.7 -> defer.
    # tempered at T = 1/4: q^4 = [0.1296, 0.0256] -> max = 0.1296 / 0.1552 = 0.835 >= 0.7 -> would keep.
    q_raw = torch.tensor([0.6, 0.4], dtype=DTYPE)
    p_raw = torch.tensor([0.1, 0.9], dtype=DTYPE)
    q, p = temper(q_raw, 0.25), temper(p_raw, 0.25)
    rule = rules.get("chow", alpha=0.3)
    right = rule(q, p, q_rule=q_raw, p_rule=p_raw)
    wrong = rule(q, p)  # reads the tempered pair
    assert float(right.defer) == 1.0 and float(wrong.defer) == 0.0
    _close(right.pi, p)  # the mixture is of the TEMPERED pair: pi = p_T, not p_raw
    assert float(tv(right.pi, p_raw)) > 0.05
    _close(wrong.pi, q)

    # TokenV3, alpha = 0.5: untempered p = [0.5, 0.3, 0.2]: keep v iff p(v) >= 0.25 -> r = [0, 0, 1].
    # tempered T = 1/2: p^2 / 0.38 = [0.658, 0.237, 0.105]: keep iff >= 0.329 -> r = [0, 1, 1].
    p_raw = torch.tensor([0.5, 0.3, 0.2], dtype=DTYPE)
    q_raw = torch.tensor([0.2, 0.5, 0.3], dtype=DTYPE)
    q, p = temper(q_raw, 0.5), temper(p_raw, 0.5)
    v3 = rules.get("token_v3", alpha=0.5)
    assert v3(q, p, q_rule=q_raw, p_rule=p_raw).defer.tolist() == [0.0, 0.0, 1.0]
    assert v3(q, p).defer.tolist() == [0.0, 1.0, 1.0]


_TV_PRICED = ("opt", "learned_cascade", "learned_linear_cascade", "lossy")


@given(
    rule_builds(names=tuple(n for n in ALL_RULES if n not in _TV_PRICED)),
    pairs(),
    temperatures,
)
def test_decision_depends_only_on_the_untempered_pair(name_rule, qp, t):
    """Except for the TV that prices a deferral (OPT, learned cascade) and lossy, which is a sampling rule."""
    name, rule = name_rule
    q_raw, p_raw = qp
    _, _, tempered = _run(rule, q_raw, p_raw, t)
    untempered = rule(q_raw, p_raw)
    assert torch.equal(tempered.defer, untempered.defer)


# ---- plug-in heads reproduce the paper's rules exactly --------------------------------------------------------


@given(pairs(exact=True), dyadic_alphas)
def test_learned_plugin_heads_equal_opt_and_token_v2(qp, alpha):
    q, p = qp
    learned_c = make_rule("learned_cascade", alpha)(q, p)
    opt = rules.get("opt", alpha=alpha)(q, p)
    assert torch.equal(learned_c.defer, opt.defer)
    assert torch.equal(learned_c.pi, opt.pi)
    learned_t = make_rule("learned_token", alpha)(q, p)
    v2 = rules.get("token_v2", alpha=alpha)(q, p)
    assert torch.equal(learned_t.defer, v2.defer)
    assert torch.equal(learned_t.pi, v2.pi)


# ---- batching ------------------------------------------------------------------------------------------------


@given(rule_builds(), pairs(max_rows=4), temperatures)
def test_rules_act_row_by_row(name_rule, qp, t):
    name, rule = name_rule
    q_raw, p_raw = qp
    q, p, out = _run(rule, q_raw, p_raw, t)
    for i in range(q.shape[0]):
        row = rule(q[i], p[i], q_rule=q_raw[i], p_rule=p_raw[i])
        _close(row.pi, out.pi[i])
        _close(row.defer, out.defer[i])
        _close(row.accept, out.accept[i])


@given(pairs(), temperatures)
def test_trivial_rules(qp, t):
    q_raw, p_raw = qp
    q, p, target = _run(rules.get("target"), q_raw, p_raw, t)
    assert torch.equal(target.pi, p)
    _, _, sd = _run(rules.get("specdecode"), q_raw, p_raw, t)
    assert torch.equal(sd.pi, p)
    _, _, draft = _run(rules.get("draft"), q_raw, p_raw, t)
    assert torch.equal(draft.pi, q)
    assert torch.all(draft.accept == 1)


@given(pairs(), finite_alphas)
def test_float32_inputs_stay_float32(qp, alpha):
    q, p = (x.to(torch.float32) for x in qp)
    for name in ALL_RULES:
        out = make_rule(name, alpha)(q, p)
        assert out.pi.dtype == torch.float32 and out.accept.dtype == torch.float32
        torch.testing.assert_close(out.pi.sum(-1), torch.ones(q.shape[0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(genspec.emitted(q, out.accept, out.residual), out.pi, atol=1e-5, rtol=0)


@settings(max_examples=200, deadline=None)
@given(
    a=st.floats(-50, 50, allow_nan=False), b=st.floats(-200, 50, allow_nan=False),
    lo=st.floats(-10, 10, allow_nan=False), step=st.floats(0, 10, allow_nan=False),
)
def test_mixture_weight_is_a_probability_that_falls_with_the_price(a, b, lo, step):
    """w = sigmoid(a - softplus(b) alpha) in [0, 1], non-increasing in alpha, no NaN at the sweeps' infinite
    limits (also where softplus(b) underflows to 0)."""
    est = torch.tensor([[a, b]], dtype=torch.float64)
    w_lo, w_hi = rules.mixture_weight(est, lo), rules.mixture_weight(est, lo + step)
    for w in (w_lo, w_hi, rules.mixture_weight(est, math.inf), rules.mixture_weight(est, -math.inf)):
        assert bool(torch.isfinite(w).all()) and 0.0 <= float(w) <= 1.0
    assert float(w_hi) <= float(w_lo)
