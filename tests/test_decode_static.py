"""The static engines (specref.decode.static): the plain path's tokens and counts from fixed-shape sessions.

``static`` runs the static step eagerly; ``graph`` runs the same step eagerly on a CPU, and its CUDA-graph
bookkeeping is checked with a simulated capture. Their attention spans a fixed capacity, so logits agree with
the plain path to rounding only, and a deferral value that is a probability may differ in its last bits.
In-place compaction when the capacity runs out, cached engines, and self-speculation (one model as draft and
target) are covered too.
"""

from __future__ import annotations

import pytest
from test_decode_fast import METHODS, PROMPTS, _assert_same, _decode, _id

from specref.decode import make_decoder
from specref.decode.testing import ragged_batch, toy_pair

STATIC_CASES = [("static", "llama", *m) for m in METHODS] + [
    ("graph", "qwen2", *m) for m in METHODS if m[0] in ("specdecode", "token_v3", "target") and m[2] == {}
]


@pytest.mark.parametrize("case", STATIC_CASES, ids=[_id(c) for c in STATIC_CASES])
def test_static_engines_give_the_plain_tokens(case):
    engine, family, method, alpha, opts = case
    ref = _decode(family, method, alpha, opts, "plain", 0.7)
    _assert_same(_decode(family, method, alpha, opts, engine, 0.7), ref, exact_float=False)


def test_static_engine_compacts_in_place_and_reuses_its_buffers(monkeypatch):
    from specref.decode import static

    calls = []
    original = static.StaticEngine.compact

    def counting(self, length, new_len):
        calls.append((length, new_len))
        return original(self, length, new_len)

    monkeypatch.setattr(static.StaticEngine, "compact", counting)
    monkeypatch.setattr(static, "_round_up", lambda x, m=128: x)  # the tightest capacity the decoder allows
    static.clear_static_engines()
    # independent draft and target: many rejections, holes pile up until the next round would not fit
    ref = _decode("llama", "specdecode", None, {}, "plain", 1.0, rows=5, max_new=56, eos=None)
    out = _decode("llama", "specdecode", None, {}, "static", 1.0, rows=5, max_new=56, eos=None)
    _assert_same(out, ref)
    assert calls, "the capacity never ran out: compaction untested"
    again = _decode("llama", "specdecode", None, {}, "static", 1.0, rows=5, max_new=56, eos=None)  # cached engine
    _assert_same(again, ref)
    static.clear_static_engines()


def test_static_engine_with_one_model_as_draft_and_target():
    """Self-speculation: both sessions need their own static buffers (each gets its own engine)."""
    _, target = toy_pair("llama")
    ids, mask = ragged_batch(PROMPTS, 4)
    outs = [make_decoder(target, target, "specdecode", gamma=3, engine=e).generate(ids, mask, max_new_tokens=10,
                                                                                  seed=1, temperature=0.7)
            for e in ("plain", "static")]
    assert outs[0].token_lists() == outs[1].token_lists()
    assert outs[1].stats.acceptance_rate == 1.0


def test_graph_engine_bookkeeping_with_a_simulated_capture(monkeypatch):
    """The CUDA-graph path on a CPU: 'capture' records the step, 'replay' recomputes it INTO the static output
    (so outputs alias across replays, as on a GPU). Checks the static-input copies, warm-up calls, dead rows
    and output aliasing against the plain decoder."""
    from specref.decode import static

    original_init = static.StaticEngine.__init__

    def init(self, adapter, batch, capacity, engine):
        original_init(self, adapter, batch, capacity, engine)
        self.use_graphs = engine in ("graph", "compile-graph")

    replays = {"n": 0}

    def fake_capture(self, fn, g):
        g.out = fn(g.tok, g.pos, g.real, g.widx).clone()

        class Replay:
            def replay(self):
                replays["n"] += 1
                g.out.copy_(fn(g.tok, g.pos, g.real, g.widx))

        return Replay()

    monkeypatch.setattr(static.StaticEngine, "__init__", init)
    monkeypatch.setattr(static.StaticEngine, "_capture", fake_capture)
    static.clear_static_engines()
    for method, alpha in (("token_v3", 0.6), ("target", None)):
        ref = _decode("llama", method, alpha, {}, "plain", 1.0, rows=6, max_new=20)
        out = _decode("llama", method, alpha, {}, "graph", 1.0, rows=6, max_new=20)
        assert len(set(out.lengths.tolist())) > 1  # rows finished at different rounds: dead rows exercised
        _assert_same(out, ref, exact_float=False)
    assert replays["n"] > 5
    static.clear_static_engines()
