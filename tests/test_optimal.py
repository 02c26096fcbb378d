"""The optimal deferral characterization (THEORY.md section 6): Lemmas 1, 4, 5, plug-ins, token optimum."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import DTYPE, dyadic_alphas, finite_alphas, triples

from specref import optimal, rules
from specref.dists import temper, tv

TOL = 1e-12
losses = st.sampled_from(optimal.LOSSES)
fractions_r = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0))


# ---- expected losses ---------------------------------------------------------------------------------------


@given(triples())
def test_expected_losses_by_definition(tqp):
    truth, q, _ = tqp
    for i in range(q.shape[0]):
        top = max(range(q.shape[-1]), key=lambda v: (float(q[i, v]), -v))  # lowest index among ties
        assert float(optimal.expected_loss(truth[i], q[i], "argmax")) == pytest.approx(1 - float(truth[i, top]))
        sampled = 1 - sum(float(truth[i, v]) * float(q[i, v]) for v in range(q.shape[-1]))
        assert float(optimal.expected_loss(truth[i], q[i], "sampled")) == pytest.approx(sampled, abs=TOL)


def test_expected_loss_hand_case():
    truth = torch.tensor([0.5, 0.3, 0.2], dtype=DTYPE)
    model = torch.tensor([0.1, 0.45, 0.45], dtype=DTYPE)  # argmax tie 1/2 -> lowest index 1
    assert float(optimal.expected_loss(truth, model, "argmax")) == pytest.approx(0.7)  # 1 - P(1)
    # sampled: 1 - (0.05 + 0.135 + 0.09) = 0.725
    assert float(optimal.expected_loss(truth, model, "sampled")) == pytest.approx(0.725, abs=TOL)


# ---- Lemma 1 (sequential) and Lemma 4 (speculative) ---------------------------------------------------------


@given(triples(), finite_alphas, losses, fractions_r)
def test_lemma1_rule_minimises_L_seq(tqp, alpha, loss, r):
    truth, q, p = tqp
    lq, lp = optimal.expected_loss(truth, q, loss), optimal.expected_loss(truth, p, loss)
    star = optimal.optimal_seq_defer(truth, q, p, alpha, loss).to(DTYPE)
    best = optimal.seq_objective(star, lq, lp, alpha)
    for alt in (torch.zeros_like(star), torch.ones_like(star), torch.full_like(star, r)):
        assert torch.all(best <= optimal.seq_objective(alt, lq, lp, alpha) + TOL)


@given(triples(), finite_alphas, losses, fractions_r, st.sampled_from([1.0, 0.5, 2.0]))
def test_lemma4_rule_minimises_L_spec(tqp, alpha, loss, r, temperature):
    truth, q, p = tqp
    q_mix, p_mix = temper(q, temperature), temper(p, temperature)
    lq, lp = optimal.expected_loss(truth, q, loss), optimal.expected_loss(truth, p, loss)
    d = tv(p_mix, q_mix)
    star = optimal.optimal_spec_defer(truth, q, p, alpha, loss, q_mix=q_mix, p_mix=p_mix).to(DTYPE)
    best = optimal.spec_objective(star, lq, lp, alpha, d)
    for alt in (torch.zeros_like(star), torch.ones_like(star), torch.full_like(star, r)):
        assert torch.all(best <= optimal.spec_objective(alt, lq, lp, alpha, d) + TOL)
    # Lemma 3 is what makes L_spec the right objective: the deferral's price is its rejection rate r * TV.
    out = rules.get("ensemble", weight=r)(q_mix, p_mix)
    torch.testing.assert_close(out.rejection_rate(q_mix), r * d, atol=TOL, rtol=0)


# ---- plug-in relations (exact arithmetic: dyadic probabilities and alphas) ------------------------------------


def _argmin01(objective):
    """Decision in {0, 1} minimising ``objective(r)``; ties keep the draft (r = 0), like the rules' strict <."""
    zero, one = objective(torch.tensor(0.0, dtype=DTYPE)), objective(torch.tensor(1.0, dtype=DTYPE))
    return (one < zero).to(DTYPE)


@given(triples(exact=True), dyadic_alphas)
def test_plugin_relations_diff_chow_opt(tqp, alpha):
    _, q, p = tqp
    lq_hat, lp_hat = optimal.plugin_losses(q, p)
    torch.testing.assert_close(lq_hat, 1 - q.max(-1).values, atol=0, rtol=0)
    # Diff = Lemma 1 with plug-in losses
    diff = rules.get("diff", alpha=alpha)(q, p).defer
    assert torch.equal(diff, _argmin01(lambda r: optimal.seq_objective(r, lq_hat, lp_hat, alpha)))
    # Chow = Lemma 1 ignoring the target's loss (set it to 0)
    chow = rules.get("chow", alpha=alpha)(q, p).defer
    assert torch.equal(chow, _argmin01(lambda r: optimal.seq_objective(r, lq_hat, torch.zeros_like(lp_hat), alpha)))
    # OPT = Lemma 4 with plug-in losses and the TV of the pair
    opt = rules.get("opt", alpha=alpha)(q, p).defer
    d = tv(p, q)
    lemma4 = _argmin01(lambda r: optimal.spec_objective(r, lq_hat, lp_hat, alpha, d))
    assert torch.equal(opt[d > 0], lemma4[d > 0])  # at TV = 0 both choices give the same pi


