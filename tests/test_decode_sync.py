"""At most ONE host synchronisation per round.

Every way a tensor can reach the host (``bool``, ``int``, ``float``, ``item``, ``tolist``, ``cpu``, ``numpy``,
``nonzero``) is counted during ``generate``; on a GPU each of these would stall the stream. Besides one per
round, only a fixed handful is allowed at the start (prompt validation) and, for SeqCascade, one at its
phase boundary. transformers' own mask construction would sync at every forward; the decoder hands it
prepared 4D masks instead (except for sliding-window models, which need transformers' per-layer masks).
"""

from __future__ import annotations

import pytest
import torch

from specref.decode import make_decoder
from specref.decode.testing import TOY_PROMPTS, ragged_batch, toy_pair

SETUP = 8  # prompt validation and context checks, once per call
HOOKS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "cpu", "numpy", "nonzero")


@pytest.fixture
def count_syncs(monkeypatch):
    state = {"on": False, "n": 0}
    for name in HOOKS:
        original = getattr(torch.Tensor, name)

        def hooked(self, *args, _original=original, **kwargs):
            if state["on"]:
                state["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, hooked)
    return state


@pytest.mark.parametrize(
    "family,method,alpha,opts",
    [
        ("llama", "specdecode", None, {}),
        ("llama", "token_v3", 0.6, {"bonus": "target"}),
        ("t5", "token_v3", 0.6, {}),
        ("gpt2", "chow", 0.3, {}),
        ("llama", "target", None, {}),
        ("t5", "draft", None, {}),
        ("llama", "token_cascade", 0.3, {}),
        ("t5", "bild", None, {"fallback": 0.5, "rollback": 1.0}),
        ("llama", "seq_cascade", 0.5, {}),
    ],
)
def test_one_host_sync_per_round(count_syncs, family, method, alpha, opts):
    draft, target = toy_pair(family)
    dec = make_decoder(draft, target, method, alpha=alpha, gamma=3, **opts)
    ids, mask = ragged_batch(TOY_PROMPTS + ((3,), (2, 2, 5, 1)), 4)
    count_syncs["on"] = True
    out = dec.generate(ids, mask, max_new_tokens=12, seed=0, eos_token_id=7)
    count_syncs["on"] = False
    extra = 2 if method == "seq_cascade" else 0  # its phase boundary (nonzero + the sub-batch's width)
    assert out.stats.num_rounds >= 3
    assert count_syncs["n"] <= out.stats.num_rounds + SETUP + extra, (count_syncs["n"], out.stats.num_rounds)
