"""The ``fast`` engine gives exactly the plain path's outputs (docs/performance.md), with one host sync a round.

* ``engine="fast"`` (preallocated slot tables, lean round, fused rule + verification, batched counters):
  identical tokens AND identical statistics, for every method, family, temperature, ragged batch with EOS;
* one host sync per round on the ``fast`` and ``static`` engines.

The helpers here (``_decode``, ``_assert_same``, the method list) are shared with the tests of the parts these
engines are made of: test_decode_static.py (static engines), test_decode_kvcache.py (slot tables),
test_decode_rounds.py (round uniforms), test_decode_fused.py (fused verification), test_decode_profile.py
(round profiler) and test_decode_engines.py (engine choices refused).
"""

from __future__ import annotations

import pytest
import torch

from specref.decode import make_decoder
from specref.decode.testing import TOY_PROMPTS, ragged_batch, toy_pair

PROMPTS = [*TOY_PROMPTS, (3,), (2, 2, 5, 1), (4, 6, 1, 0, 3, 3, 2)]
EOS = 7
COUNTS = ("tokens", "draft_calls", "target_calls", "rounds", "drafted", "accepted", "rejections",
          "defer_positions", "pos_reached", "pos_accepted")
BATCH = ("draft_forwards", "target_forwards", "prefill_forwards", "num_rounds")


class TokenHead:
    kind = "token"

    def estimate(self, q_rule, p_rule, q, p, features=None):
        return 0.5 * (q_rule + p_rule)


class MixtureHead:
    kind = "mixture"

    def estimate(self, q_rule, p_rule, q, p, features=None):
        a = 4 * (p_rule.amax(-1) - q_rule.amax(-1)) + 0.5
        return torch.stack([a, torch.zeros_like(a)], dim=-1)


METHODS = [
    ("specdecode", None, {}), ("token_v3", 0.6, {}), ("token_v3", 0.6, {"bonus": "target"}), ("token_v1", 0.1, {}),
    ("token_v2", 0.6, {}), ("lossy", 0.3, {}), ("lossy", 0.3, {"bonus": "target"}), ("chow", 0.3, {}),
    ("diff", 0.1, {}), ("opt", 0.5, {}), ("ensemble", 0.5, {}), ("learned", 0.05, {"head": TokenHead()}),
    ("learned", 0.5, {"head": MixtureHead()}), ("target", None, {}), ("draft", None, {}),
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


def _id(case):
    return "-".join(str(x) for x in case[:-1]) + ("-" + "-".join(f"{k}={v}" for k, v in case[-1].items()
                                                                if k != "head") if case[-1] else "")


@pytest.mark.parametrize("case", FAST_CASES, ids=[_id(c) for c in FAST_CASES])
def test_fast_engine_is_identical_to_plain(case):
    family, method, alpha, opts = case
    for t in (1.0, 0.0):
        ref = _decode(family, method, alpha, opts, "plain", t)
        _assert_same(_decode(family, method, alpha, opts, "fast", t), ref)


# ---- host syncs ---------------------------------------------------------------------------------------------


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
