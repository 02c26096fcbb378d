"""The round profiler (specref.decode.profile) counts every round and every forward, on every engine kind."""

from __future__ import annotations

import pytest
from test_decode_fast import PROMPTS

from specref.decode import make_decoder
from specref.decode.profile import RoundProfiler
from specref.decode.testing import ragged_batch, toy_pair


@pytest.mark.parametrize("engine", ["plain", "fast", "graph"])
def test_profiler_counts_every_round_and_forward(engine):
    draft, target = toy_pair("llama")
    dec = make_decoder(draft, target, "specdecode", gamma=3, engine=engine)
    ids, mask = ragged_batch(PROMPTS, 3)
    prof = RoundProfiler()
    out = dec.generate(ids, mask, max_new_tokens=10, seed=0, profiler=prof)
    s = prof.summary()
    assert s["rounds"] == out.stats.num_rounds
    calls = {k: v["calls"] for k, v in s["per_role"].items()}
    assert calls == {"draft": out.stats.draft_forwards, "target": out.stats.target_forwards}
    assert 0.0 < s["outside_share"] < 1.0 and s["forward_seconds"] < s["round_seconds"]
