"""The optimised decoding paths give exactly the plain path's outputs (docs/performance.md).

* ``engine="fast"`` (preallocated slot tables, lean round, fused rule + verification, batched counters):
  identical tokens AND identical statistics, for every method, family, temperature, ragged batch with EOS;
* the static engines (``static``; ``graph`` runs the same static step eagerly on a CPU): identical tokens and
  counts (their attention spans a fixed capacity, so logits agree to rounding only, and a deferral value that
  is a probability may differ in its last bits);
* the fused rule + verification against :func:`specref.verify.verify_block` on random blocks: identical
  acceptances and tokens, bit-identical acceptance probabilities;
* the batched round uniforms against :func:`specref.rng.keyed_uniform`, bit for bit;
* the preallocated slot table against the plain one under random operations; one host sync per round;
  the round profiler; clear errors for unsupported engine choices.
"""

from __future__ import annotations

import pytest
import torch

from specref.decode import make_decoder
from specref.decode.kvcache import PreallocSlotTable, SlotTable
from specref.decode.profile import RoundProfiler
from specref.decode.rounds import round_uniforms as _round_uniforms
from specref.decode.rounds import stream_keys as _stream_keys
from specref.decode.testing import TOY_PROMPTS, ragged_batch, toy_pair
from specref.rng import STREAM_ACCEPT, STREAM_DRAFT, STREAM_SAMPLE, keyed_uniform

PROMPTS = [*TOY_PROMPTS, (3,), (2, 2, 5, 1), (4, 6, 1, 0, 3, 3, 2)]
EOS = 7
COUNTS = ("tokens", "draft_calls", "target_calls", "rounds", "drafted", "accepted", "rejections",
          "defer_positions", "pos_reached", "pos_accepted")
BATCH = ("draft_forwards", "target_forwards", "prefill_forwards", "num_rounds")


class TokenHead:
    kind = "token"

    def estimate(self, q_rule, p_rule, q, p, features=None):
        return 0.5 * (q_rule + p_rule)


METHODS = [
    ("specdecode", None, {}), ("token_v3", 0.6, {}), ("token_v3", 0.6, {"bonus": "target"}), ("token_v1", 0.1, {}),
    ("token_v2", 0.6, {}), ("lossy", 0.3, {}), ("lossy", 0.3, {"bonus": "target"}), ("chow", 0.3, {}),
    ("diff", 0.1, {}), ("opt", 0.5, {}), ("ensemble", 0.5, {}), ("learned", 0.05, {"head": TokenHead()}),
    ("target", None, {}), ("draft", None, {}),
]
SEQUENTIAL = [("token_cascade", 0.3, {}), ("seq_cascade", 0.5, {}), ("bild", None, {"fallback": 0.5, "rollback": 1.0})]


def _decode(family, method, alpha, opts, engine, temperature=1.0, rows=6, max_new=12, eos=EOS):
    draft, target = toy_pair(family)
    dec = make_decoder(draft, target, method, alpha=alpha, gamma=3, engine=engine, **opts)
    ids, mask = ragged_batch(PROMPTS, rows)
    return dec.generate(ids, mask, max_new_tokens=max_new, seed=list(range(10, 10 + rows)), eos_token_id=eos,
                        temperature=temperature)


def _assert_same(out, ref, exact_float=True):
    assert out.token_lists() == ref.token_lists()
    for f in COUNTS:
        assert torch.equal(getattr(out.stats, f), getattr(ref.stats, f)), f
    for f in BATCH:
        assert getattr(out.stats, f) == getattr(ref.stats, f), f
    if exact_float:
        assert torch.equal(out.stats.deferred, ref.stats.deferred)
    else:
        assert torch.allclose(out.stats.deferred, ref.stats.deferred, rtol=1e-5, atol=1e-6)


CORE = {"specdecode", "token_v3", "lossy", "target", "token_cascade", "seq_cascade", "bild"}
FAST_CASES = [("llama", *m) for m in METHODS + SEQUENTIAL] + [
    (f, *m) for f in ("gpt2", "t5") for m in METHODS + SEQUENTIAL if m[0] in CORE and m[2] == {}
]
STATIC_CASES = [("static", "llama", *m) for m in METHODS] + [
    ("graph", "qwen2", *m) for m in METHODS if m[0] in ("specdecode", "token_v3", "target") and m[2] == {}
]


def _id(case):
    return "-".join(str(x) for x in case[:-1]) + ("-" + "-".join(f"{k}={v}" for k, v in case[-1].items()
                                                                if k != "head") if case[-1] else "")


