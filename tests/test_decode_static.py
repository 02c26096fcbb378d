"""The static engines (specref.decode.static): the plain path's tokens and counts from fixed-shape sessions.

``static`` runs the static step eagerly; ``graph`` runs the same step eagerly on a CPU, and its CUDA-graph
bookkeeping is checked with a simulated capture. Their attention spans a fixed capacity, so logits agree with
the plain path to rounding only, and a deferral value that is a probability may differ in its last bits.
In-place compaction when the capacity runs out, cached engines, and self-speculation (one model as draft and
target) are covered too, and so are T5 (its encoder once per call, cross-attention keys/values in fixed
buffers, the relative bias from logical positions) and sliding-window attention (the window in positions).
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


def _simulate_graphs(monkeypatch):
    """The CUDA-graph path on a CPU: 'capture' records the step, 'replay' recomputes it INTO the static output
    (so outputs alias across replays, as on a GPU). Returns the replay counter."""
    from specref.decode import static

    original_init = static.StaticEngine.__init__

    def init(self, adapter, batch, capacity, engine, *args):
        original_init(self, adapter, batch, capacity, engine, *args)
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
    return replays


def test_graph_engine_bookkeeping_with_a_simulated_capture(monkeypatch):
    """Checks the static-input copies, warm-up calls, dead rows and output aliasing against the plain
    decoder."""
    from specref.decode import static

    replays = _simulate_graphs(monkeypatch)
    static.clear_static_engines()
    for method, alpha in (("token_v3", 0.6), ("target", None)):
        ref = _decode("llama", method, alpha, {}, "plain", 1.0, rows=6, max_new=20)
        out = _decode("llama", method, alpha, {}, "graph", 1.0, rows=6, max_new=20)
        assert len(set(out.lengths.tolist())) > 1  # rows finished at different rounds: dead rows exercised
        _assert_same(out, ref, exact_float=False)
    assert replays["n"] > 5
    static.clear_static_engines()


# ---- block-size policies: one graph per width used, and room for a draft that lagged behind -------------------


def _policy_decode(engine, policy, rows=5, max_new=40, method="specdecode"):
    draft, target = toy_pair("llama")
    dec = make_decoder(draft, target, method, alpha=0.6 if method == "token_v3" else None, gamma=3, engine=engine,
                       gamma_policy=policy)
    ids, mask = ragged_batch(PROMPTS, rows)
    return dec.generate(ids, mask, max_new_tokens=max_new, seed=list(range(10, 10 + rows)), no_eos=True)


def test_graph_engine_under_a_policy_captures_one_graph_per_width_used(monkeypatch):
    """Each block size the policy takes gets its graph the first time it is taken (none for the others), and
    a draft that lagged behind catches up in chunks of at most gamma + 1 tokens: both models stay within the
    gamma + 1 widths 1..gamma + 1. Tokens and counters equal the fast engine's."""
    from specref.decode import static
    from specref.decode.gamma_policy import AdaptiveGamma

    replays = _simulate_graphs(monkeypatch)
    draft, target = toy_pair("llama")
    for method, policy in (("specdecode", AdaptiveGamma(c=2.0, probe_every=9)),
                           ("token_v3", AdaptiveGamma(c=0.05, prior_weight=1.0))):
        static.clear_static_engines()
        ref = _policy_decode("fast", policy, method=method)
        out = _policy_decode("graph", policy, method=method)
        _assert_same(out, ref, exact_float=False)
        used = out.stats.gamma_rounds
        assert len(used) >= 2, used
        (t_eng,) = static._ENGINES[target].values()
        (d_eng,) = static._ENGINES[draft].values()
        assert set(t_eng.graphs) == {g + 1 for g in used}  # lazily: only the widths taken
        assert set(d_eng.graphs) <= set(range(1, 5)) and 1 in d_eng.graphs
        if method == "specdecode":  # 9 skipped tokens and the pending one: chunks of 4, 4 and 2
            assert 0 in used and {4, 2} <= set(d_eng.graphs)
        for eng in (t_eng, d_eng):
            for g in eng.graphs.values():
                assert (g.graph is not None) == (g.calls > static.WARMUP_CALLS)
    assert replays["n"] > 20
    static.clear_static_engines()


