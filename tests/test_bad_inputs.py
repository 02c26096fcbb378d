"""Bad inputs get clear errors that say what is wrong."""

from __future__ import annotations

import math

import pytest
import torch
from strategies import PluginCascadeHead, PluginTokenHead

from specref import dists, exact, optimal, rules, stats_tests
from specref.toy import TableLM, sample_block_algorithm
from specref.verify import BlockUniforms, verify_block

D = torch.float64
Q = torch.tensor([0.5, 0.3, 0.2], dtype=D)
P = torch.tensor([0.2, 0.2, 0.6], dtype=D)
NAN, INF = math.nan, math.inf


# ---- distributions --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.tensor([0.5, 0.6], dtype=D), "does not sum to 1"),
        (torch.tensor([[0.5, 0.5], [0.2, 0.2]], dtype=D), r"does not sum to 1 .*worst row sums to 0\.4"),
        (torch.tensor([1.5, -0.5], dtype=D), "negative entry"),
        (torch.tensor([NAN, 1.0], dtype=D), "NaN or inf"),
        (torch.tensor([INF, 0.0], dtype=D), "NaN or inf"),
        (torch.tensor([2.0, -1.0], dtype=D), "negative"),
        (torch.tensor(1.0, dtype=D), "non-empty last .vocabulary. dimension"),
        (torch.tensor([1.0, 2.0, 3.0], dtype=D).log(), "pass probabilities, not logits"),
    ],
)
def test_non_distributions(x, match):
    with pytest.raises(ValueError, match=match):
        dists.check_distribution(x, "probs")


def test_integer_and_non_tensor_inputs():
    with pytest.raises(TypeError, match="floating-point tensor"):
        dists.check_distribution(torch.tensor([1, 0]))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        dists.check_distribution([0.5, 0.5])


def test_bad_logits():
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        dists.check_logits(torch.tensor([NAN, 1.0]))
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        dists.check_logits(torch.tensor([INF, 1.0]))
    with pytest.raises(ValueError, match="all -inf"):
        dists.check_logits(torch.tensor([[0.0, 1.0], [-INF, -INF]]))


@pytest.mark.parametrize("t", [-1.0, NAN, INF, "hot", None])
def test_bad_temperature(t):
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        dists.temper(Q, t)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        dists.probs_from_logits(Q.log(), temperature=t)


@pytest.mark.parametrize("k", [0, -2, 1.5, "3", True])
def test_bad_top_k(k):
    with pytest.raises(ValueError, match="top_k must be a positive integer or None"):
        dists.top_k_filter(Q, k)


@pytest.mark.parametrize("top_p", [0.0, -0.1, 1.5, NAN, "x"])
def test_bad_top_p(top_p):
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        dists.top_p_filter(Q, top_p)


# ---- rules ------------------------------------------------------------------------------------------------


def test_unknown_rule_names():
    for name in ("specdecoding", "Token_V3", "", 3):
        with pytest.raises(ValueError, match="unknown rule .*choose one of: target, draft, specdecode"):
            rules.get(name)


@pytest.mark.parametrize("name", ["chow", "diff", "opt", "token_v1", "token_v2", "token_v3", "lossy", "ensemble"])
def test_alpha_nan_and_non_numbers(name):
    with pytest.raises(ValueError, match=f"alpha for rule '{name}' is NaN"):
        rules.get(name, alpha=NAN)
    with pytest.raises(ValueError, match=f"alpha for rule '{name}' must be a number"):
        rules.get(name, alpha="lenient")


def test_alpha_nan_for_learned():
    with pytest.raises(ValueError, match="alpha for rule 'learned' is NaN"):
        rules.get("learned", alpha=NAN, head=PluginCascadeHead())


@pytest.mark.parametrize("alpha", [1.0, 1.5, -0.1, INF, -INF])
def test_lossy_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"lossy alpha must be in \[0, 1\)"):
        rules.get("lossy", alpha=alpha)


@pytest.mark.parametrize("beta", [-0.1, 1.01, NAN, INF, "one"])
def test_lossy_beta_outside_unit_interval(beta):
    with pytest.raises(ValueError, match=r"lossy beta must be in \[0, 1\]"):
        rules.get("lossy", alpha=0.2, beta=beta)


@pytest.mark.parametrize("weight", [-0.1, 1.5, NAN, INF, "half"])
def test_ensemble_weight_outside_unit_interval(weight):
    with pytest.raises(ValueError, match=r"ensemble weight must be in \[0, 1\]"):
        rules.get("ensemble", weight=weight)