@pytest.mark.parametrize("case", FAST_CASES, ids=[_id(c) for c in FAST_CASES])
def test_fast_engine_is_identical_to_plain(case):
    family, method, alpha, opts = case
    for t in (1.0, 0.0):
        ref = _decode(family, method, alpha, opts, "plain", t)
        _assert_same(_decode(family, method, alpha, opts, "fast", t), ref)


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


# ---- uniforms, tables, syncs, profiler, errors -------------------------------------------------------------


def test_round_uniforms_are_keyed_uniform_bit_for_bit():
    seeds = torch.tensor([0, 1, -5, 2**62, 123456789])
    start = torch.tensor([0, 3, 17, 2**40, 5])
    u = _round_uniforms(_stream_keys(seeds), start, 6)
    for s, stream in enumerate((STREAM_DRAFT, STREAM_ACCEPT, STREAM_SAMPLE)):
        ref = keyed_uniform(seeds, start.unsqueeze(1) + torch.arange(6), stream)
        assert torch.equal(u[:, s], ref)


def test_prealloc_table_matches_the_plain_table_under_random_operations():
    g = torch.Generator().manual_seed(0)
    b = 4
    plain, fast = SlotTable(b, torch.device("cpu")), PreallocSlotTable(b, torch.device("cpu"), capacity=3)
    pos = torch.zeros(b, dtype=torch.long)
    for step in range(60):
        op = int(torch.randint(0, 5, (1,), generator=g))
        n = int(torch.randint(1, 4, (1,), generator=g))
        if op <= 1 or plain.length < 4:
            positions = pos.unsqueeze(1) + torch.arange(n)
            if op == 0:  # real=None: every new slot is live
                plain.append(torch.ones((b, n), dtype=torch.bool), positions)
                fast.append(None, positions)
            else:
                real = torch.rand((b, n), generator=g) < 0.8
                plain.append(real, positions)
                fast.append(real, positions)
            pos = pos + n
        elif op == 2:
            keep = torch.rand((b, n), generator=g) < 0.5
            plain.keep_last(n, keep)
            fast.keep_last(n, keep)
        elif op == 3:
            lengths = pos - int(torch.randint(0, 3, (1,), generator=g))
            rows = torch.rand(b, generator=g) < 0.5
            plain.truncate(lengths, rows)
            fast.truncate(lengths, rows)
        else:
            s = plain.summary().tolist()
            assert s == fast.summary().tolist()
            if s[1] > 0:
                plain.crop(s[1])
                fast.crop(s[1])
            elif step % 2:
                assert torch.equal(plain.compaction_plan(None, s[0]), fast.compaction_plan(None, s[0]))
        assert torch.equal(plain.valid, fast.valid) and torch.equal(plain.pos, fast.pos), step


@pytest.mark.parametrize("engine", ["fast", "static"])
@pytest.mark.parametrize("method", ["token_v3", "target"])
def test_one_host_sync_per_round(monkeypatch, engine, method):
    n = {"on": False, "count": 0}
    for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "cpu", "numpy", "nonzero"):
        original = getattr(torch.Tensor, name)

        def hooked(self, *a, _o=original, **k):
            if n["on"]:
                n["count"] += 1
            return _o(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, hooked)
    draft, target = toy_pair("llama")
    dec = make_decoder(draft, target, method, alpha=0.6 if method == "token_v3" else None, gamma=3, engine=engine)
    ids, mask = ragged_batch(PROMPTS, 5)
    n["on"] = True
    out = dec.generate(ids, mask, max_new_tokens=12, seed=0, eos_token_id=EOS)
    n["on"] = False
    assert out.stats.num_rounds >= 3
    assert n["count"] <= out.stats.num_rounds + 8


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


def test_engine_errors():
    draft, target = toy_pair("llama")
    with pytest.raises(ValueError, match="engine must be one of"):
        make_decoder(draft, target, "specdecode", engine="turbo")
    with pytest.raises(ValueError, match="speculative and single-model"):
        make_decoder(draft, target, "bild", alpha=0.3, engine="static")
    t5d, t5t = toy_pair("t5")
    with pytest.raises(ValueError, match="causal models"):
        make_decoder(t5d, t5t, "specdecode", engine="graph")

    class HiddenHead(TokenHead):
        wants_hidden = True

    with pytest.raises(ValueError, match="hidden states"):
        make_decoder(draft, target, "learned", alpha=0.1, head=HiddenHead(), engine="static")


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
