"""A slot-addressed KV cache for ragged speculative decoding with Hugging Face models.

Design (see ``docs/decoding.md``): every forward APPENDS its keys/values at the end of a per-layer buffer,
for every row at the same slots. A row that rejects drafts does not crop its cache; its rejected slots stay
and are masked out of attention by a per-row 2D mask over slots (``valid``), and every token gets an
explicit position id (its logical index in the row), so rotary / learned position embeddings never see the
holes. Holes are reclaimed lazily: trailing junk that is the same for every row is cropped (free), and when
holes pile up (or finished rows leave the batch) one gather right-aligns each row's valid slots.

Models whose attention depends on SLOT distances rather than position ids (T5's relative position bias,
sliding-window layers) need each row's valid slots to be contiguous: for them the session is
``contiguous`` and compacts after every forward that left ragged junk. Left padding (junk before all of a
row's tokens) is harmless for both: relative distances between a row's own tokens are unchanged.

The buffers are preallocated and grown geometrically, so appending does not copy the whole cache on every
forward the way ``DynamicCache``'s ``torch.cat`` does.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

__all__ = ["SlotCache", "SlotLayer", "SlotTable", "available_bytes", "kv_cache_bytes"]


def _first_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def kv_cache_bytes(config: Any, batch: int, capacity: int, element_bytes: int) -> int:
    """Bytes of the self-attention keys and values :class:`SlotCache` holds for ``batch`` rows of ``capacity``
    slots: ``2 * layers * batch * kv_heads * capacity * head_dim * element_bytes`` (decoder layers only for
    an encoder-decoder; its cross-attention cache does not grow with the output). The slot tables add
    ``batch * capacity`` booleans and positions, counted too."""
    if getattr(config, "is_encoder_decoder", False):
        layers = _first_int(config, "num_decoder_layers", "num_layers") or 1
        heads = _first_int(config, "num_heads", "num_attention_heads") or 1
        head_dim = _first_int(config, "d_kv", "head_dim") or 1
    else:
        layers = _first_int(config, "num_hidden_layers", "n_layer", "num_layers") or 1
        q_heads = _first_int(config, "num_attention_heads", "n_head", "num_heads") or 1
        heads = _first_int(config, "num_key_value_heads") or q_heads
        hidden = _first_int(config, "hidden_size", "n_embd", "d_model") or q_heads
        head_dim = _first_int(config, "head_dim") or max(hidden // q_heads, 1)
    kv = 2 * layers * batch * heads * capacity * head_dim * element_bytes
    return kv + batch * capacity * 9


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation on ``device`` can use: free GPU memory plus PyTorch's cached free blocks, or the
    host's available memory (psutil if installed, else /proc/meminfo, else ``os.sysconf``); None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) + int(torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def allocate_kv(layer: Any, key_states: Tensor, value_states: Tensor) -> None:
    """Give ``layer`` zeroed ``kbuf`` / ``vbuf`` ``[B, H, layer.capacity, D]`` shaped after its first update's
    keys / values ``[B, H, n, D]`` (the lazy initialisation of every fixed-capacity KV layer here)."""
    layer.dtype, layer.device = key_states.dtype, key_states.device
    b, h, _, dk = key_states.shape
    layer.kbuf = key_states.new_zeros((b, h, layer.capacity, dk))
    layer.vbuf = value_states.new_zeros((b, value_states.shape[1], layer.capacity, value_states.shape[-1]))
    layer.is_initialized = True


class SlotLayer(DynamicLayer):
    """One attention layer's keys/values ``[B, H, capacity, D]``; the first ``length`` slots are filled."""

    is_sliding = False
    is_croppable = True

    def __init__(self, capacity: int = 64) -> None:
        super().__init__()
        self.capacity = max(int(capacity), 1)
        self.length = 0
        self.kbuf: Tensor | None = None
        self.vbuf: Tensor | None = None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        allocate_kv(self, key_states, value_states)
        self._refresh()

    def _refresh(self) -> None:
        if self.kbuf is not None:
            self.keys = self.kbuf[:, :, : self.length]
            self.values = self.vbuf[:, :, : self.length]

    def _grow(self, need: int) -> None:
        cap = max(need, int(self.capacity * 1.5) + 16)
        for name in ("kbuf", "vbuf"):
            old = getattr(self, name)
            new = old.new_zeros((*old.shape[:2], cap, old.shape[-1]))
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)
        self.capacity = cap

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self.length + n > self.capacity:
            self._grow(self.length + n)
        self.kbuf[:, :, self.length : self.length + n] = key_states
        self.vbuf[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._refresh()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def crop(self, tokens_to_remove: int) -> None:
        self.length = max(0, self.length - abs(int(tokens_to_remove)))
        self._refresh()

    def rebuild(self, rows: Tensor | None, slots: Tensor) -> None:
        """Keep batch rows ``rows`` (None: all) and, per row, the slots ``slots`` ``[B', L']`` in order."""
        if not self.is_initialized:
            return
        new_len = slots.shape[1]
        for name in ("kbuf", "vbuf"):
            buf = getattr(self, name)[:, :, : self.length]
            if rows is not None:
                buf = buf.index_select(0, rows)
            idx = slots[:, None, :, None].expand(buf.shape[0], buf.shape[1], new_len, buf.shape[-1])
            gathered = buf.gather(2, idx)
            cap = max(self.capacity, new_len)
            new = gathered.new_zeros((*gathered.shape[:2], cap, gathered.shape[-1]))
            new[:, :, :new_len] = gathered
            setattr(self, name, new)
        self.capacity = self.kbuf.shape[2]
        self.length = new_len
        self._refresh()

    def batch_select_indices(self, indices: Tensor) -> None:
        if self.is_initialized:
            self.kbuf = self.kbuf[indices]
            self.vbuf = self.vbuf[indices]
            self._refresh()

    def reorder_cache(self, beam_idx: Tensor) -> None:
        self.batch_select_indices(beam_idx)


class SlotCache(DynamicCache):
    """A :class:`DynamicCache` made of :class:`SlotLayer` s (one per decoder layer)."""

    def __init__(self, capacity: int = 64) -> None:  # noqa: D107 - see class docstring
        # Layers are created lazily, one per attention layer that writes to the cache.
        Cache.__init__(self, layer_class_to_replicate=partial(SlotLayer, capacity))

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def crop(self, tokens_to_remove: int) -> None:
        for layer in self.layers:
            layer.crop(tokens_to_remove)

    def rebuild(self, rows: Tensor | None, slots: Tensor) -> None:
        for layer in self.layers:
            layer.rebuild(rows, slots)


def slot_summary(valid: Tensor, rev: Tensor | None = None) -> Tensor:
    """``[3]`` long on device from a slot table's ``valid`` ``[B, L]``: (max live slots per row, min and max
    trailing junk slots per row). ``rev``: ``L - 1, ..., 1, 0`` if the caller has it."""
    length = valid.shape[1]
    if length == 0 or valid.shape[0] == 0:
        return torch.zeros(3, dtype=torch.long, device=valid.device)
    n = valid.sum(dim=1)
    # trailing junk = length - 1 - (last live slot), i.e. the least L - 1 - j over live slots j (L if none)
    if rev is None:
        rev = torch.arange(length - 1, -1, -1, device=valid.device)
    trail = torch.where(valid, rev, length).amin(dim=1)
    lo, hi = torch.aminmax(trail)
    return torch.stack([n.max(), lo, hi])


def plan_compaction(
    valid: Tensor,  # [B, L] bool
    pos: Tensor,  # [B, L] long, -1 where not valid
    rows: Tensor | None,  # [B'] rows to keep (None: all)
    new_len: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-align each kept row's live slots into ``[0, new_len)``: returns ``(slots [B', new_len]`` (source
    slot of every destination slot, for the KV buffers), ``valid [B', new_len]``, ``pos [B', new_len])``."""
    if rows is not None:
        valid, pos = valid.index_select(0, rows), pos.index_select(0, rows)
    b, length = valid.shape
    n = valid.sum(dim=1, keepdim=True)
    rank = valid.long().cumsum(dim=1) - 1
    dest = torch.where(valid, new_len - n + rank, torch.full_like(rank, new_len))
    src = torch.arange(length, device=valid.device).expand(b, length)
    slots = torch.zeros((b, new_len + 1), dtype=torch.long, device=valid.device)
    slots.scatter_(1, dest, src)
    slots = slots[:, :new_len].contiguous()
    new_valid = torch.arange(new_len, device=valid.device).unsqueeze(0) >= (new_len - n)
    new_pos = torch.where(new_valid, pos.gather(1, slots), torch.full_like(slots, -1))
    return slots, new_valid, new_pos


class SlotTable:
    """Per-row bookkeeping of a :class:`SlotCache`: which slots hold a live token of the row.

    ``valid`` ``[B, L]`` bool: slot holds a live token. ``pos`` ``[B, L]`` long: its logical position in
    the row (``-1`` where not valid), used for position-based rollback.
    """

    def __init__(self, batch: int, device: torch.device) -> None:
        self.valid = torch.zeros((batch, 0), dtype=torch.bool, device=device)
        self.pos = torch.zeros((batch, 0), dtype=torch.long, device=device)

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def append(self, real: Tensor, positions: Tensor) -> None:
        """Record ``n`` new slots ``[B, n]``: ``real`` marks live ones, ``positions`` their positions."""
        self.valid = torch.cat([self.valid, real], dim=1)
        self.pos = torch.cat([self.pos, torch.where(real, positions, torch.full_like(positions, -1))], dim=1)

    def keep_last(self, n: int, keep: Tensor) -> None:
        """Of the last ``n`` slots, keep only those where ``keep`` ``[B, n]`` is true."""
        if n == 0:
            return
        tail = self.valid[:, -n:] & keep
        self.valid = torch.cat([self.valid[:, :-n], tail], dim=1)
        self.pos = torch.where(self.valid, self.pos, torch.full_like(self.pos, -1))

    def truncate(self, lengths: Tensor, rows: Tensor | None = None) -> None:
        """Invalidate, in every row (or only where ``rows`` ``[B]`` is true), slots at positions >= ``lengths``."""
        cut = self.pos >= lengths.unsqueeze(1)
        if rows is not None:
            cut = cut & rows.unsqueeze(1)
        self.valid = self.valid & ~cut
        self.pos = torch.where(self.valid, self.pos, torch.full_like(self.pos, -1))

    def summary(self) -> Tensor:
        """``[3]`` long on device: see :func:`slot_summary`."""
        return slot_summary(self.valid)

    def crop(self, n: int) -> None:
        if n > 0:
            self.valid = self.valid[:, :-n]
            self.pos = self.pos[:, :-n]

    def compaction_plan(self, rows: Tensor | None, new_len: int) -> Tensor:
        """Source slot of every destination slot ``[B', new_len]`` that right-aligns each row's live slots.

        Updates the table; the caller applies the same plan to the KV buffers.
        """
        slots, self.valid, self.pos = plan_compaction(self.valid, self.pos, rows, new_len)
        return slots

    def select_rows(self, rows: Tensor) -> None:
        self.valid = self.valid.index_select(0, rows)
        self.pos = self.pos.index_select(0, rows)


class PreallocSlotTable(SlotTable):
    """A :class:`SlotTable` over preallocated ``[B, capacity]`` buffers (the ``fast`` engine).

    Same contents and semantics as :class:`SlotTable`, but appending a block writes into the buffers
    instead of concatenating the whole table, rollback edits only the affected slots, and ``valid`` /
    ``pos`` are views. Invariant (as in the plain table): ``pos == -1`` wherever ``valid`` is false.
    """

    def __init__(self, batch: int, device: torch.device, capacity: int = 64) -> None:
        self._cap = max(int(capacity), 1)
        self._v = torch.zeros((batch, self._cap), dtype=torch.bool, device=device)
        self._p = torch.full((batch, self._cap), -1, dtype=torch.long, device=device)
        self._len = 0
        # the position of a junk slot, and slot j's distance _cap - 1 - j from the buffer's end (for summary)
        self._junk_pos = torch.tensor(-1, dtype=torch.long, device=device)
        self._rev = torch.arange(self._cap - 1, -1, -1, device=device)

    @property
    def valid(self) -> Tensor:  # type: ignore[override]
        return self._v[:, : self._len]

    @property
    def pos(self) -> Tensor:  # type: ignore[override]
        return self._p[:, : self._len]

    @property
    def length(self) -> int:
        return self._len

    def _reserve(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, int(self._cap * 1.5) + 16)
        v = torch.zeros((self._v.shape[0], cap), dtype=torch.bool, device=self._v.device)
        p = torch.full((self._p.shape[0], cap), -1, dtype=torch.long, device=self._p.device)
        v[:, : self._len] = self.valid
        p[:, : self._len] = self.pos
        self._v, self._p, self._cap = v, p, cap

    def append(self, real: Tensor | None, positions: Tensor) -> None:
        """As :meth:`SlotTable.append`; ``real=None`` means every new slot is live (no mask to read)."""
        n = positions.shape[1]
        self._reserve(self._len + n)
        s, e = self._len, self._len + n
        if real is None:
            self._v[:, s:e] = True
            self._p[:, s:e] = positions
        else:
            self._v[:, s:e] = real
            self._p[:, s:e] = torch.where(real, positions, torch.full_like(positions, -1))
        self._len = e

    def keep_last(self, n: int, keep: Tensor) -> None:
        if n == 0:
            return
        tail = self._v[:, self._len - n : self._len]
        tail &= keep
        pos = self._p[:, self._len - n : self._len]
        torch.where(tail, pos, self._junk_pos, out=pos)

    def summary(self) -> Tensor:
        if self._rev.shape[0] != self._cap:
            self._rev = torch.arange(self._cap - 1, -1, -1, device=self._v.device)
        return slot_summary(self.valid, self._rev[self._cap - self._len :])

    def truncate(self, lengths: Tensor, rows: Tensor | None = None) -> None:
        pos = self.pos
        cut = pos >= lengths.unsqueeze(1)
        if rows is not None:
            cut = cut & rows.unsqueeze(1)
        self.valid.masked_fill_(cut, False)
        pos.masked_fill_(cut, -1)

    def crop(self, n: int) -> None:
        if n > 0:
            self._len -= n

    def compaction_plan(self, rows: Tensor | None, new_len: int) -> Tensor:
        slots, new_valid, new_pos = plan_compaction(self.valid, self.pos, rows, new_len)
        if rows is not None and rows.shape[0] != self._v.shape[0]:
            self._v = torch.zeros((rows.shape[0], self._cap), dtype=torch.bool, device=self._v.device)
            self._p = torch.full((rows.shape[0], self._cap), -1, dtype=torch.long, device=self._p.device)
        self._reserve(new_len)
        self._v[:, :new_len] = new_valid
        self._p[:, :new_len] = new_pos
        self._len = new_len
        return slots

    def select_rows(self, rows: Tensor) -> None:
        self._v = self._v.index_select(0, rows)
        self._p = self._p.index_select(0, rows)
