"""The default draft/target cost ratio ``c`` of the modeled latency: per-step parameter counts.

THEORY.md section 8 prices a draft forward at ``c`` target forwards. Without a measurement, the ratio of
the parameters one decoding step multiplies by is a deterministic proxy: a forward costs about two FLOPs
per parameter and, at small batch, reading each weight once. It ignores attention over the cache and any
hardware effect, so a measured ratio (``c=...``) is better when one exists.
"""

from __future__ import annotations

from typing import Any

__all__ = ["step_cost_ratio", "step_params"]


def step_params(model: Any) -> int:
    """Parameters one decoding step multiplies by: the decoder stack and the output projection.

    The encoder of a seq2seq model runs once per prompt (prefill, outside the per-token cost model) and an
    input embedding is a table lookup, so neither counts; a tied output projection does.
    """
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is emb
    total = 0
    for name, p in model.named_parameters():
        if name.startswith("encoder.") or p is emb:
            continue
        total += p.numel()
    return total + (emb.numel() if tied else 0)


#: the name specref.repro.hf used for it
_step_params = step_params


def step_cost_ratio(draft: Any, target: Any) -> float:
    """Deterministic proxy of ``c``: the ratio of per-step parameters of the draft and the target."""
    return step_params(draft) / step_params(target)
