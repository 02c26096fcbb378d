"""The lean round's batched uniforms (specref.decode.rounds) against :func:`specref.rng.keyed_uniform`."""

from __future__ import annotations

import torch

from specref.decode.rounds import round_uniforms as _round_uniforms
from specref.decode.rounds import stream_keys as _stream_keys
from specref.rng import STREAM_ACCEPT, STREAM_DRAFT, STREAM_SAMPLE, keyed_uniform


def test_round_uniforms_are_keyed_uniform_bit_for_bit():
    seeds = torch.tensor([0, 1, -5, 2**62, 123456789])
    start = torch.tensor([0, 3, 17, 2**40, 5])
    u = _round_uniforms(_stream_keys(seeds), start, 6)
    for s, stream in enumerate((STREAM_DRAFT, STREAM_ACCEPT, STREAM_SAMPLE)):
        ref = keyed_uniform(seeds, start.unsqueeze(1) + torch.arange(6), stream)
        assert torch.equal(u[:, s], ref)
