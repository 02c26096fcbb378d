"""The batched block verifier (THEORY.md section 7) against a plain per-row reference loop and hand paths."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import DTYPE, rule_builds, verify_blocks

from specref import rules
from specref.dists import sample_categorical
from specref.verify import PAD, BlockUniforms, verify_block


def _reference(drafts, q, p, q_rule, p_rule, rule, uniforms, bonus):
    """One row at a time, one position at a time: GenSpecSample left to right, stop at the first rejection."""
    b, g = drafts.shape
    accepted, tokens = [], []
    for i in range(b):
        row = []
        for j in range(g + 1):
            out = rule(q[i, j], p[i, j], q_rule=q_rule[i, j], p_rule=p_rule[i, j])
            if j == g:  # every draft passed: bonus token
                dist = out.pi if bonus == "pi" else p[i, j]
                row.append(int(sample_categorical(dist, uniforms.sample[i, j])))
                break
            d = int(drafts[i, j])
            if float(uniforms.accept[i, j]) < float(out.accept[d]):
                row.append(d)
                continue
            row.append(int(sample_categorical(out.residual, uniforms.sample[i, j])))
            break
        accepted.append(len(row) - 1)
        tokens.append(row + [PAD] * (g + 1 - len(row)))
    return torch.tensor(accepted), torch.tensor(tokens)


@given(verify_blocks(), rule_builds(), st.sampled_from(["pi", "target"]))
def test_batched_verifier_equals_the_reference_loop(block, name_rule, bonus):
    drafts, q, p, q_rule, p_rule, u = block
    _, rule = name_rule
    res = verify_block(drafts, q, p, rule, q_rule=q_rule, p_rule=p_rule, bonus=bonus, uniforms=u)
    acc, toks = _reference(drafts, q, p, q_rule, p_rule, rule, u, bonus)
    assert torch.equal(res.accepted, acc)
    assert torch.equal(res.tokens, toks)
    assert torch.equal(res.num_emitted, acc + 1)
    out = rule(q, p, q_rule=q_rule, p_rule=p_rule)
    g = drafts.shape[1]
    torch.testing.assert_close(res.accept_prob, out.accept[:, :g].gather(-1, drafts.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(res.rejection_prob, out.rejection_rate(q))
    torch.testing.assert_close(res.pi, out.pi)
    if rule.token_level:
        assert res.defer.shape == q.shape
        torch.testing.assert_close(res.defer_drafted, out.defer[:, :g].gather(-1, drafts.unsqueeze(-1)).squeeze(-1))
    else:
        assert res.defer.shape == q.shape[:2]
        torch.testing.assert_close(res.defer_drafted, out.defer[:, :g])
    # structure: accepted drafts, then one residual/bonus token, then padding
    for i in range(drafts.shape[0]):
        k = int(res.accepted[i])
        assert res.tokens[i, :k].tolist() == drafts[i, :k].tolist()
        assert res.tokens[i, k] != PAD and torch.all(res.tokens[i, k + 1 :] == PAD)


@given(verify_blocks(), rule_builds())
def test_rows_are_independent_of_the_batch(block, name_rule):
    """A row's outcome depends only on its own inputs and uniforms: alone, or with rows permuted."""
    drafts, q, p, q_rule, p_rule, u = block
    _, rule = name_rule
    full = verify_block(drafts, q, p, rule, q_rule=q_rule, p_rule=p_rule, uniforms=u)
    perm = torch.arange(drafts.shape[0]).flip(0)
    shuffled = verify_block(
        drafts[perm], q[perm], p[perm], rule, q_rule=q_rule[perm], p_rule=p_rule[perm],
        uniforms=BlockUniforms(u.accept[perm], u.sample[perm]),
    )
    assert torch.equal(shuffled.tokens, full.tokens[perm])
    for i in range(drafts.shape[0]):
        s = slice(i, i + 1)
        alone = verify_block(
            drafts[s], q[s], p[s], rule, q_rule=q_rule[s], p_rule=p_rule[s],
            uniforms=BlockUniforms(u.accept[s], u.sample[s]),
        )
        assert torch.equal(alone.tokens[0], full.tokens[i])


