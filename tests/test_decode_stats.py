"""Statistics are consistent with the outputs, with the per-round log, and with the exact expectations."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pytest
import torch

from specref import exact, rules
from specref.decode import make_decoder
from specref.decode.testing import TOY_PROMPTS, HFToyLM, ragged_batch, toy_pair
from specref.stats_tests import chi_square_gof

PROMPTS = [(1, 2, 3, 4, 5), (6, 7), (3,), (2, 2, 5, 1), (4, 6, 1, 0, 3, 3, 2)]
GAMMA = 3


class TokenHead:
    kind = "token"

    def estimate(self, q_rule, p_rule, q, p, features=None):
        return 0.5 * (q_rule + p_rule)


SPEC = [
    ("specdecode", None, {}),
    ("token_v3", 0.6, {}),
    ("chow", 0.3, {}),
    ("lossy", 0.3, {}),
    ("learned", 0.05, {"head": TokenHead()}),
    ("token_v3", 0.6, {"bonus": "target"}),
]


def collect(dec, prompts, **kw):
    records = []
    ids, mask = ragged_batch(prompts, len(prompts))
    out = dec.generate(ids, mask, on_round=records.append, **kw)
    return out, records


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("method,alpha,options", SPEC, ids=lambda x: str(x) if not isinstance(x, dict) else "")
def test_spec_statistics_are_consistent(family, method, alpha, options):
    draft, target = toy_pair(family)
    dec = make_decoder(draft, target, method, alpha=alpha, gamma=GAMMA, c=0.25, **options)
    out, records = collect(dec, PROMPTS, max_new_tokens=15, seed=3, eos_token_id=7)
    st = out.stats
    b = len(PROMPTS)
    emitted = torch.zeros(b, dtype=torch.long)
    tokens = defaultdict(list)
    rounds = torch.zeros(b, dtype=torch.long)
    accepted = torch.zeros(b, dtype=torch.long)
    reached = torch.zeros(b, GAMMA, dtype=torch.long)
    for rec in records:
        ids = rec.row_ids.tolist()
        for r, n, row in zip(ids, rec.emitted.tolist(), rec.tokens.tolist()):
            tokens[r].extend(row[:n])
        emitted[rec.row_ids] += rec.emitted
        rounds[rec.row_ids] += 1
        accepted[rec.row_ids] += rec.accepted
        reached[rec.row_ids] += (torch.arange(GAMMA).unsqueeze(0) <= rec.accepted.unsqueeze(1)).long()
        assert (rec.emitted <= rec.accepted + 1).all() and (rec.emitted >= 1).all()
        assert rec.q_max.shape == (len(ids), GAMMA + 1) and (rec.tv >= -1e-6).all() and (rec.tv <= 1 + 1e-6).all()
    # emitted tokens = sum of per-round emissions, and the per-round tokens rebuild the sequences
    assert torch.equal(emitted, out.lengths) and torch.equal(st.tokens, out.lengths)
    assert [tokens[i] for i in range(b)] == out.token_lists()
    # call counts
    assert len(records) == st.num_rounds
    assert st.target_forwards == st.num_rounds and st.draft_forwards == (GAMMA + 1) * st.num_rounds
    assert torch.equal(st.rounds, rounds) and torch.equal(st.target_calls, rounds)
    assert torch.equal(st.draft_calls, (GAMMA + 1) * rounds)
    assert torch.equal(st.accepted, accepted) and torch.equal(st.pos_reached, reached)
    assert torch.equal(st.drafted, reached.sum(1))
    assert int(st.rejections.sum()) == sum(int((r.accepted < GAMMA).sum()) for r in records)
    assert st.prefill_forwards == 2
    # derived rates
    assert st.tokens_per_target_call == pytest.approx(out.lengths.sum().item() / rounds.sum().item())
    assert st.acceptance_rate == pytest.approx(accepted.sum().item() / reached.sum().item())
    assert 0.0 <= st.deferral_rate <= 1.0
    assert st.modeled_latency == pytest.approx((st.target_forwards + 0.25 * st.draft_forwards) / int(out.lengths.max()))
    row = st.row_modeled_latency()
    assert torch.allclose(row, (rounds + 0.25 * (GAMMA + 1) * rounds).double() / out.lengths.double())
    assert st.wall_time_s > 0
    json.dumps(st.summary())
    assert set(st.row(0)) >= {"tokens", "target_calls", "acceptance_rate", "modeled_relative_latency"}


@pytest.mark.parametrize("method", ["target", "draft", "token_cascade", "bild", "seq_cascade"])
def test_baseline_statistics_are_consistent(method):
    draft, target = toy_pair("llama")
    opts = {
        "token_cascade": (0.3, {}),
        "bild": (None, {"fallback": 0.7, "rollback": 1.0}),
        "seq_cascade": (0.5, {}),
    }.get(method, (None, {}))
    dec = make_decoder(draft, target, method, alpha=opts[0], c=0.5, **opts[1])
    out, records = collect(dec, PROMPTS, max_new_tokens=10, seed=5, eos_token_id=7)
    st = out.stats
    assert torch.equal(st.tokens, out.lengths)
    assert len(records) == st.num_rounds
    if method == "target":
        assert torch.equal(st.target_calls, out.lengths) and st.draft_forwards == 0
        assert st.modeled_latency == pytest.approx(1.0)
        assert torch.allclose(st.row_modeled_latency(), torch.ones(len(PROMPTS), dtype=torch.float64))
    elif method == "draft":
        assert torch.equal(st.draft_calls, out.lengths) and st.target_forwards == 0
    elif method == "seq_cascade":
        deferred = st.extra["seq_deferred"]
        assert st.deferral_rate == pytest.approx(deferred.double().mean().item())
        assert (st.target_calls[~deferred] == 0).all()
        assert torch.equal(st.target_calls[deferred], out.lengths[deferred])
        assert torch.equal(st.draft_calls, st.draft_calls.clamp_min(1))
    else:
        calls = torch.zeros(len(PROMPTS), dtype=torch.long)
        for rec in records:
            calls[rec.row_ids] += rec.deferred.long()
        assert torch.equal(st.target_calls, calls)
        assert st.target_forwards <= st.num_rounds
        if method == "token_cascade":
            assert int(st.rollbacks.sum()) == 0
            # every target call produces exactly one token; every other step one draft token
            assert torch.equal(st.draft_calls, out.lengths)
    json.dumps(st.summary())


def test_acceptance_matches_exact_expectation():
    """First-round accepted counts ~ exact.first_round_accepted; target calls ~ exact.expected_target_calls."""
    n_rows, gamma = 4000, 2
    draft, target = toy_pair("llama")
    lms = [(HFToyLM(draft, p), HFToyLM(target, p)) for p in TOY_PROMPTS]
    for method, alpha in (("specdecode", None), ("token_v3", 0.6)):
        rule = rules.get(method, alpha=alpha)
        dec = make_decoder(draft, target, method, alpha=alpha, gamma=gamma)
        first: dict = {}

        def hook(rec, first=first):
            if rec.round == 0:
                first["acc"] = rec.accepted.cpu()

        ids, mask = ragged_batch(TOY_PROMPTS, n_rows)
        out = dec.generate(ids, mask, max_new_tokens=3, seed=77, on_round=hook)
        for g, (dl, tl) in enumerate(lms):
            acc = first["acc"][g::2]
            dist = exact.first_round_accepted(dl, tl, rule, gamma)
            gof = chi_square_gof(acc.unsqueeze(1), {(k,): float(dist[k]) for k in range(gamma + 1)})
            assert gof.p_value > 1e-3, (method, g, gof)
            mean = float((dist * torch.arange(gamma + 1)).sum())
            sd = math.sqrt(float((dist * (torch.arange(gamma + 1) - mean) ** 2).sum()))
            assert abs(acc.double().mean().item() - mean) < 4 * sd / math.sqrt(acc.numel())
            # rounds (= target calls) needed for 3 tokens
            calls = out.stats.target_calls[g::2].double()
            expected = exact.expected_target_calls(dl, tl, rule, gamma, 3)
            assert abs(calls.mean().item() - expected) < 4 * calls.std().item() / math.sqrt(calls.numel()) + 1e-9


def test_learned_head_receives_correct_hidden_states():
    """A head that wants hidden states gets the last-layer states of both models at the scored positions."""
    seen = []

    class HiddenHead:
        kind = "cascade"
        wants_hidden = True

        def estimate(self, q_rule, p_rule, q, p, features=None):
            seen.append({k: v.clone() for k, v in features.items()})
            return torch.stack([1 - q_rule.amax(-1), 1 - p_rule.amax(-1)], dim=-1)

    draft, target = toy_pair("llama")
    dec = make_decoder(draft, target, "learned", alpha=0.0, gamma=GAMMA, head=HiddenHead())
    prompts = [(1, 2, 3, 4, 5), (6, 7)]
    out, records = collect(dec, prompts, max_new_tokens=8, seed=1)
    assert len(seen) == len(records)
    feats, rec = seen[0], records[0]
    hd, ht = draft.config.hidden_size, target.config.hidden_size
    assert feats["draft_hidden"].shape == (2, GAMMA + 1, hd) and feats["target_hidden"].shape == (2, GAMMA + 1, ht)
    for i, prompt in enumerate(prompts):
        seq = torch.tensor([list(prompt) + rec.drafts[i].tolist()])
        with torch.no_grad():
            hs_t = target(seq, output_hidden_states=True).hidden_states[-1][0, -(GAMMA + 1) :]
            hs_d = draft(seq, output_hidden_states=True).hidden_states[-1][0, -(GAMMA + 1) :]
        assert torch.allclose(feats["target_hidden"][i], hs_t, atol=1e-5)
        assert torch.allclose(feats["draft_hidden"][i], hs_d, atol=1e-5)
