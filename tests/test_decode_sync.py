"""At most ONE host synchronisation per round.

Every way a tensor can reach the host (``bool``, ``int``, ``float``, ``item``, ``tolist``, ``cpu``, ``numpy``,
``nonzero``) is counted during ``generate``; on a GPU each of these would stall the stream. Besides one per
round, only a fixed handful is allowed at the start (prompt validation) and, for SeqCascade, one at its
phase boundary. transformers' own mask construction would sync at every forward; the decoder hands it
prepared 4D masks instead (except for sliding-window models on the dynamic engines, which take transformers'
per-layer masks; the static engines build those too). T5 on the static engines: the encoder runs before the
first round, and no round syncs more than a causal model's.
"""

from __future__ import annotations

import pytest
import torch

from specref.decode import make_decoder
from specref.decode.gamma_policy import AdaptiveGamma
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
        ("llama", "specdecode", None, {"gamma_policy": "adaptive", "c": 0.3}),  # the policy reads the same sync
        ("llama", "specdecode", None, {"gamma_policy": "adaptive", "c": 2.0}),  # plain target steps (g = 0)
        ("t5", "token_v3", 0.6, {"gamma_policy": "adaptive", "engine": "fast", "c": 0.05}),
        # static engines: a block shape per g, and a lagging draft's catch-up in chunks (4 skipped tokens: 4 + 1)
        ("llama", "specdecode", None, {"gamma_policy": "adaptive", "engine": "static", "c": 0.3}),
        ("llama", "specdecode", None, {"gamma_policy": AdaptiveGamma(c=2.0, probe_every=4), "engine": "graph",
                                       "eos": None}),
        ("llama", "token_v3", 0.6, {"gamma_policy": "adaptive", "engine": "graph", "c": 0.05}),
        # T5 on the static engines: fixed gamma, the target alone, and a policy with plain target steps
        ("t5", "token_v3", 0.6, {"engine": "static"}),
        ("t5", "target", None, {"engine": "graph"}),
        ("t5", "specdecode", None, {"gamma_policy": AdaptiveGamma(c=2.0, probe_every=4), "engine": "graph",
                                    "eos": None}),
        ("t5", "token_v3", 0.6, {"gamma_policy": "adaptive", "engine": "static", "c": 0.05}),
    ],
)
def test_one_host_sync_per_round(count_syncs, family, method, alpha, opts):
    draft, target = toy_pair(family)
    opts = dict(opts)
    eos = opts.pop("eos", 7)
    dec = make_decoder(draft, target, method, alpha=alpha, gamma=3, **opts)
    ids, mask = ragged_batch(TOY_PROMPTS + ((3,), (2, 2, 5, 1)), 4)
    count_syncs["on"] = True
    out = dec.generate(ids, mask, max_new_tokens=12, seed=0, eos_token_id=eos, no_eos=eos is None)
    count_syncs["on"] = False
    extra = 2 if method == "seq_cascade" else 0  # its phase boundary (nonzero + the sub-batch's width)
    assert out.stats.num_rounds >= 3
    assert count_syncs["n"] <= out.stats.num_rounds + SETUP + extra, (count_syncs["n"], out.stats.num_rounds)
    if isinstance(opts.get("gamma_policy"), AdaptiveGamma):  # the probe round after 4 plain target steps ran
        assert out.stats.gamma_rounds[0] >= 4 and out.stats.gamma_rounds.get(1, 0) >= 1, out.stats.gamma_rounds


# ---- syncs hidden inside C++ ops -------------------------------------------------------------------------
# The Python hooks above miss a sync that happens inside an op (boolean-mask indexing and masked_select call
# nonzero internally; item() and bool() reach _local_scalar_dense). A dispatch-level mode sees every op, so
# it catches those too; on a CPU the decoder's one deliberate sync per round (a .tolist()) dispatches nothing.

SYNC_OPS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
            "aten.repeat_interleave.Tensor", "aten._unique2.default", "aten.unique_consecutive.default"}


