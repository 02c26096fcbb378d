"""Fused rule + verification (specref.decode.fused): bitwise the reference verifier, through the rules' own
methods (Rule.drafted_acceptance / Rule.row_distributions), for every rule that supports it."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import rule_builds, verify_blocks

from specref import genspec, rules
from specref.decode.fused import fused_kind, fused_verify
from specref.verify import BlockUniforms, verify_block


@settings(max_examples=150)
@given(verify_blocks(max_vocab=5), rule_builds(), st.sampled_from(["pi", "target"]))
def test_fused_verify_matches_verify_block(block, name_rule, bonus):
    drafts, q, p, q_rule, p_rule, u = block
    u_acc, u_smp = u.accept, u.sample
    _, rule = name_rule
    if fused_kind(rule) is None:
        return
    ref = verify_block(drafts, q, p, rule, q_rule=q_rule, p_rule=p_rule, bonus=bonus,
                       uniforms=BlockUniforms(u_acc, u_smp), validate=False)
    out = fused_verify(drafts, q, p, rule, q_rule, p_rule, bonus, u_acc, u_smp)
    assert torch.equal(out.accepted, ref.accepted)
    assert torch.equal(out.tokens, ref.tokens)
    assert torch.equal(out.num_emitted, ref.num_emitted)
    assert torch.equal(out.accept_prob, ref.accept_prob)  # bit for bit: same elementwise formulas
    assert torch.equal(out.defer_drafted.to(ref.defer_drafted.dtype), ref.defer_drafted)


@settings(max_examples=150)
@given(verify_blocks(max_vocab=5), rule_builds(), st.sampled_from(["pi", "target"]), st.data())
def test_a_rows_limit_is_a_round_of_that_many_drafts(block, name_rule, bonus, data):
    """The draft stop's per-row ``limit``: a row that offers k of the block's g drafts is verified as a block of k
    drafts (same uniforms: its bonus draw at position k), by both verifiers; ``limit = g`` changes nothing."""
    drafts, q, p, q_rule, p_rule, u = block
    _, rule = name_rule
    b, g = drafts.shape
    limit = torch.tensor(data.draw(st.lists(st.integers(1, g), min_size=b, max_size=b)))
    uni = BlockUniforms(u.accept, u.sample)
    kw = {"q_rule": q_rule, "p_rule": p_rule, "bonus": bonus, "validate": False}
    ref = verify_block(drafts, q, p, rule, uniforms=uni, limit=limit, **kw)
    for row in range(b):
        k = int(limit[row])
        one = verify_block(drafts[row : row + 1, :k], q[row : row + 1, : k + 1], p[row : row + 1, : k + 1], rule,
                           q_rule=q_rule[row : row + 1, : k + 1], p_rule=p_rule[row : row + 1, : k + 1],
                           bonus=bonus, uniforms=BlockUniforms(u.accept[row : row + 1, :k],
                                                               u.sample[row : row + 1, : k + 1]), validate=False)
        assert int(ref.accepted[row]) == int(one.accepted[0]) <= k
        assert ref.tokens[row, : k + 1].tolist() == one.tokens[0].tolist()
        assert (ref.tokens[row, k + 1 :] == -1).all()
    full = verify_block(drafts, q, p, rule, uniforms=uni, limit=torch.full((b,), g), **kw)
    plain = verify_block(drafts, q, p, rule, uniforms=uni, **kw)
    assert torch.equal(full.tokens, plain.tokens) and torch.equal(full.accepted, plain.accepted)
    if fused_kind(rule) is not None:
        out = fused_verify(drafts, q, p, rule, q_rule, p_rule, bonus, u.accept, u.sample, limit=limit)
        assert torch.equal(out.accepted, ref.accepted) and torch.equal(out.tokens, ref.tokens)
        assert torch.equal(out.kept, torch.arange(g + 1) <= ref.accepted.unsqueeze(1))


def test_fused_kinds():
    assert fused_kind(rules.get("specdecode")) == "position"
    assert fused_kind(rules.get("chow", alpha=0.1)) == "position"
    assert fused_kind(rules.get("token_v3", alpha=0.1)) == "token"
    assert fused_kind(rules.get("lossy", alpha=0.1)) == "lossy"

    class Odd(rules.Rule):
        def decide(self, q_rule, p_rule, q, p, features=None):
            return torch.ones(q.shape[:-1])

        def mix(self, defer, q, p):  # a custom target: the decoder must use verify_block
            return p

    assert fused_kind(Odd()) is None

    # SpecDecode's fused methods write its decision (defer everywhere) in: a subclass that decides otherwise,
    # by decide_position or by decide, must go through verify_block, not get pi = p silently
    class HalfDefer(rules.SpecDecodeRule):
        def decide_position(self, stats):
            return torch.full(stats.shape, 0.5, dtype=stats.dtype, device=stats.device)

    class NeverDefer(rules.SpecDecodeRule):
        def decide(self, q_rule, p_rule, q, p, features=None):
            return torch.zeros(q.shape[:-1], dtype=q.dtype)

    assert fused_kind(HalfDefer()) is None and fused_kind(NeverDefer()) is None


def test_a_rule_with_its_own_mix_is_fused_only_with_its_own_fused_methods():
    """A custom mix without fused methods goes through verify_block; with them (defined as deep as the mix),
    the fused path calls the rule's own methods and matches verify_block bit for bit."""

    class Sharpened(rules.Rule):
        """pi = normalised q * p (not a cascade mix): a rule whose mix the default fused methods don't know."""

        name = "sharpened"

        def decide(self, q_rule, p_rule, q, p, features=None):
            return torch.ones(q.shape[:-1], dtype=q.dtype)

        def mix(self, defer, q, p):
            w = q * p + 1e-12
            return w / w.sum(dim=-1, keepdim=True)

    class SharpenedFused(Sharpened):
        def drafted_acceptance(self, drafts, q_rule, p_rule, q, p, features=None):
            pi = self.mix(None, q, p)
            d = drafts.long().unsqueeze(-1)
            g = drafts.shape[1]
            q_d, pi_d = q[:, :g].gather(-1, d).squeeze(-1), pi[:, :g].gather(-1, d).squeeze(-1)
            return torch.ones_like(q_d), genspec.acceptance(q_d, pi_d), (pi,)

        def row_distributions(self, decision, q, p, bonus):
            (pi,) = decision
            return genspec.residual(q, pi), pi if bonus == "pi" else p

    assert fused_kind(Sharpened()) is None
    rule = SharpenedFused()
    assert fused_kind(rule) == "position"
    g, v = 3, 6
    gen = torch.Generator().manual_seed(0)
    q = torch.softmax(torch.randn(40, g + 1, v, generator=gen, dtype=torch.float64), -1)
    p = torch.softmax(torch.randn(40, g + 1, v, generator=gen, dtype=torch.float64), -1)
    drafts = torch.randint(0, v, (40, g), generator=gen)
    u_acc, u_smp = torch.rand(40, g, generator=gen), torch.rand(40, g + 1, generator=gen)
    for bonus in ("pi", "target"):
        ref = verify_block(drafts, q, p, rule, bonus=bonus, uniforms=BlockUniforms(u_acc, u_smp), validate=False)
        out = fused_verify(drafts, q, p, rule, q, p, bonus, u_acc, u_smp)
        assert torch.equal(out.accepted, ref.accepted) and torch.equal(out.tokens, ref.tokens)
        assert torch.equal(out.accept_prob, ref.accept_prob)
    assert 0 < int(ref.accepted.sum()) < 40 * g  # both accepts and rejections were exercised


def test_lossy_subclass_with_its_own_decision_is_not_fused():
    """Lossy's fused methods use its acceptance formula, not decide(): a subclass changing decide is refused."""

    class Stricter(rules.LossyRule):
        def decide(self, q_rule, p_rule, q, p, features=None):
            return (1 - self.accept_prob(q, p)).sqrt()

    assert fused_kind(rules.get("lossy", alpha=0.2)) == "lossy"
    assert fused_kind(Stricter(alpha=0.2)) is None


def test_deferred_mass_of_a_bool_decision_is_the_float_decisions_bit_for_bit():
    gen = torch.Generator().manual_seed(1)
    q = torch.softmax(torch.randn(7, 4, 9, generator=gen), -1)
    defer = torch.rand(7, 4, 9, generator=gen) < 0.4
    mass = rules.Rule.deferred_mass
    assert torch.equal(mass(defer, q), mass(defer.to(q.dtype), q))
    assert torch.equal(mass(defer.to(q.dtype), q), (q * defer.to(q.dtype)).sum(-1, keepdim=True))
