"""The table of decoding engines: the one place an engine's properties are read.

:data:`specref.defaults.ENGINES` holds the names (torch-free, for the CLI); this module says what each
engine does. Every engine samples the same law from the same uniforms (see ``docs/performance.md``):

========  ============  =============  ======  ========  ==========
engine    preallocated  static shapes  graphs  compiled  lean round
========  ============  =============  ======  ========  ==========
plain     no            no             no      no        no
fast      yes           no             no      no        yes
static    yes           yes            no      no        yes
graph     yes           yes            yes     no        yes
compile   yes           yes            no      yes       yes
c.-graph  yes           yes            yes     yes       yes
========  ============  =============  ======  ========  ==========

* preallocated: slot tables over ``[B, capacity]`` buffers (no concatenation per forward);
* static shapes: every shape fixed for a whole call (:class:`~specref.decode.static.StaticSession`): causal
  models (sliding-window layers included) and T5 / mT5; no hidden states, no rollback by truncation;
* graphs: the model forwards replayed as CUDA graphs (on CUDA; eager elsewhere);
* compiled: the forward step under ``torch.compile(dynamic=False)``;
* lean round: the speculative round of :mod:`specref.decode.rounds` (batched uniforms, one non-finite check
  per round, fused verification, live-row counters) instead of the reference round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from specref.defaults import ENGINES, STATIC_ENGINES

__all__ = ["ENGINE_TABLE", "Engine", "check_static_models", "get_engine"]


@dataclass(frozen=True)
class Engine:
    """What one decoding engine preallocates, fixes, captures and compiles."""

    name: str
    preallocated: bool
    static_shapes: bool
    graphs: bool
    compiled: bool
    lean_round: bool


ENGINE_TABLE: dict[str, Engine] = {
    e.name: e
    for e in (
        Engine("plain", preallocated=False, static_shapes=False, graphs=False, compiled=False, lean_round=False),
        Engine("fast", preallocated=True, static_shapes=False, graphs=False, compiled=False, lean_round=True),
        Engine("static", preallocated=True, static_shapes=True, graphs=False, compiled=False, lean_round=True),
        Engine("graph", preallocated=True, static_shapes=True, graphs=True, compiled=False, lean_round=True),
        Engine("compile", preallocated=True, static_shapes=True, graphs=False, compiled=True, lean_round=True),
        Engine("compile-graph", preallocated=True, static_shapes=True, graphs=True, compiled=True, lean_round=True),
    )
}
# the names users see live in specref.defaults (torch-free); the table must describe exactly those
assert tuple(ENGINE_TABLE) == ENGINES, (tuple(ENGINE_TABLE), ENGINES)
assert tuple(n for n, e in ENGINE_TABLE.items() if e.static_shapes) == STATIC_ENGINES


def get_engine(engine: str | Engine) -> Engine:
    """The table's entry for an engine name (an :class:`Engine` is returned as is)."""
    if isinstance(engine, Engine):
        return engine
    spec = ENGINE_TABLE.get(engine) if isinstance(engine, str) else None
    if spec is None:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return spec


def check_static_models(engine: Engine, adapters: Any) -> None:
    """Static-shape engines build every attention mask themselves: full attention, or a sliding window given
    in positions (per layer type); for seq2seq models they also apply the decoder's output scale."""
    if not engine.static_shapes:
        return
    for ad in adapters:
        other = sorted(set(ad.layer_types) - {"full_attention", "sliding_attention"})
        if ad.sliding and (ad.window is None or other):
            kinds = f"layer types {other}" if other else "sliding layers without a window size"
            raise ValueError(
                f"engine {engine.name!r} builds full and sliding-window masks only; the {ad.role} "
                f"({ad.model_type!r}) has {kinds}: use engine='fast' or 'plain'"
            )
        if ad.is_seq2seq and ad.decoder_output_scale is None:
            raise ValueError(
                f"engine {engine.name!r} cannot tell whether this transformers release scales the {ad.role}'s "
                f"({ad.model_type!r}) decoder output (its config has no scale_decoder_outputs): use engine='fast' "
                "or 'plain'"
            )