def test_a_lagging_draft_fits_the_tightest_static_capacity(monkeypatch):
    """After g = 0 rounds the draft's round appends the skipped tokens too: its session keeps room for
    probe_every of them, so even the tightest capacity the decoder could ask for (prompt + output + 1, no
    rounding) compacts in time instead of overflowing."""
    from specref.decode import decoder, static
    from specref.decode.gamma_policy import AdaptiveGamma

    calls = []
    original = static.StaticEngine.compact

    def counting(self, length, new_len):
        calls.append((length, new_len))
        return original(self, length, new_len)

    monkeypatch.setattr(static.StaticEngine, "compact", counting)
    monkeypatch.setattr(static, "_round_up", lambda x, m=128: x)
    monkeypatch.setattr(decoder.SpecCascadeDecoder, "_capacity", lambda self, width, max_new: width + max_new + 1)
    static.clear_static_engines()
    for policy in (AdaptiveGamma(c=2.0, probe_every=9), AdaptiveGamma(c=0.2, prior_weight=1.0, probe_every=4)):
        ref = _policy_decode("fast", policy, max_new=56)
        out = _policy_decode("static", policy, max_new=56)
        _assert_same(out, ref, exact_float=False)
        assert out.stats.gamma_rounds.get(0, 0) >= 8
    assert calls, "the capacity never ran out: compaction untested"
    static.clear_static_engines()


# ---- T5: the encoder once per call, cross-attention keys/values in fixed buffers, the bias from positions -------

T5_CASES = [(e, m, a) for e in ("static", "graph")
            for m, a in (("specdecode", None), ("token_v3", 0.6), ("opt", 0.5), ("target", None))]


@pytest.mark.parametrize("engine,method,alpha", T5_CASES, ids=[f"{c[0]}-{c[1]}" for c in T5_CASES])
def test_t5_on_static_engines_gives_the_fast_tokens_and_counters(engine, method, alpha):
    """A ragged batch of encoder inputs with EOS (rows finish at different rounds and stay as dead rows), at
    T = 1 and T = 0; rejected drafts leave holes in the decoder's buffer, which the relative position bias must
    not see (it is computed from the rows' positions)."""
    for t in (1.0, 0.0):
        ref = _decode("t5", method, alpha, {}, "fast", t)
        _assert_same(_decode("t5", method, alpha, {}, engine, t), ref, exact_float=False)


def _graph_engines(model):
    from specref.decode import static

    return [e for e in static._ENGINES[model].values() if e.engine == "graph"]


def test_t5_graphs_read_each_calls_own_encoder_output(monkeypatch):
    """Cached engines and their graphs serve later calls: each call's first forward runs eagerly and recomputes
    the cross-attention keys/values from that call's encoder output (the graphs only read them), whatever the
    rows' order; an encoder input past the rounded width gets an engine of its own."""
    from specref.decode import static

    replays = _simulate_graphs(monkeypatch)
    static.clear_static_engines()
    draft, target = toy_pair("t5")
    long = tuple(range(1, 7)) * 12  # 72 positions: past the first engine's 64
    for prompts in (PROMPTS, PROMPTS[::-1], [*PROMPTS[1:], PROMPTS[0]], [long, *PROMPTS[1:]]):
        ids, mask = ragged_batch(prompts, 6)
        out, ref = (make_decoder(draft, target, "specdecode", gamma=3, engine=e).generate(
            ids, mask, max_new_tokens=12, seed=list(range(6)), eos_token_id=7) for e in ("graph", "fast"))
        _assert_same(out, ref, exact_float=False)
    assert replays["n"] > 20
    assert sorted(e.enc_cap for e in _graph_engines(target)) == [64, 128]
    static.clear_static_engines()