def _hand_block():
    # gamma = 2, V = 3, one row, SpecDecode (pi = p).
    q = torch.tensor([[[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [1.0, 0.0, 0.0]]], dtype=DTYPE)
    p = torch.tensor([[[0.25, 0.25, 0.5], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]], dtype=DTYPE)
    drafts = torch.tensor([[1, 2]])
    return drafts, q, p


def test_hand_path_rejection_at_second_draft():
    drafts, q, p = _hand_block()
    # position 0: draft 1, a = min(1, p/q) = 0.25 / 0.5 = 0.5; u = 0.3 < 0.5 -> accept.
    # position 1: draft 2, a = 0 / 0.5 = 0 -> reject; residual norm(max(0, p - q)) = [1/2, 1/2, 0];
    #   u_sample[1] = 0.6 -> inverse CDF [0.5, 1.0, 1.0] -> token 1.  Emitted: [1, 1], accepted = 1.
    u = BlockUniforms(torch.tensor([[0.3, 0.0]], dtype=DTYPE), torch.tensor([[0.9, 0.6, 0.1]], dtype=DTYPE))
    res = verify_block(drafts, q, p, rules.get("specdecode"), uniforms=u)
    assert res.accepted.tolist() == [1]
    assert res.tokens.tolist() == [[1, 1, PAD]]
    assert res.accept_prob.tolist() == [[0.5, 0.0]]
    # rejection rates TV(p_j, q_j): [1/4 + 1/4, 1/4 + 1/4, 1] = [0.5, 0.5, 1.0]
    torch.testing.assert_close(res.rejection_prob, torch.tensor([[0.5, 0.5, 1.0]], dtype=DTYPE))


def test_hand_path_strict_threshold_and_bonus_modes():
    drafts, q, p = _hand_block()
    drafts = torch.tensor([[0, 0]])  # a = [0.25 / 0.5, 0.5 / 0.25 -> 1] = [0.5, 1]
    # u = a rejects (strict <): position 0 rejected, residual [0, 0, 1] -> token 2.
    u = BlockUniforms(torch.tensor([[0.5, 0.0]], dtype=DTYPE), torch.tensor([[0.2, 0.2, 0.2]], dtype=DTYPE))
    assert verify_block(drafts, q, p, rules.get("specdecode"), uniforms=u).tokens.tolist() == [[2, PAD, PAD]]
    # just below a accepts; a = 1 accepts even the largest uniform: bonus at position 2.
    u = BlockUniforms(
        torch.tensor([[0.5 - 2.0**-53, 1 - 2.0**-53]], dtype=DTYPE), torch.tensor([[0.2, 0.2, 0.2]], dtype=DTYPE)
    )
    # bonus from p[2] = [0, 1/2, 1/2] with u = 0.2 -> token 1. Draft-only rule: pi[2] = q[2] = [1, 0, 0] -> 0.
    assert verify_block(drafts, q, p, rules.get("specdecode"), uniforms=u).tokens.tolist() == [[0, 0, 1]]
    draft_rule = rules.get("draft")
    assert verify_block(drafts, q, p, draft_rule, uniforms=u, bonus="pi").tokens.tolist() == [[0, 0, 0]]
    assert verify_block(drafts, q, p, draft_rule, uniforms=u, bonus="target").tokens.tolist() == [[0, 0, 1]]
    # an explicit bonus distribution (used to build wrong variants in the statistical tests)
    explicit = torch.tensor([[0.0, 0.0, 1.0]], dtype=DTYPE)
    assert verify_block(drafts, q, p, draft_rule, uniforms=u, bonus=explicit).tokens.tolist() == [[0, 0, 2]]
    # bonus='target' accepts q without its position-gamma row
    short = verify_block(drafts, q[:, :2], p, draft_rule, uniforms=u, bonus="target")
    assert short.tokens.tolist() == [[0, 0, 1]]


def test_generator_randomness_is_reproducible():
    drafts, q, p = _hand_block()
    drafts, q, p = drafts.expand(64, -1), q.expand(64, -1, -1), p.expand(64, -1, -1)
    rule = rules.get("token_v3", alpha=0.2)
    a = verify_block(drafts, q, p, rule, generator=torch.Generator().manual_seed(5))
    b = verify_block(drafts, q, p, rule, generator=torch.Generator().manual_seed(5))
    c = verify_block(drafts, q, p, rule, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, c.tokens)


def test_float32_and_validate_false_agree():
    drafts, q, p = _hand_block()
    u = BlockUniforms(torch.tensor([[0.3, 0.0]]), torch.tensor([[0.9, 0.6, 0.1]]))
    rule = rules.get("opt", alpha=0.5)
    r32 = verify_block(drafts, q.float(), p.float(), rule, uniforms=u)
    r64 = verify_block(drafts, q, p, rule, uniforms=u, validate=False)
    assert torch.equal(r32.tokens, r64.tokens)
    assert r32.pi.dtype == torch.float32
