"""Hand-worked cases for every rule, computed BY HAND from the formulas of THEORY.md (arithmetic in comments).

Each case gives q and p as exact fractions (V = 2 or 3), the expected defer decision, the expected pi and the
expected rejection probability of a draft v ~ q. They are compared in float64 with tolerance 1e-12.
Cases marked "tie" sit exactly on a threshold: strict < defers, equality keeps the draft. Cases with T != 1
give the UNtempered pair (which the rule reads); pi mixes the tempered pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction as F

import pytest
import torch
from strategies import PluginCascadeHead, PluginTokenHead

from specref import genspec, rules
from specref.dists import temper

TOL = 1e-12


@dataclass(frozen=True)
class Case:
    rule: str
    options: dict
    q: list  # untempered draft distribution
    p: list  # untempered target distribution
    defer: list | F  # whole-position r, or r(v) per token
    pi: list
    rejection: F
    temperature: float = 1.0
    accept: list | None = None  # acceptance min(1, pi/q) (or lossy's), where worth spelling out
    residual: list | None = None
    notes: str = field(default="", compare=False)


h = F(1, 2)
CASES = {
    # ---- trivial rules ---------------------------------------------------------------------------------
    # target: pi = p = [1/4, 3/4]; rejection = TV(p, q) = max(0, 1/2 - 1/4) = 1/4.
    "target": Case("target", {}, [h, h], [F(1, 4), F(3, 4)], 1, [F(1, 4), F(3, 4)], F(1, 4)),
    # draft: pi = q, nothing is ever rejected.
    "draft": Case("draft", {}, [h, h], [F(1, 4), F(3, 4)], 0, [h, h], F(0)),
    # specdecode, q = [1/2, 1/3, 1/6], p = [1/6, 1/3, 1/2]:
    #   accept = min(1, p/q) = [1/3, 1, 1]; rejection = sum max(0, q - p) = 1/2 - 1/6 = 1/3;
    #   residual = norm(max(0, p - q)) = norm([0, 0, 1/3]) = [0, 0, 1]; pi = p.
    "specdecode": Case(
        "specdecode", {}, [h, F(1, 3), F(1, 6)], [F(1, 6), F(1, 3), h], 1, [F(1, 6), F(1, 3), h], F(1, 3),
        accept=[F(1, 3), 1, 1], residual=[0, 0, 1],
    ),
    # ---- lossy (Lemma 2) -------------------------------------------------------------------------------
    # alpha = 1/4, beta = 1, q = [1/2, 1/4, 1/4], p = [1/4, 1/4, 1/2]:
    #   p / (1 - alpha) = 4p/3 = [1/3, 1/3, 2/3]; kept = min(q, 4p/3) = [1/3, 1/4, 1/4], sum 5/6;
    #   accept = kept / q = [2/3, 1, 1]; defer = 1 - accept = [1/3, 0, 0]; rejection = 1 - 5/6 = 1/6;
    #   residual = norm(max(0, p - q)) = norm([0, 0, 1/4]) = [0, 0, 1];
    #   pi = kept + 1/6 residual = [1/3, 1/4, 1/4 + 1/6] = [1/3, 1/4, 5/12].
    "lossy_beta1": Case(
        "lossy", {"alpha": 0.25, "beta": 1.0}, [h, F(1, 4), F(1, 4)], [F(1, 4), F(1, 4), h],
        [F(1, 3), 0, 0], [F(1, 3), F(1, 4), F(5, 12)], F(1, 6), accept=[F(2, 3), 1, 1], residual=[0, 0, 1],
    ),
    # same, beta = 1/2: residual = norm(max(0, p - q/2)) = norm([0, 1/8, 3/8]) = [0, 1/4, 3/4];
    #   pi = [1/3, 1/4 + 1/6 * 1/4, 1/4 + 1/6 * 3/4] = [1/3, 7/24, 3/8]  (sum 8/24 + 7/24 + 9/24 = 1).
    "lossy_beta_half": Case(
        "lossy", {"alpha": 0.25, "beta": 0.5}, [h, F(1, 4), F(1, 4)], [F(1, 4), F(1, 4), h],
        [F(1, 3), 0, 0], [F(1, 3), F(7, 24), F(3, 8)], F(1, 6), residual=[0, F(1, 4), F(3, 4)],
    ),
    # alpha = 0, beta = 1 is SpecDecode: q = [3/4, 1/4], p = [1/4, 3/4]: accept = [1/3, 1], pi = p, rej 1/2.
    "lossy_is_specdecode": Case(
        "lossy", {"alpha": 0.0, "beta": 1.0}, [F(3, 4), F(1, 4)], [F(1, 4), F(3, 4)], [F(2, 3), 0],
        [F(1, 4), F(3, 4)], h, accept=[F(1, 3), 1],
    ),
    # ---- ensemble --------------------------------------------------------------------------------------
    # weight 1/4, q = [1/2, 1/2], p = [1, 0]: pi = 1/4 p + 3/4 q = [1/4 + 3/8, 3/8] = [5/8, 3/8];
    #   rejection = w TV(p, q) = 1/4 * 1/2 = 1/8  (= max(0, 1/2 - 3/8)).
    "ensemble": Case("ensemble", {"weight": 0.25}, [h, h], [1, 0], F(1, 4), [F(5, 8), F(3, 8)], F(1, 8)),
    # ---- Chow: defer iff max q < 1 - alpha ----------------------------------------------------------------
    # tie: q = [3/4, 1/4], alpha = 1/4: 3/4 < 3/4 is false -> keep: pi = q, no rejection.
    "chow_tie_keeps": Case("chow", {"alpha": 0.25}, [F(3, 4), F(1, 4)], [F(1, 4), F(3, 4)], 0,
                           [F(3, 4), F(1, 4)], F(0)),
    # q = [5/8, 3/8], alpha = 1/4: 5/8 < 3/4 -> defer: pi = p = [1/4, 3/4]; rejection TV = 5/8 - 1/4 = 3/8.
    "chow_defers": Case("chow", {"alpha": 0.25}, [F(5, 8), F(3, 8)], [F(1, 4), F(3, 4)], 1,
                        [F(1, 4), F(3, 4)], F(3, 8)),
    # ---- Diff: defer iff max q < max p - alpha ----------------------------------------------------------
    # tie: q = [1/2, 1/2], p = [3/4, 1/4], alpha = 1/4: 1/2 < 3/4 - 1/4 = 1/2 false -> keep.
    "diff_tie_keeps": Case("diff", {"alpha": 0.25}, [h, h], [F(3, 4), F(1, 4)], 0, [h, h], F(0)),
    # alpha = 1/8: 1/2 < 5/8 -> defer: pi = p; rejection = TV = 1/2 - 1/4 = 1/4.
    "diff_defers": Case("diff", {"alpha": 0.125}, [h, h], [F(3, 4), F(1, 4)], 1, [F(3, 4), F(1, 4)], F(1, 4)),
    # ---- OPT: defer iff max q < max p - alpha TV(p, q) ----------------------------------------------------
    # tie: q = [1/2, 1/2], p = [3/4, 1/4]: TV = 1/4; alpha = 1: 1/2 < 3/4 - 1/4 = 1/2 false -> keep.
    "opt_tie_keeps": Case("opt", {"alpha": 1.0}, [h, h], [F(3, 4), F(1, 4)], 0, [h, h], F(0)),
    # alpha = 1/2: 1/2 < 3/4 - 1/8 = 5/8 -> defer: pi = p, rejection = TV = 1/4.
    "opt_defers": Case("opt", {"alpha": 0.5}, [h, h], [F(3, 4), F(1, 4)], 1, [F(3, 4), F(1, 4)], F(1, 4)),
    # V = 3: q = [1/2, 1/4, 1/4], p = [1/4, 5/8, 1/8]: TV = max(0, 5/8 - 1/4) = 3/8.
    #   alpha = 1/2: 1/2 < 5/8 - 3/16 = 7/16 false -> keep.  alpha = 1/4: 1/2 < 5/8 - 3/32 = 17/32 -> defer.
    "opt_v3_keeps": Case("opt", {"alpha": 0.5}, [h, F(1, 4), F(1, 4)], [F(1, 4), F(5, 8), F(1, 8)], 0,
                         [h, F(1, 4), F(1, 4)], F(0)),
    "opt_v3_defers": Case("opt", {"alpha": 0.25}, [h, F(1, 4), F(1, 4)], [F(1, 4), F(5, 8), F(1, 8)], 1,
                          [F(1, 4), F(5, 8), F(1, 8)], F(3, 8)),
    # ---- token rules: pi(v) = q(v)(1 - r(v)) + p(v) eta, eta = sum_u q(u) r(u) -------------------------------
    # Shared pair: q = [1/2, 1/4, 1/4], p = [1/4, 1/2, 1/4]; max p = 1/2.
    # TokenV1 alpha = 1/4: defer v iff q(v) < 1/2 - 1/4 = 1/4 -> none (q = 1/4 ties keep): pi = q.
    "token_v1_tie_keeps": Case("token_v1", {"alpha": 0.25}, [h, F(1, 4), F(1, 4)], [F(1, 4), h, F(1, 4)], [0, 0, 0],
                               [h, F(1, 4), F(1, 4)], F(0)),
    # TokenV1 alpha = 1/8: threshold 3/8: defer {1, 2}; eta = 1/2;
    #   pi = [1/2 + 1/4 * 1/2, 0 + 1/2 * 1/2, 0 + 1/4 * 1/2] = [5/8, 1/4, 1/8]; rejection = 1/4 - 1/8 = 1/8.
    "token_v1_defers": Case("token_v1", {"alpha": 0.125}, [h, F(1, 4), F(1, 4)], [F(1, 4), h, F(1, 4)], [0, 1, 1],
                            [F(5, 8), F(1, 4), F(1, 8)], F(1, 8)),
    # TokenV2 alpha = 1/4: defer v iff p(v) < 1/2 - 1/4 = 1/4 -> none (ties keep): pi = q.
    "token_v2_tie_keeps": Case("token_v2", {"alpha": 0.25}, [h, F(1, 4), F(1, 4)], [F(1, 4), h, F(1, 4)], [0, 0, 0],
                               [h, F(1, 4), F(1, 4)], F(0)),
    # TokenV2 alpha = 1/8: threshold 3/8: defer {0, 2}; eta = 1/2 + 1/4 = 3/4;
    #   pi = [1/4 * 3/4, 1/4 + 1/2 * 3/4, 1/4 * 3/4] = [3/16, 5/8, 3/16];
    #   rejection = (1/2 - 3/16) + (1/4 - 3/16) = 5/16 + 1/16 = 3/8.
    "token_v2_defers": Case("token_v2", {"alpha": 0.125}, [h, F(1, 4), F(1, 4)], [F(1, 4), h, F(1, 4)], [1, 0, 1],
                            [F(3, 16), F(5, 8), F(3, 16)], F(3, 8)),
    # TokenV3 alpha = 1/2: defer v iff p(v) < (1 - 1/2) 1/2 = 1/4 -> none (ties keep): pi = q.
    "token_v3_tie_keeps": Case("token_v3", {"alpha": 0.5}, [h, F(1, 4), F(1, 4)], [F(1, 4), h, F(1, 4)], [0, 0, 0],
                               [h, F(1, 4), F(1, 4)], F(0)),
    # TokenV3 alpha = 1/4: threshold 3/4 * 1/2 = 3/8: defer {0, 2}: same as TokenV2 above.
    "token_v3_defers": Case("token_v3", {"alpha": 0.25}, [h, F(1, 4), F(1, 4)], [F(1, 4), h, F(1, 4)], [1, 0, 1],
                            [F(3, 16), F(5, 8), F(3, 16)], F(3, 8)),
    # TokenV3 alpha = 0 with a tie for p's argmax is NOT SpecDecode: q = [1/2, 1/5, 3/10], p = [2/5, 2/5, 1/5]:
    #   defer v iff p(v) < 2/5 -> {2}; eta = 3/10; pi = [1/2 + 2/5 * 3/10, 1/5 + 2/5 * 3/10, 1/5 * 3/10]
    #   = [31/50, 16/50, 3/50]; rejection = 3/10 - 3/50 = 12/50.
    "token_v3_alpha0_ties": Case("token_v3", {"alpha": 0.0}, [h, F(1, 5), F(3, 10)], [F(2, 5), F(2, 5), F(1, 5)],
                                 [0, 0, 1], [F(31, 50), F(16, 50), F(3, 50)], F(12, 50)),
    # ---- learned rules with plug-in heads ----------------------------------------------------------------
    # cascade head (1 - max q, 1 - max p): defer iff 1/2 > 1/4 + alpha TV; same numbers as opt_defers / opt_tie.
    "learned_cascade_defers": Case("learned_cascade", {"alpha": 0.5}, [h, h], [F(3, 4), F(1, 4)], 1,
                                   [F(3, 4), F(1, 4)], F(1, 4)),
    "learned_cascade_tie_keeps": Case("learned_cascade", {"alpha": 1.0}, [h, h], [F(3, 4), F(1, 4)], 0, [h, h], F(0)),
    # token head scoring p(v): same numbers as token_v2_defers.
    "learned_token_defers": Case("learned_token", {"alpha": 0.125}, [h, F(1, 4), F(1, 4)], [F(1, 4), h, F(1, 4)],
                                 [1, 0, 1], [F(3, 16), F(5, 8), F(3, 16)], F(3, 8)),
    # ---- temperature: rules read the untempered pair, pi mixes the tempered pair ------------------------------
    # T = 0: q_raw = [1/2, 1/3, 1/6] -> q_T = [1, 0, 0]; p_raw = [1/6, 1/3, 1/2] -> p_T = [0, 0, 1].
    # Chow alpha = 0.4: max q_raw = 1/2 < 0.6 -> defer: pi = p_T = [0, 0, 1]; rejection TV(p_T, q_T) = 1.
    #   (Read on q_T, max = 1 would keep: the decision differs.)
    "chow_T0": Case("chow", {"alpha": 0.4}, [h, F(1, 3), F(1, 6)], [F(1, 6), F(1, 3), h], 1, [0, 0, 1], F(1),
                    temperature=0.0),
    # OPT alpha = 1/2 at T = 0: TV(p_T, q_T) = 1: 1/2 < 1/2 - 1/2 = 0 false -> keep: pi = q_T = [1, 0, 0].
    "opt_T0": Case("opt", {"alpha": 0.5}, [h, F(1, 3), F(1, 6)], [F(1, 6), F(1, 3), h], 0, [1, 0, 0], F(0),
                   temperature=0.0),
    # Diff alpha = -1/4 at T = 0: 1/2 < 1/2 + 1/4 -> defer: pi = [0, 0, 1].
    "diff_T0": Case("diff", {"alpha": -0.25}, [h, F(1, 3), F(1, 6)], [F(1, 6), F(1, 3), h], 1, [0, 0, 1], F(1),
                    temperature=0.0),
    # TokenV3 alpha = 1/2 at T = 0: threshold 1/2 * 1/2 = 1/4 on p_raw: defer {0} (1/6 < 1/4);
    #   eta = q_T(0) = 1; pi = q_T (1 - r) + p_T = [0, 0, 0] + [0, 0, 1] = [0, 0, 1].
    "token_v3_T0": Case("token_v3", {"alpha": 0.5}, [h, F(1, 3), F(1, 6)], [F(1, 6), F(1, 3), h], [1, 0, 0],
                        [0, 0, 1], F(1), temperature=0.0),
    # TokenV1 alpha = 0 at T = 0: defer v iff q_raw(v) < max p_raw = 1/2 -> {1, 2} (q(0) = 1/2 ties keep);
    #   q_T = [1, 0, 0] puts no mass on {1, 2}: eta = 0, pi = q_T = [1, 0, 0].
    "token_v1_T0": Case("token_v1", {"alpha": 0.0}, [h, F(1, 3), F(1, 6)], [F(1, 6), F(1, 3), h], [0, 1, 1],
                        [1, 0, 0], F(0), temperature=0.0),
    # T = 1/2: q_raw = [2/3, 1/3] -> squares [4/9, 1/9] / (5/9) = [4/5, 1/5];
    #   p_raw = [1/3, 2/3] -> [1/5, 4/5]. Chow alpha = 1/4: max q_raw = 2/3 < 3/4 -> defer (read on q_T:
    #   4/5 >= 3/4 would keep). pi = p_T = [1/5, 4/5]; rejection TV(p_T, q_T) = 3/5.
    "chow_T_half": Case("chow", {"alpha": 0.25}, [F(2, 3), F(1, 3)], [F(1, 3), F(2, 3)], 1, [F(1, 5), F(4, 5)],
                        F(3, 5), temperature=0.5),
    # Ensemble weight 1/2 at T = 1/2 on the same pair: pi = (q_T + p_T)/2 = [1/2, 1/2]; rejection 1/2 * 3/5.
    "ensemble_T_half": Case("ensemble", {"weight": 0.5}, [F(2, 3), F(1, 3)], [F(1, 3), F(2, 3)], F(1, 2), [h, h],
                            F(3, 10), temperature=0.5),
}


def _build(case: Case) -> rules.Rule:
    if case.rule == "learned_cascade":
        return rules.get("learned", alpha=case.options["alpha"], head=PluginCascadeHead())
    if case.rule == "learned_token":
        return rules.get("learned", alpha=case.options["alpha"], head=PluginTokenHead())
    if case.rule in ("target", "draft", "specdecode"):
        return rules.get(case.rule)
    if case.rule == "ensemble":
        return rules.get("ensemble", **case.options)
    return rules.get(case.rule, **case.options)


def _t(values) -> torch.Tensor:
    return torch.tensor([float(F(v)) for v in values], dtype=torch.float64)


def test_every_rule_has_a_hand_worked_case():
    covered = {c.rule for c in CASES.values()}
    assert covered >= {"target", "draft", "specdecode", "lossy", "ensemble", "chow", "diff", "opt",
                       "token_v1", "token_v2", "token_v3", "learned_cascade", "learned_token"}
    assert {c.temperature for c in CASES.values()} >= {0.0, 0.5, 1.0}


@pytest.mark.parametrize("name", list(CASES))
def test_hand_worked_case(name):
    case = CASES[name]
    # the hand-written fractions are distributions (a typo guard on the table itself)
    for dist in (case.q, case.p, case.pi):
        assert sum(F(v) for v in dist) == 1
    q_raw, p_raw = _t(case.q), _t(case.p)
    q, p = temper(q_raw, case.temperature), temper(p_raw, case.temperature)
    out = _build(case)(q, p, q_rule=q_raw, p_rule=p_raw)
    defer = _t(case.defer) if isinstance(case.defer, list) else torch.tensor(float(case.defer), dtype=torch.float64)
    torch.testing.assert_close(out.defer, defer, atol=TOL, rtol=0)
    torch.testing.assert_close(out.pi, _t(case.pi), atol=TOL, rtol=0)
    assert abs(float(out.rejection_rate(q)) - float(case.rejection)) <= TOL
    if case.accept is not None:
        torch.testing.assert_close(out.accept, _t(case.accept), atol=TOL, rtol=0)
    if case.residual is not None:
        torch.testing.assert_close(out.residual, _t(case.residual), atol=TOL, rtol=0)
    # and GenSpecSample's closed form with the rule's accept / residual emits exactly that pi
    torch.testing.assert_close(genspec.emitted(q, out.accept, out.residual), _t(case.pi), atol=TOL, rtol=0)
