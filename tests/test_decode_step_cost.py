"""The per-step parameter count (specref.decode.step_cost) behind the default cost ratio ``c``."""

from __future__ import annotations

import pytest

from specref.decode.step_cost import step_cost_ratio, step_params
from specref.decode.testing import tiny_model


def test_step_params_count_the_decoder_stack_and_the_output_projection():
    causal = tiny_model("llama", vocab=8, hidden=16)
    total = sum(p.numel() for p in causal.parameters())
    assert step_params(causal) == total - causal.get_input_embeddings().weight.numel()
    t5 = tiny_model("t5", vocab=8, hidden=16)
    enc = sum(p.numel() for n, p in t5.named_parameters() if n.startswith("encoder."))
    emb = t5.get_input_embeddings().weight
    tied = t5.get_output_embeddings().weight is emb  # then the table is also the output projection
    assert step_params(t5) == sum(p.numel() for p in t5.parameters()) - enc - (0 if tied else emb.numel())
    small, big = tiny_model("llama", hidden=16), tiny_model("llama", hidden=32, heads=2)
    assert step_cost_ratio(small, big) == pytest.approx(step_params(small) / step_params(big)) and step_cost_ratio(
        small, big
    ) < 1