class _SyncOps:
    """Counts ops that force a device -> host copy, while ``on``; ``found`` holds their names."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self
        self.on, self.found, self.rounds, self.ops = False, [], 0, 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func)
                bool_index = name.startswith("aten.index") and any(
                    isinstance(a, (list, tuple)) and any(isinstance(t, torch.Tensor) and t.dtype == torch.bool
                                                         for t in a)
                    for a in args)
                outer.ops += outer.on
                if outer.on and (name in SYNC_OPS or bool_index):
                    outer.found.append(name)
                return func(*args, **(kwargs or {}))

        self.mode = Mode()

    # the RoundProfiler hook interface: count inside rounds only (prompt validation may sync once per call)
    def bind(self, device) -> None: ...

    def round_begin(self) -> None:
        self.on = True
        self.rounds += 1

    def round_end(self) -> None:
        self.on = False

    def forward_begin(self, role: str) -> None: ...

    def forward_end(self, role: str) -> None: ...


def test_sync_op_detector_catches_hidden_syncs():
    """Negative control: the detector below must see the syncs that the Python-level hooks cannot."""
    det = _SyncOps()
    x = torch.arange(6.0)
    with det.mode:
        det.round_begin()
        _ = x[x > 2]  # boolean-mask indexing: a nonzero inside the op
        _ = torch.masked_select(x, x > 1)
        _ = x.sum().item()
        det.round_end()
        _ = x[x > 3]  # outside a round: not counted
    assert len(det.found) == 3, det.found


@pytest.mark.parametrize("engine", ["plain", "fast", "static", "graph"])
@pytest.mark.parametrize("method,alpha", [("specdecode", None), ("token_v3", 0.6), ("target", None)])
def test_no_sync_inside_ops_of_a_round(engine, method, alpha):
    _no_sync_inside_ops(engine, method, alpha, {})


@pytest.mark.parametrize("engine", ["fast", "static", "graph"])
@pytest.mark.parametrize("method,alpha,c", [("specdecode", None, 0.3), ("token_v3", 0.6, 0.05)])
def test_no_sync_inside_ops_of_a_round_under_a_policy(engine, method, alpha, c):
    _no_sync_inside_ops(engine, method, alpha, {"gamma_policy": "adaptive", "c": c})


@pytest.mark.parametrize("engine", ["static", "graph"])
@pytest.mark.parametrize("method,alpha,opts", [("specdecode", None, {}), ("token_v3", 0.6, {}), ("target", None, {}),
                                               ("specdecode", None, {"gamma_policy": "adaptive", "c": 2.0})])
def test_no_sync_inside_ops_of_a_t5_round_on_static_engines(engine, method, alpha, opts):
    """The relative bias from positions, the cross-attention read from fixed buffers, and the call's first
    (eager) forward that fills them: no op of a round syncs."""
    _no_sync_inside_ops(engine, method, alpha, opts, family="t5")


def test_sliding_window_models_on_static_engines_sync_once_per_round(count_syncs):
    """The dynamic engines let transformers build a sliding-window model's per-layer masks (a sync per forward);
    the static engines build them from the slot table, so a round syncs once, as for any other model."""
    from test_decode_adapters import build

    target, draft = build("qwen2", 0), build("qwen2", 1)  # windows of 5 positions on some layers
    dec = make_decoder(draft, target, "token_v3", alpha=0.6, gamma=3, engine="graph")
    ids, mask = ragged_batch(((5, 9, 13, 2, 20, 21, 7), (3,), (17, 18, 19, 20)), 3)
    count_syncs["on"] = True
    out = dec.generate(ids, mask, max_new_tokens=16, seed=0, no_eos=True)
    count_syncs["on"] = False
    assert out.stats.num_rounds >= 4
    assert count_syncs["n"] <= out.stats.num_rounds + SETUP, (count_syncs["n"], out.stats.num_rounds)


def _no_sync_inside_ops(engine, method, alpha, opts, family="llama"):
    draft, target = toy_pair(family)
    dec = make_decoder(draft, target, method, alpha=alpha, gamma=3, engine=engine, **opts)
    ids, mask = ragged_batch(TOY_PROMPTS + ((3,), (2, 2, 5, 1)), 4)
    det = _SyncOps()
    with det.mode:
        out = dec.generate(ids, mask, max_new_tokens=12, seed=0, eos_token_id=7, profiler=det)
    assert out.stats.num_rounds >= 3
    assert det.rounds >= 3 and det.ops > 50 * det.rounds  # the hooks fired and the mode saw the round's ops
    assert det.found == [], det.found
