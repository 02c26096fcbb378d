"""Batch invariance: a row's output depends only on its prompt and seed, for every method.

Each row is decoded in a ragged batch (different prompt lengths, EOS ending rows at different times, rows
leaving the batch) and alone; the outputs must be identical token for token. Sampling is on (T = 1), so
this also checks that every random number is keyed by (row seed, token index), never by batch position.
"""

from __future__ import annotations

import pytest
import torch

from specref.decode import METHODS, make_decoder
from specref.decode.testing import ragged_batch, toy_pair

PROMPTS = [(1, 2, 3, 4, 5), (6, 7), (3,), (2, 2, 5, 1), (4, 6, 1, 0, 3, 3, 2), (5, 4)]
SEEDS = [11, 12, 13, 14, 15, 16]
EOS = 7
MAX_NEW = 12


class TokenHead:
    kind = "token"

    def estimate(self, q_rule, p_rule, q, p, features=None):
        return 0.5 * (q_rule + p_rule)


OPTIONS = {
    "lossy": (0.3, {}),
    "ensemble": (0.5, {}),
    "chow": (0.3, {}),
    "diff": (0.1, {}),
    "opt": (0.5, {}),
    "token_v1": (0.1, {}),
    "token_v2": (0.6, {}),
    "token_v3": (0.6, {}),
    "learned": (0.05, {"head": TokenHead()}),
    "token_cascade": (0.3, {}),
    "seq_cascade": (0.5, {"aggregate": "quantile", "quantile": 0.2}),
    "bild": (None, {"fallback": 0.7, "rollback": 1.0}),
}


def run(family, method, prompts, seeds, **kw):
    draft, target = toy_pair(family)
    alpha, options = OPTIONS.get(method, (None, {}))
    dec = make_decoder(draft, target, method, alpha=alpha, gamma=3, **options, **kw)
    ids, mask = ragged_batch(prompts, len(prompts))
    return dec.generate(ids, mask, max_new_tokens=MAX_NEW, seed=list(seeds), eos_token_id=EOS)


def check_invariant(family, method, **kw):
    batch = run(family, method, PROMPTS, SEEDS, **kw)
    rows = batch.token_lists()
    for i, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS)):
        alone = run(family, method, [prompt], [seed], **kw).token_lists()[0]
        assert rows[i] == alone, f"row {i} differs: batch {rows[i]} vs alone {alone}"
    # rows really were ragged: different lengths (EOS) happened
    assert len(set(batch.lengths.tolist())) > 1
    return batch


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_batch_invariant_llama(method):
    check_invariant("llama", method)


@pytest.mark.parametrize("method", ["specdecode", "token_v3", "seq_cascade", "bild", "token_cascade"])
def test_batch_invariant_t5(method):
    check_invariant("t5", method)


@pytest.mark.parametrize("method", ["specdecode", "bild"])
def test_batch_invariant_gpt2(method):
    check_invariant("gpt2", method)


def test_bonus_target_is_batch_invariant():
    check_invariant("llama", "token_v3", bonus="target")


def test_int_seed_means_seed_plus_row_index():
    a = run("llama", "token_v3", PROMPTS, [100 + i for i in range(len(PROMPTS))])
    draft, target = toy_pair("llama")
    dec = make_decoder(draft, target, "token_v3", alpha=0.6, gamma=3)
    ids, mask = ragged_batch(PROMPTS, len(PROMPTS))
    b = dec.generate(ids, mask, max_new_tokens=MAX_NEW, seed=100, eos_token_id=EOS)
    assert a.token_lists() == b.token_lists()
    c = dec.generate(
        ids, mask, max_new_tokens=MAX_NEW, seed=torch.tensor([100 + i for i in range(len(PROMPTS))]), eos_token_id=EOS
    )
    assert c.token_lists() == a.token_lists()


@pytest.mark.parametrize("method", ["specdecode", "token_v3", "token_cascade", "target", "draft"])
def test_eos_truncates_the_eos_free_output(method):
    """Stopping at EOS (or earlier) only cuts the output: keyed randomness keeps the prefix. (Not for BiLD,
    whose later fallbacks may roll back earlier tokens, nor SeqCascade, whose decision reads the whole answer.)"""
    draft, target = toy_pair("llama")
    alpha, options = OPTIONS.get(method, (None, {}))
    dec = make_decoder(draft, target, method, alpha=alpha, gamma=3, **options)
    ids, mask = ragged_batch(PROMPTS, len(PROMPTS))
    free = dec.generate(ids, mask, max_new_tokens=MAX_NEW, seed=SEEDS).token_lists()
    cut = dec.generate(ids, mask, max_new_tokens=MAX_NEW, seed=SEEDS, eos_token_id=EOS).token_lists()
    for f, c in zip(free, cut):
        expected = f[: f.index(EOS) + 1] if EOS in f else f
        assert c == expected
    shorter = dec.generate(ids, mask, max_new_tokens=5, seed=SEEDS).token_lists()
    assert shorter == [f[:5] for f in free]