def test_t5_under_a_policy_gives_the_fast_tokens_with_one_graph_per_width(monkeypatch):
    """The block-size policy on T5: plain target steps (SpecDecode, g = 0) after which the draft catches up in
    chunks, and a cascade rule's varying g; tokens and counters equal the fast engine's, and each model's graphs
    stay within the widths 1..gamma + 1."""
    from specref.decode import static
    from specref.decode.gamma_policy import AdaptiveGamma

    _simulate_graphs(monkeypatch)
    draft, target = toy_pair("t5")
    ids, mask = ragged_batch(PROMPTS, 6)
    for method, alpha, policy in (("specdecode", None, AdaptiveGamma(c=2.0, probe_every=9)),
                                  ("specdecode", None, AdaptiveGamma(c=0.2, prior_weight=1.0, probe_every=4)),
                                  ("token_v3", 0.6, AdaptiveGamma(c=0.05, prior_weight=1.0))):
        static.clear_static_engines()
        outs = {e: make_decoder(draft, target, method, alpha=alpha, gamma=3, engine=e, gamma_policy=policy)
                .generate(ids, mask, max_new_tokens=40, seed=list(range(5, 11)), no_eos=True, temperature=0.8)
                for e in ("fast", "static", "graph")}
        used = outs["fast"].stats.gamma_rounds
        assert len(used) >= 2, used
        for e in ("static", "graph"):
            _assert_same(outs[e], outs["fast"], exact_float=False)
            assert outs[e].stats.gamma_rounds == used
        (t_eng,), (d_eng,) = _graph_engines(target), _graph_engines(draft)
        # one graph per block width taken, except a width only the call's first round took (T5's first target
        # forward runs eagerly: it computes the cross-attention keys and values); that round's g is the policy's
        # answer before any draft was verified
        g0 = policy.choose(3, 0.0, 0, 0, allow_zero=method == "specdecode")
        assert set(t_eng.graphs) == {g + 1 for g, n in used.items() if n > 1 or g != g0}
        assert set(d_eng.graphs) <= set(range(1, 5))
    static.clear_static_engines()


# ---- sliding-window attention, and every seq2seq family: against uncached forwards ------------------------------

def _windowed_cases():
    from test_decode_adapters import SLIDING

    # Gemma 2 runs eager attention (transformers withdrew its sdpa in 5.24)
    return [(m, "eager" if m == "gemma2" else "sdpa") for m in SLIDING] + [("t5", "sdpa"), ("t5", "eager"),
                                                                            ("mt5", "sdpa")]


WINDOWED = _windowed_cases()


@pytest.mark.parametrize("model_type,attn", WINDOWED, ids=[f"{m}-{a}" for m, a in WINDOWED])
def test_static_engines_decode_windows_and_seq2seq_like_uncached_forwards(model_type, attn):
    """Greedy SpecDecode on ``static`` and ``graph`` reproduces greedy decoding by uncached full forwards, one
    row at a time (tests/test_decode_adapters.py's families and prompts: windows of 5 positions that cut these
    sequences, one layer type or several; T5 and mT5 with sdpa and eager attention), and a sampled cascade
    equals the fast engine token for token and counter for counter."""
    import torch
    from test_decode_adapters import MAX_NEW, build, reference_greedy
    from test_decode_adapters import PROMPTS as FAMILY_PROMPTS

    target, draft = build(model_type, 0, attn), build(model_type, 1, attn)
    w = max(len(p) for p in FAMILY_PROMPTS)
    ids = torch.tensor([[0] * (w - len(p)) + p for p in FAMILY_PROMPTS])
    mask = torch.tensor([[0] * (w - len(p)) + [1] * len(p) for p in FAMILY_PROMPTS])
    expected = [reference_greedy(target, p, MAX_NEW) for p in FAMILY_PROMPTS]
    for engine in ("static", "graph"):
        out = make_decoder(draft, target, "specdecode", gamma=3, engine=engine).generate(
            ids, mask, max_new_tokens=MAX_NEW, temperature=0.0)
        assert int(out.stats.rejections.sum()) > 0
        assert out.token_lists() == expected, engine
    sampled = [make_decoder(draft, target, "token_v3", alpha=0.6, gamma=3, engine=e).generate(
        ids, mask, max_new_tokens=MAX_NEW, seed=[1, 2, 3], no_eos=True) for e in ("fast", "static")]
    _assert_same(sampled[1], sampled[0], exact_float=False)