def test_ensemble_alpha_outside_range_and_ambiguous_arguments():
    with pytest.raises(ValueError, match=r"ensemble weight must be in \[0, 1\], got -1.0"):
        rules.get("ensemble", alpha=2.0)
    with pytest.raises(ValueError, match="exactly one of weight"):
        rules.get("ensemble")
    with pytest.raises(ValueError, match="exactly one of weight"):
        rules.get("ensemble", alpha=0.2, weight=0.8)


def test_rule_options_and_registry():
    with pytest.raises(ValueError, match="rule 'specdecode' takes no alpha or options"):
        rules.get("specdecode", alpha=0.5)
    with pytest.raises(ValueError, match="rule 'draft' takes no alpha or options"):
        rules.get("draft", temperature=0.5)
    with pytest.raises(ValueError, match="bad options for rule 'chow'.*bogus"):
        rules.get("chow", alpha=0.1, bogus=1)
    with pytest.raises(ValueError, match="bad options for rule 'learned'.*head"):
        rules.get("learned", alpha=0.1)
    with pytest.raises(ValueError, match="a rule named 'token_v3' is already registered"):
        rules.register("token_v3", rules.get)


def test_bad_learned_heads():
    class NoKind:
        def estimate(self, *a, **k):
            return None

    with pytest.raises(ValueError, match="head with kind 'cascade', 'token' or 'mixture'"):
        rules.get("learned", head=NoKind())

    class WrongShapeCascade(PluginCascadeHead):
        def estimate(self, q_rule, p_rule, q, p, features=None):
            return torch.zeros(q.shape[:-1] + (3,), dtype=q.dtype)

    class WrongShapeToken(PluginTokenHead):
        def estimate(self, q_rule, p_rule, q, p, features=None):
            return torch.zeros(q.shape[:-1] + (1,), dtype=q.dtype)

    with pytest.raises(ValueError, match=r"cascade head returned shape \(3,\), expected \(2,\)"):
        rules.get("learned", head=WrongShapeCascade(), alpha=0.0)(Q, P)
    with pytest.raises(ValueError, match=r"token head returned shape \(1,\), expected \(3,\)"):
        rules.get("learned", head=WrongShapeToken(), alpha=0.0)(Q, P)


@pytest.mark.parametrize("name", ["specdecode", "token_v3", "opt", "lossy"])
def test_rule_inputs(name):
    rule = rules.get(name) if name == "specdecode" else rules.get(name, alpha=0.3)
    with pytest.raises(ValueError, match="different vocabulary sizes .3 vs 4.; draft and target must share"):
        rule(Q, torch.full((4,), 0.25, dtype=D))
    with pytest.raises(ValueError, match="different shapes"):
        rule(Q.expand(2, 3), P)
    with pytest.raises(ValueError, match="q_rule and q have different"):
        rule(Q, P, q_rule=torch.full((4,), 0.25, dtype=D))
    with pytest.raises(ValueError, match="p does not sum to 1"):
        rule(Q, P * 2)
    with pytest.raises(ValueError, match="q has a negative entry"):
        rule(torch.tensor([1.2, -0.1, -0.1], dtype=D), P)
    with pytest.raises(ValueError, match="p_rule contains NaN"):
        rule(Q, P, p_rule=torch.tensor([NAN, 0.5, 0.5], dtype=D))
    with pytest.raises(TypeError, match="q must be a floating-point tensor"):
        rule(torch.tensor([1, 0, 0]), P)


# ---- verifier -------------------------------------------------------------------------------------------


def _block(b=2, g=2, v=3):
    q = torch.full((b, g + 1, v), 1.0 / v, dtype=D)
    return torch.zeros((b, g), dtype=torch.long), q, q.clone()


def test_verifier_shapes_and_ids():
    drafts, q, p = _block()
    rule = rules.get("specdecode")
    with pytest.raises(ValueError, match=r"drafts must be \[B, gamma\]"):
        verify_block(drafts[0], q, p, rule)
    with pytest.raises(TypeError, match="drafts must be an integer tensor"):
        verify_block(drafts.double(), q, p, rule)
    with pytest.raises(ValueError, match=r"gamma \(drafts.shape\[1\]\) must be >= 1"):
        verify_block(drafts[:, :0], q[:, :1], p[:, :1], rule)
    with pytest.raises(ValueError, match=r"p must be \[B, gamma \+ 1, V\] = \[2, 3, V\]"):
        verify_block(drafts, q, p[:, :2], rule)
    with pytest.raises(ValueError, match=r"q must be \[B, gamma\(\+1\), V\] matching p"):
        verify_block(drafts, q[..., :2], p, rule)
    with pytest.raises(ValueError, match=r"q must be \[B, gamma\(\+1\), V\]"):
        verify_block(drafts, q[:1], p, rule)
    with pytest.raises(ValueError, match="q_rule and p_rule must have the shapes of q and p"):
        verify_block(drafts, q, p, rule, q_rule=q[:, :2])
    with pytest.raises(ValueError, match=r"draft token ids must lie in \[0, 3\)"):
        verify_block(drafts + 3, q, p, rule)
    with pytest.raises(ValueError, match=r"draft token ids must lie in \[0, 3\)"):
        verify_block(drafts - 1, q, p, rule)
    with pytest.raises(ValueError, match="bonus must be one of"):
        verify_block(drafts, q, p, rule, bonus="draft")
    with pytest.raises(ValueError, match="bonus='pi' needs the draft distribution at position gamma"):
        verify_block(drafts, q[:, :2], p, rule)
    with pytest.raises(ValueError, match="p does not sum to 1"):
        verify_block(drafts, q, p * 2, rule)


