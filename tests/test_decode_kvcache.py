"""The KV cache (specref.decode.kvcache): slot tables and the bytes a cache allocates.

The slot table's compaction right-aligns the live slots; the preallocated table matches the plain one under
random operations; :func:`kv_cache_bytes` is what the cache really allocates.
"""

from __future__ import annotations

import torch

from specref.decode.adapters import ModelAdapter
from specref.decode.kvcache import PreallocSlotTable, SlotTable, kv_cache_bytes
from specref.decode.testing import tiny_model


def test_slot_table_compaction_right_aligns_live_slots():
    t = SlotTable(3, torch.device("cpu"))
    real = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]], dtype=torch.bool)
    pos = (real.long().cumsum(1) - 1).clamp_min(0)
    t.append(real, pos)
    t.keep_last(2, torch.tensor([[1, 0], [0, 0], [1, 1]], dtype=torch.bool))
    assert t.summary().tolist() == [3, 0, 2]  # max live 3; trailing junk per row 1, 2, 0
    t.truncate(torch.tensor([2, 99, 99]), rows=torch.tensor([True, False, False]))
    slots = t.compaction_plan(torch.tensor([2, 0]), 4)
    assert t.valid.tolist() == [[False, False, True, True], [False, False, True, True]]
    assert t.pos.tolist() == [[-1, -1, 0, 1], [-1, -1, 0, 1]]
    assert slots[:, 2:].tolist() == [[3, 4], [1, 2]]


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


def test_kv_cache_bytes_is_what_the_cache_allocates():
    for family in ("llama", "t5"):
        model = tiny_model(family, vocab=8, hidden=16, layers=2, heads=2)
        ad = ModelAdapter(model, "target")
        ids = torch.tensor([[3, 4, 5], [5, 6, 7]])
        session, pend, pos = ad.start(ids, torch.ones_like(ids), 8, 40)
        session.forward(pend.unsqueeze(1), pos.unsqueeze(1))
        allocated = sum(
            (layer.kbuf.numel() + layer.vbuf.numel()) * layer.kbuf.element_size() for layer in session.self_cache.layers
        )
        assert kv_cache_bytes(model.config, 2, 40, 4) - 2 * 40 * 9 == allocated, family
