"""Greedy SpecDecode equals greedy target-only decoding token for token (causal and T5, batch 1 and 5).

Also checks the target-only path against transformers' own ``generate`` (an independent implementation)
and that speculative greedy decoding stays equal under forced cache compaction, both bonus modes and
several gammas.
"""

from __future__ import annotations

import pytest
import torch

from specref.decode import make_decoder
from specref.decode.adapters import Session
from specref.decode.testing import tiny_pair

PROMPTS = [[5, 9, 13, 2, 40, 41, 7], [3], [17, 18, 19, 20], [60, 1], [8, 8, 8, 8, 8, 8, 8, 8, 9, 10]]
MAX_NEW = 24


def left_pad(prompts, pad=0):
    w = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (w - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (w - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


_PAIRS = {}


def pair(family):
    if family not in _PAIRS:
        init = {"t5": 0.02, "gpt2": 0.1}.get(family, 0.3)
        peak = {"t5": 0.3}.get(family, 1.0)
        _PAIRS[family] = tiny_pair(
            family, vocab=64, hidden=32, layers=2, heads=4, init=init, peak=peak, draft_noise=0.2, context=128
        )
    return _PAIRS[family]


def greedy(method, family, prompts, gamma=3, **kw):
    draft, target = pair(family)
    ids, mask = left_pad(prompts)
    dec = make_decoder(draft, target, method, gamma=gamma, **kw)
    return dec.generate(ids, mask, max_new_tokens=MAX_NEW, temperature=0.0, seed=0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "t5"])
@pytest.mark.parametrize("batch", [1, 5])
def test_greedy_specdecode_equals_target(family, batch):
    prompts = PROMPTS[:batch]
    ref = greedy("target", family, prompts)
    out = greedy("specdecode", family, prompts)
    assert out.token_lists() == ref.token_lists()
    assert (out.lengths == MAX_NEW).all()
    # both accepted drafts and rejections (hence rollbacks) really happened
    assert int(out.stats.accepted.sum()) > 0 and int(out.stats.rejections.sum()) > 0


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("gamma,bonus", [(1, "pi"), (4, "target"), (7, "pi")])
def test_greedy_specdecode_other_gammas_and_bonus(family, gamma, bonus):
    ref = greedy("target", family, PROMPTS)
    out = greedy("specdecode", family, PROMPTS, gamma=gamma, bonus=bonus)
    assert out.token_lists() == ref.token_lists()


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_greedy_unchanged_by_forced_compaction(family, monkeypatch):
    """Compacting the caches after every round (instead of lazily) changes nothing."""
    ref = greedy("specdecode", family, PROMPTS)
    calls = {"n": 0}
    original = Session.maintain

    def always(self, summary, rows=None):
        original(self, summary, rows)
        if self.table.length:
            calls["n"] += 1
            self._compact(rows=None, new_len=summary[0] if rows is None else self.table.length)

    monkeypatch.setattr(Session, "maintain", always)
    out = greedy("specdecode", family, PROMPTS)
    assert calls["n"] > 0
    assert out.token_lists() == ref.token_lists()


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_target_only_matches_transformers_generate(family):
    """Our target-only loop (slot cache, explicit positions) agrees with transformers' generate."""
    draft, target = pair(family)
    for prompt in PROMPTS[:3]:
        ids = torch.tensor([prompt])
        ours = greedy("target", family, [prompt]).token_lists()[0]
        with torch.no_grad():
            hf = target.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=MAX_NEW,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )
        theirs = hf[0, (1 if family == "t5" else ids.shape[1]) :].tolist()
        assert ours == theirs


def test_greedy_cascades_are_deterministic_functions_of_argmaxes():
    """At T = 0 TokenCascade with alpha -> 1 never defers: it is greedy draft-only decoding."""
    draft_greedy = greedy("draft", "llama", PROMPTS)
    never = greedy("token_cascade", "llama", PROMPTS, alpha=1.0)
    assert never.token_lists() == draft_greedy.token_lists()
    assert int(never.stats.target_calls.sum()) == 0
    always = greedy("token_cascade", "llama", PROMPTS, alpha=-1.0)
    assert always.token_lists() == greedy("target", "llama", PROMPTS).token_lists()


def test_t5_encoder_inputs_may_be_padded_on_either_side():
    draft, target = pair("t5")
    w = max(len(p) for p in PROMPTS)
    right = torch.tensor([p + [0] * (w - len(p)) for p in PROMPTS])
    rmask = torch.tensor([[1] * len(p) + [0] * (w - len(p)) for p in PROMPTS])
    dec = make_decoder(draft, target, "specdecode", gamma=3)
    out = dec.generate(right, rmask, max_new_tokens=MAX_NEW, temperature=0.0)
    assert out.token_lists() == greedy("target", "t5", PROMPTS).token_lists()


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_bfloat16_models(family):
    """Models may run in bf16; probabilities are computed in float32 and decoding works end to end."""
    draft, target = (
        m.to(torch.bfloat16)
        for m in tiny_pair(
            family,
            vocab=64,
            hidden=32,
            heads=4,
            init={"t5": 0.02}.get(family, 0.3),
            peak={"t5": 0.3}.get(family, 1.0),
            draft_noise=0.2,
            context=128,
        )
    )
    ids, mask = left_pad(PROMPTS)
    records = []
    out = make_decoder(draft, target, "token_v3", alpha=0.3, gamma=3).generate(
        ids, mask, max_new_tokens=MAX_NEW, seed=0, on_round=records.append
    )
    assert (out.lengths == MAX_NEW).all() and out.sequences.min() >= 0 and out.sequences.max() < 64
    assert records[0].q_max.dtype == torch.float32
    assert int(out.stats.accepted.sum()) > 0