@given(triples(exact=True))
def test_plugin_estimates_are_exact_for_a_calibrated_model(tqp):
    """1 - max m is E_P[argmax loss of m] when P = m (a calibrated model): the plug-in's premise."""
    _, q, p = tqp
    lq_hat, lp_hat = optimal.plugin_losses(q, p)
    assert torch.equal(optimal.expected_loss(q, q, "argmax"), lq_hat)
    assert torch.equal(optimal.expected_loss(p, p, "argmax"), lp_hat)


# ---- Lemma 5: regret of a plug-in ---------------------------------------------------------------------------


@given(triples(), finite_alphas, losses, st.floats(-0.5, 0.5), st.floats(-0.5, 0.5))
def test_lemma5_regret_bound_with_perturbed_estimates(tqp, alpha, loss, e_q, e_p):
    truth, q, p = tqp
    lq, lp = optimal.expected_loss(truth, q, loss), optimal.expected_loss(truth, p, loss)
    d = tv(p, q)
    bound = abs(e_q) + abs(e_p) + TOL
    # speculative objective
    r_hat = ((lq + e_q) > (lp + e_p) + alpha * d).to(DTYPE)
    r_star = optimal.optimal_spec_defer(truth, q, p, alpha, loss).to(DTYPE)
    regret = optimal.spec_objective(r_hat, lq, lp, alpha, d) - optimal.spec_objective(r_star, lq, lp, alpha, d)
    assert torch.all(regret >= -TOL) and torch.all(regret <= bound)
    # sequential objective
    r_hat = ((lq + e_q) > (lp + e_p) + alpha).to(DTYPE)
    r_star = optimal.optimal_seq_defer(truth, q, p, alpha, loss).to(DTYPE)
    regret = optimal.seq_objective(r_hat, lq, lp, alpha) - optimal.seq_objective(r_star, lq, lp, alpha)
    assert torch.all(regret >= -TOL) and torch.all(regret <= bound)


@given(triples(), finite_alphas)
def test_lemma5_for_the_max_probability_plugins(tqp, alpha):
    """OPT's and Diff's regret is at most the errors of 1 - max m as estimates of 1 - P(argmax m)."""
    truth, q, p = tqp
    lq, lp = optimal.expected_loss(truth, q), optimal.expected_loss(truth, p)
    lq_hat, lp_hat = optimal.plugin_losses(q, p)
    bound = (lq_hat - lq).abs() + (lp_hat - lp).abs() + 1e-9
    d = tv(p, q)
    opt = rules.get("opt", alpha=alpha)(q, p).defer
    star = optimal.optimal_spec_defer(truth, q, p, alpha).to(DTYPE)
    regret = optimal.spec_objective(opt, lq, lp, alpha, d) - optimal.spec_objective(star, lq, lp, alpha, d)
    assert torch.all(regret <= bound)
    diff = rules.get("diff", alpha=alpha)(q, p).defer
    star = optimal.optimal_seq_defer(truth, q, p, alpha).to(DTYPE)
    regret = optimal.seq_objective(diff, lq, lp, alpha) - optimal.seq_objective(star, lq, lp, alpha)
    assert torch.all(regret <= bound)


# ---- token-level optimum ------------------------------------------------------------------------------------


def _token_value(truth, q, p, r, alpha):
    """E_{v~pi}[1(v != y)] + alpha * rejection for one set r, written out token by token."""
    vocab = len(r)
    eta = sum(float(q[u]) * r[u] for u in range(vocab))
    pi = [float(q[v]) * (1 - r[v]) + float(p[v]) * eta for v in range(vocab)]
    loss = 1 - sum(float(truth[v]) * pi[v] for v in range(vocab))
    rejection = sum(max(0.0, float(q[v]) - pi[v]) for v in range(vocab))
    return loss + alpha * rejection