def test_verifier_uniforms_shapes():
    drafts, q, p = _block()
    rule = rules.get("specdecode")
    good_acc, good_smp = torch.rand(2, 2, dtype=D), torch.rand(2, 3, dtype=D)
    with pytest.raises(ValueError, match=r"uniforms must be accept \[2, 2\] and sample \[2, 3\]"):
        verify_block(drafts, q, p, rule, uniforms=BlockUniforms(good_acc[:, :1], good_smp))
    with pytest.raises(ValueError, match=r"uniforms must be accept \[2, 2\] and sample \[2, 3\]"):
        verify_block(drafts, q, p, rule, uniforms=BlockUniforms(good_acc, good_smp[:1]))


# ---- exact enumeration, toy LMs, samplers -------------------------------------------------------------------


def test_exact_arguments():
    lm = TableLM(torch.tensor([[0.5, 0.5]], dtype=D), 2, 0)
    lm3 = TableLM(torch.tensor([[0.2, 0.3, 0.5]], dtype=D), 3, 0)
    sd = rules.get("specdecode")
    for gamma in (0, -1, 1.5):
        with pytest.raises(ValueError, match="gamma must be an integer >= 1"):
            exact.block_distribution(lm, lm, sd, gamma, 2)
        with pytest.raises(ValueError, match="gamma must be an integer >= 1"):
            exact.expected_target_calls(lm, lm, sd, gamma, 2)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        exact.chain_distribution(lm, lm, sd, 1, 0)
    with pytest.raises(ValueError, match="bonus must be 'pi' or 'target'"):
        exact.block_distribution(lm, lm, sd, 1, 2, bonus="draft")
    with pytest.raises(ValueError, match="draft and target vocabularies differ"):
        exact.block_distribution(lm, lm3, sd, 1, 2)
    with pytest.raises(ValueError, match=r"draft_lm\(\) does not sum to 1"):
        exact.block_distribution(lambda prefix: torch.tensor([0.5, 0.6], dtype=D), lm, sd, 1, 2)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        exact.lm_distribution(lm, 2, temperature=-1)


def test_toy_lm_and_sampler_arguments():
    with pytest.raises(ValueError, match=r"table must be \[7, 2\] for V=2, order=2"):
        TableLM(torch.full((3, 2), 0.5, dtype=D), 2, 2)
    with pytest.raises(ValueError, match="table does not sum to 1"):
        TableLM(torch.ones((3, 2), dtype=D), 2, 1)
    lm = TableLM(torch.full((3, 2), 0.5, dtype=D), 2, 1)
    with pytest.raises(ValueError, match="token 5 out of range for vocabulary 2"):
        lm((5,))
    gen = torch.Generator().manual_seed(0)
    for gamma, n, rows in ((0, 2, 10), (1, 0, 10), (1, 2, 0)):
        with pytest.raises(ValueError, match="gamma, n and num_samples must be >= 1"):
            sample_block_algorithm(lm, lm, rules.get("specdecode"), gamma, n, rows, gen)


def test_optimal_and_gof_arguments():
    with pytest.raises(ValueError, match="loss must be one of"):
        optimal.expected_loss(Q, P, "hinge")
    big = torch.full((20,), 0.05, dtype=D)
    with pytest.raises(ValueError, match=r"enumerating 2\*\*20 deferral sets is too large"):
        optimal.optimal_token_defer(big, big, big, 0.1)
    with pytest.raises(ValueError, match="no samples"):
        stats_tests.chi_square_gof([], {(0,): 1.0})
    with pytest.raises(ValueError, match="exact distribution sums to 0.5, not 1"):
        stats_tests.chi_square_gof([(0,)], {(0,): 0.5})