@given(triples(max_rows=2), st.floats(0.0, 2.0), st.lists(st.floats(-1.0, 1.5), min_size=3, max_size=3))
def test_token_optimum_is_the_min_over_all_sets_and_beats_every_plugin(tqp, alpha, rule_alphas):
    truth, q, p = tqp
    best = optimal.optimal_token_defer(truth, q, p, alpha)
    assert best.defer.shape == q.shape and best.defer.dtype == torch.bool
    torch.testing.assert_close(optimal.token_objective(truth, q, p, best.defer, alpha), best.value, atol=TOL, rtol=0)
    vocab = q.shape[-1]
    for i in range(q.shape[0]):
        brute = min(
            _token_value(truth[i], q[i], p[i], r, alpha) for r in itertools.product((0, 1), repeat=vocab)
        )
        assert float(best.value[i]) == pytest.approx(brute, abs=1e-12)
    # never worse than any plug-in token rule's set, the oracle's set, or the all / none sets
    candidates = [optimal.oracle_token_defer(truth, a) for a in rule_alphas]
    for name in ("token_v1", "token_v2", "token_v3"):
        candidates += [rules.get(name, alpha=a)(q, p).defer for a in rule_alphas]
    candidates += [torch.ones_like(q), torch.zeros_like(q)]
    for r in candidates:
        assert torch.all(best.value <= optimal.token_objective(truth, q, p, r, alpha) + TOL)
    # the all / none sets are the whole-position cascade r = 1 / r = 0 under the sampled loss (Eq. 8)
    lq, lp = optimal.expected_loss(truth, q, "sampled"), optimal.expected_loss(truth, p, "sampled")
    torch.testing.assert_close(
        optimal.token_objective(truth, q, p, torch.ones_like(q), alpha),
        optimal.spec_objective(torch.ones_like(lq), lq, lp, alpha, tv(p, q)), atol=TOL, rtol=0,
    )
    none = optimal.token_objective(truth, q, p, torch.zeros_like(q), alpha)
    torch.testing.assert_close(none, lq, atol=TOL, rtol=0)


def test_oracle_token_rule_under_the_objective_hand_cases():
    truth = torch.tensor([0.5, 0.3, 0.2], dtype=DTYPE)
    q = torch.tensor([0.2, 0.4, 0.4], dtype=DTYPE)
    # oracle at alpha = 0.1: defer v iff P(v) < 0.5 - 0.1 = 0.4 -> {1, 2}
    oracle = optimal.oracle_token_defer(truth, 0.1)
    assert oracle.tolist() == [False, True, True]

    # (a) a good target p = [3/5, 1/5, 1/5]: r = (0,1,1): eta = 4/5,
    #     pi = [1/5 + 12/25, 4/25, 4/25] = [17/25, 4/25, 4/25];
    #     loss = 1 - (17/50 + 6/125 + 4/125) = 29/50; rejection = 2 (2/5 - 4/25) = 12/25;
    #     value = 29/50 + 12/250 = 157/250, the minimum over the 8 sets (next best: all-defer, 16/25).
    p = torch.tensor([0.6, 0.2, 0.2], dtype=DTYPE)
    best = optimal.optimal_token_defer(truth, q, p, 0.1)
    assert best.defer.tolist() == oracle.tolist()
    assert float(best.value) == pytest.approx(157 / 250, abs=TOL)

    # (b) a misleading target p = [1/10, 1/10, 4/5]: the oracle's set (0,1,1) gives eta = 4/5,
    #     pi = [1/5 + 2/25, 2/25, 16/25] = [7/25, 2/25, 16/25], loss = 1 - (7/50 + 3/125 + 16/125) = 177/250,
    #     rejection = 2/5 - 2/25 = 8/25 -> value 177/250 + 8/250 = 37/50 = 0.74;
    #     the optimum defers only token 2: eta = 2/5, pi = [6/25, 11/25, 8/25], loss = 171/250,
    #     rejection = 2/5 - 8/25 = 2/25 -> value 171/250 + 2/250 = 173/250 = 0.692 < 0.74.
    p = torch.tensor([0.1, 0.1, 0.8], dtype=DTYPE)
    value_oracle = float(optimal.token_objective(truth, q, p, oracle, 0.1))
    best = optimal.optimal_token_defer(truth, q, p, 0.1)
    assert value_oracle == pytest.approx(0.74, abs=TOL)
    assert best.defer.tolist() == [False, False, True]
    assert float(best.value) == pytest.approx(0.692, abs=TOL)


def test_token_objective_batches_sets():
    truth = torch.tensor([0.5, 0.3, 0.2], dtype=DTYPE)
    q = torch.tensor([0.2, 0.4, 0.4], dtype=DTYPE)
    p = torch.tensor([0.1, 0.1, 0.8], dtype=DTYPE)
    sets = torch.tensor(list(itertools.product((0, 1), repeat=3)), dtype=torch.bool)  # [8, 3]
    many = optimal.token_objective(truth, q, p, sets, 0.1)
    one_by_one = torch.stack([optimal.token_objective(truth, q, p, s, 0.1) for s in sets])
    torch.testing.assert_close(many, one_by_one, atol=TOL, rtol=0)
