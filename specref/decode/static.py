"""Static-shape sessions: fixed-capacity KV buffers and slot tables, so a forward can be a CUDA graph.

The dynamic :class:`~specref.decode.adapters.Session` appends to a cache whose length changes every step;
that is cheap in eager mode but every forward has a new shape, so it can be neither captured as a CUDA graph
nor compiled once. A :class:`StaticSession` keeps every shape fixed for a whole ``generate`` call:

* physical batch ``B0`` (the prompts' batch): rows that finish stay in the buffers as dead rows (masked,
  fed a dummy token) instead of leaving them, and the session maps the decoder's live rows to their
  physical rows;
* KV buffers ``[B0, H, capacity, D]`` and slot tables ``[B0, capacity]``; a forward of ``n`` tokens writes
  slots ``[length, length + n)`` through a device index (``index_copy_``), so the write position is data,
  not shape; attention always spans the whole capacity under a mask that shows each query the live slots
  of its row up to its own slot;
* ``length`` is host-side bookkeeping (each forward appends ``n`` slots: no sync needed); trailing junk is
  cropped, and holes are compacted in place only when the next round would not fit.

Engines (``engine=`` of the decoders): ``static`` runs the step eagerly; ``graph`` captures one CUDA graph
per block size ``n`` (after two eager warm-up calls) and replays it; ``compile`` wraps the step in
``torch.compile(dynamic=False)``; ``compile-graph`` captures the compiled step. Graph engines need CUDA:
on a CPU they run the step eagerly (same results), so the static plumbing is testable anywhere. Buffers
and graphs are cached per model, batch, capacity and engine, and reused by later ``generate`` calls.

A fixed gamma uses two widths: the draft's one-token steps and the target's block of ``gamma + 1``. Under a
block-size policy (:mod:`specref.decode.gamma_policy`) each model uses widths in ``1..gamma + 1`` only (the
target's blocks of ``g + 1`` and its plain steps; the draft's steps, and its catch-up after plain target steps
in chunks of at most ``gamma + 1``), each captured or compiled the first time it is used, so at most
``gamma + 1`` graphs or compiled shapes per model; no block is padded to a wider shape (a padded block would
cost the target the full ``gamma + 1`` positions that a shorter round saves at large batch).

Sliding-window layers (Mistral, Qwen2, Gemma 2/3, ...) get the same mask with a window: a query at position
``p`` also needs ``p - position < window`` for each key, read off the slot table's positions, so holes left
by rejected drafts do not shift the window as they would if it were counted in slots. Models whose layers
differ (a ``layer_types`` list) get one mask per layer type, the dict transformers' own mask code builds.

Encoder-decoders (T5, mT5): the encoder runs once per call (eagerly, at its own width) and its output is
copied into a buffer of ``enc_cap`` positions (the width rounded up, masked beyond it), so the cross-attention
shapes are fixed too. The cross-attention keys/values live in transformers' :class:`StaticLayer` s inside an
:class:`EncoderDecoderCache` whose self-attention half is the static cache above: the call's first decoder
forward runs eagerly and lets T5 compute them (``is_updated`` cleared at the call's start); every later
forward, captured or compiled, reads them from those fixed buffers. T5's self-attention has no position ids:
its relative position bias is computed inside the model from *slot* distances and one cache length per
forward (``compute_bias(n, key_len, past_seen_tokens)``), which is wrong for a buffer with holes and rows of
different lengths, and would bake a Python int into a captured graph. So the static step drives the
decoder's blocks itself (:meth:`StaticEngine._decoder_step`): embeddings, then each ``T5Block`` with an
explicit mask and the relative bias of every row computed from its logical positions with T5's own bucket
function and bias table (the same values the dynamic session's contiguous rows get), then the final norm and
the LM head. Attention, the cross-attention cache logic and the feed-forward layers stay transformers'.

Outputs equal the dynamic session's up to floating-point rounding (attention reduces over the whole
capacity, where masked slots contribute exact zeros, but kernels may sum in another order); tests check
that sampled tokens are identical.
"""

from __future__ import annotations

import warnings
import weakref
from functools import partial
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, EncoderDecoderCache, StaticLayer

from specref.decode.engines import Engine, check_static_models, get_engine
from specref.decode.kvcache import allocate_kv, plan_compaction, slot_summary
from specref.decode.session import ForwardOut

__all__ = ["StaticEngine", "StaticSession", "clear_static_engines"]

#: Eager calls of a block size before its CUDA graph is captured (lazy initialisation, cuBLAS workspaces).
WARMUP_CALLS = 2
#: Static engines kept per model (each holds KV buffers and graphs); the least recently used is dropped.
MAX_ENGINES_PER_MODEL = 4
_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_static_engines() -> None:
    """Drop every cached static engine (frees their buffers and graphs)."""
    _ENGINES.clear()


def _round_up(x: int, m: int = 128) -> int:
    return ((int(x) + m - 1) // m) * m


#: Encoder widths are rounded up to a multiple of this (widths that round alike share a cached engine).
ENCODER_ROUND = 64


class _Holder:
    """Shared, mutable state the KV layers read during a forward: the device write index."""

    def __init__(self) -> None:
        self.widx: Tensor | None = None
        self.length = 0


class StaticKVLayer(DynamicLayer):
    """Keys/values ``[B0, H, capacity, D]``; ``update`` writes at the holder's device index."""

    is_sliding = False
    is_compileable = True

    def __init__(self, holder: _Holder, capacity: int) -> None:
        super().__init__()
        self.holder = holder
        self.capacity = capacity
        self.kbuf: Tensor | None = None
        self.vbuf: Tensor | None = None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        allocate_kv(self, key_states, value_states)
        self.keys, self.values = self.kbuf, self.vbuf

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        idx = self.holder.widx
        self.kbuf.index_copy_(2, idx, key_states)
        self.vbuf.index_copy_(2, idx, value_states)
        return self.kbuf, self.vbuf

    def get_seq_length(self) -> int:
        return self.holder.length

    def get_max_length(self) -> int:
        return self.capacity

    def compact(self, slots: Tensor, length: int) -> None:
        """In place: slot ``j < new_len`` of row ``b`` takes slot ``slots[b, j]`` (addresses unchanged)."""
        if not self.is_initialized:
            return
        new_len = slots.shape[1]
        for buf in (self.kbuf, self.vbuf):
            idx = slots[:, None, :, None].expand(buf.shape[0], buf.shape[1], new_len, buf.shape[-1])
            gathered = buf[:, :, :length].gather(2, idx)
            buf[:, :, :new_len] = gathered


class StaticKVCache(DynamicCache):
    """A cache of :class:`StaticKVLayer` s sharing one :class:`_Holder`.

    ``constant_length``: :meth:`get_seq_length` answers 0 instead of the holder's length. T5's attention reads
    the length only to build the relative bias, which the static step passes in itself; a constant keeps the
    changing length out of compiled guards (a recompilation per step) and out of captured graphs."""

    def __init__(self, holder: _Holder, capacity: int, constant_length: bool = False) -> None:  # noqa: D107
        Cache.__init__(self, layer_class_to_replicate=partial(StaticKVLayer, holder, capacity))
        self.holder = holder
        self.constant_length = constant_length

    @property
    def is_compileable(self) -> bool:  # type: ignore[override]
        return True

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.constant_length else self.holder.length


class _Graph:
    """Static inputs, output and (once captured) the CUDA graph of one block size."""

    def __init__(self, b0: int, n: int, device: torch.device) -> None:
        self.tok = torch.zeros((b0, n), dtype=torch.long, device=device)
        self.pos = torch.zeros((b0, n), dtype=torch.long, device=device)
        self.real = torch.ones((b0, n), dtype=torch.bool, device=device)
        self.widx = torch.arange(n, dtype=torch.long, device=device)
        self.out: Tensor | None = None
        self.graph: Any = None
        self.calls = 0


class StaticEngine:
    """Buffers, step function and graphs of one model at one (batch, capacity, engine)."""

    def __init__(self, adapter: Any, batch: int, capacity: int, engine: str, enc_cap: int | None = None) -> None:
        spec = get_engine(engine)
        dev = adapter.device
        self.adapter, self.model = adapter, adapter.model
        self.b0, self.capacity, self.engine = batch, capacity, engine
        self.cuda = dev.type == "cuda"
        self.valid = torch.zeros((batch, capacity), dtype=torch.bool, device=dev)
        self.pos = torch.full((batch, capacity), -1, dtype=torch.long, device=dev)
        self.kv_index = torch.arange(capacity, dtype=torch.long, device=dev)
        self.holder = _Holder()
        #: the (decoder's) self-attention cache
        self.kv = StaticKVCache(self.holder, capacity, constant_length=adapter.is_seq2seq)
        self.cache: Any = self.kv
        #: seq2seq: encoder positions of the static encoder buffers, and whether the next forward must compute
        #: the cross-attention keys/values of a new call (it then runs eagerly)
        self.enc_cap = enc_cap
        self.cross_pending = False
        if adapter.is_seq2seq:
            if enc_cap is None:
                raise ValueError("a seq2seq static engine needs the encoder width (enc_cap)")
            # transformers' own static layers hold the cross-attention keys/values (fixed addresses, reset in
            # place per call); T5 fills them in the call's first forward and reads them afterwards
            self.cross = Cache(layer_class_to_replicate=partial(StaticLayer, max_cache_len=enc_cap))
            self.cache = EncoderDecoderCache(self.kv, self.cross)
            self.enc_hidden: Tensor | None = None  # [B0, enc_cap, d_model]
            self.enc_valid = torch.zeros((batch, enc_cap), dtype=torch.bool, device=dev)
            self.enc_mask: Tensor | None = None  # [B0, 1, 1, enc_cap] in the attention's mask format
            self.decoder = adapter.model.get_decoder()
            #: the self-attention that owns T5's relative position bias table (the first decoder block's)
            self.rel_attn = self.decoder.block[0].layer[0].SelfAttention
            self.output_scale = adapter.decoder_output_scale
        self.graphs: dict[int, _Graph] = {}
        self.owner: Any = lambda: None  # weak reference to the session using the engine
        self.live_mask = torch.ones(batch, dtype=torch.bool, device=dev)
        self.use_graphs = spec.graphs and self.cuda
        self.graphs_failed: str | None = None
        self.pool: Any = None
        self._compiled: Any = None
        if spec.compiled:
            try:
                import torch._dynamo as dynamo

                # one compiled entry per engine and width: up to gamma + 1 widths under a block-size policy,
                # for each cached engine of each model (a process may time several batch sizes)
                for name in ("cache_size_limit", "recompile_limit"):
                    if hasattr(dynamo.config, name):
                        setattr(dynamo.config, name, max(getattr(dynamo.config, name), 256))
            except Exception:  # pragma: no cover - best effort
                pass
            self._compiled = torch.compile(self._step, dynamic=False)

    # ---- the step: tables, mask, model --------------------------------------------------------------
    def _format(self, allowed: Tensor) -> Tensor:
        """``allowed`` ``[B0, n, k]`` bool as the attention's 4D mask: boolean for sdpa, additive for eager."""
        allowed = allowed.unsqueeze(1)
        if not self.adapter.eager:
            return allowed
        dt = self.adapter.dtype
        return torch.zeros(allowed.shape, dtype=dt, device=allowed.device).masked_fill(~allowed, torch.finfo(dt).min)

    def _step(self, tok: Tensor, pos: Tensor, real: Tensor, widx: Tensor, last_only: bool = False) -> Tensor:
        ad = self.adapter
        self.valid.index_copy_(1, widx, real)
        self.pos.index_copy_(1, widx, torch.where(real, pos, torch.full_like(pos, -1)))
        w = widx.unsqueeze(1)  # [n, 1]
        kv = self.kv_index.unsqueeze(0)  # [1, cap]
        causal = self.valid.unsqueeze(1) & (kv <= w).unsqueeze(0)  # [B0, n, cap]: live slots up to the query's
        own = (kv == w).unsqueeze(0)  # a query always sees itself (junk queries are never fully masked)
        if ad.is_seq2seq:
            return self._decoder_step(tok, pos, self._format(causal | own))
        full = self._format(causal | own)
        mask: Any = full
        if ad.sliding:
            # the window counts positions, not slots: holes left by rejected drafts do not shift it
            near = (pos.unsqueeze(2) - self.pos.unsqueeze(1)) < ad.window
            window = self._format((causal & near) | own)
            if ad.layer_types:  # one mask per layer type, as the model's own mask code would build them
                mask = {t: window if t == "sliding_attention" else full for t in {"full_attention", *ad.layer_types}}
            else:  # every layer slides (Mistral, Phi-3)
                mask = window
        p = pos if ad.context is None else pos.clamp(max=ad.context - 1)
        kwargs: dict[str, Any] = {ad.cache_kwarg: self.cache, "use_cache": True, "return_dict": True}
        if last_only:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=tok, attention_mask=mask, position_ids=p, **kwargs)
        return out.logits

    def _decoder_step(self, tok: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        """Logits of a T5 decoder block of tokens ``tok`` at positions ``pos`` ``[B0, n]``, self-attention mask
        ``mask`` ``[B0, 1, n, cap]`` (see the module docstring for why the blocks are driven from here)."""
        ad, dec, attn = self.adapter, self.decoder, self.rel_attn
        # relative position bias from logical positions: key position minus query position, per row; slots that
        # are not live get some finite value and are masked
        rel = self.pos.unsqueeze(1) - pos.unsqueeze(2)  # [B0, n, cap]
        bucket = attn._relative_position_bucket(
            rel,
            bidirectional=not attn.is_decoder,
            num_buckets=attn.relative_attention_num_buckets,
            max_distance=attn.relative_attention_max_distance,
        )
        bias = attn.relative_attention_bias(bucket).permute(0, 3, 1, 2)  # [B0, H, n, cap]
        hidden = dec.dropout(dec.embed_tokens(tok))
        kw = {ad.cache_kwarg: self.cache}
        for block in dec.block:
            # (hidden, self-attention mask, its bias, encoder states, cross-attention mask, cross bias): every
            # block gets the same self-attention bias, as T5 shares the first block's; the cross bias is zero
            hidden = block(hidden, mask, bias, self.enc_hidden, self.enc_mask, None, **kw)[0]
        hidden = dec.dropout(dec.final_layer_norm(hidden))
        if self.output_scale != 1.0:
            hidden = hidden * self.output_scale
        return self.model.lm_head(hidden)

    def set_encoder(self, hidden: Tensor, mask: Tensor) -> None:
        """A new call's encoder output ``[B0, S, d]`` and mask ``[B0, S]`` (``S <= enc_cap``): copied into the
        fixed buffers (masked beyond ``S``); the cross-attention keys/values are recomputed by the next forward."""
        s = hidden.shape[1]
        if self.enc_hidden is None:
            self.enc_hidden = hidden.new_zeros((self.b0, self.enc_cap, hidden.shape[2]))
        else:
            self.enc_hidden.zero_()
        self.enc_hidden[:, :s].copy_(hidden)
        self.enc_valid.zero_()
        self.enc_valid[:, :s].copy_(mask)
        fmt = self._format(self.enc_valid.unsqueeze(1))  # [B0, 1, 1, enc_cap]
        if self.enc_mask is None:
            self.enc_mask = fmt
        else:
            self.enc_mask.copy_(fmt)
        for layer in self.cross.layers:
            layer.reset()  # zeroed in place: captured graphs keep reading the same addresses
        self.cache.is_updated.clear()
        self.cross_pending = True

    def _phys(self, x: Tensor, live: Tensor | None, fill: Any = 0) -> Tensor:
        if live is None:
            return x
        out = torch.full((self.b0, *x.shape[1:]), fill, dtype=x.dtype, device=x.device)
        return out.index_copy_(0, live, x)

    def run(self, tokens: Tensor, positions: Tensor, length: int, live: Tensor | None = None,
            real: Tensor | None = None, *, eager: bool = False, last_only: bool = False) -> Tensor:
        """Logits ``[B0, n, V]`` of a block written at slots ``[length, length + n)``.

        ``tokens`` / ``positions`` ``[B', n]`` belong to the physical rows ``live`` (None: all rows); dead
        rows are fed junk. ``real`` ``[B', n]`` marks live slots (None: all). ``eager`` forces the plain
        step (prefill: its width varies). With graphs the result aliases the graph's static output: read it
        before the next forward of the same block size.
        """
        n = tokens.shape[1]
        # seq2seq: the call's first forward computes the cross-attention keys/values, eagerly (captured graphs
        # and compiled steps only read them)
        first, self.cross_pending = self.cross_pending, False
        if eager or first or real is not None or not (self.use_graphs and self.graphs_failed is None):
            tok, pos = self._phys(tokens, live), self._phys(positions, live)
            real_p = self.live_mask.unsqueeze(1).expand(self.b0, n)
            if real is not None:
                real_p = real_p & self._phys(real, live, False)
            widx = self.kv_index[length : length + n]
            self.holder.widx, self.holder.length = widx, length
            if last_only:
                return self._step(tok, pos, real_p, widx, True)
            if eager or first or self._compiled is None:
                return self._step(tok, pos, real_p, widx)
            if not tok.is_inference():  # the prompt's own tensors: one kind of input for the compiled step
                tok, pos = tok.clone(), pos.clone()
            return self._compiled(tok, pos, real_p, widx)
        g = self.graphs.get(n)
        if g is None:
            g = self.graphs[n] = _Graph(self.b0, n, self.valid.device)
            g.real.copy_(self.live_mask.unsqueeze(1).expand_as(g.real))
        if live is None:
            g.tok.copy_(tokens)
            g.pos.copy_(positions)
        else:
            g.tok.index_copy_(0, live, tokens)
            g.pos.index_copy_(0, live, positions)
        g.widx.copy_(self.kv_index[length : length + n])
        self.holder.widx, self.holder.length = g.widx, length
        fn = self._compiled if self._compiled is not None else self._step
        if g.graph is not None:
            g.graph.replay()
            return g.out
        g.calls += 1
        if g.calls <= WARMUP_CALLS:  # eager, on the current stream: real steps that also initialise lazily
            return fn(g.tok, g.pos, g.real, g.widx)
        try:
            g.graph = self._capture(fn, g)
        except Exception as err:  # capture failed: stay eager for this engine, say why once
            self.graphs_failed = f"{type(err).__name__}: {err}"
            warnings.warn(f"CUDA graph capture failed, running eagerly: {self.graphs_failed}", stacklevel=3)
            torch.cuda.synchronize()
            self.holder.widx = g.widx
            return fn(g.tok, g.pos, g.real, g.widx)
        g.graph.replay()
        return g.out

    def _capture(self, fn: Any, g: _Graph) -> Any:
        """Capture ``fn`` on ``g``'s static inputs as a CUDA graph (sets ``g.out``); returns the graph."""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            g.out = fn(g.tok, g.pos, g.real, g.widx)
        return graph

    def set_live(self, live_mask: Tensor) -> None:
        """Dead rows: drop their slots, and make every graph write them as junk from now on."""
        self.live_mask = live_mask
        self.valid &= live_mask.unsqueeze(1)
        self.pos.masked_fill_(~self.valid, -1)
        for g in self.graphs.values():
            g.real.copy_(live_mask.unsqueeze(1).expand_as(g.real))

    def compact(self, length: int, new_len: int) -> None:
        """Right-align every row's live slots into ``[0, new_len)``, in place."""
        slots, valid, pos = plan_compaction(self.valid[:, :length], self.pos[:, :length], None, new_len)
        self.valid[:, :new_len] = valid
        self.pos[:, :new_len] = pos
        for layer in self.kv.layers:
            layer.compact(slots, length)


def _engine_for(adapter: Any, batch: int, capacity: int, engine: str, owner: Any,
                enc_cap: int | None = None) -> StaticEngine:
    """A cached engine for these shapes that no live session is using (the same model may serve as draft and
    target in one call: each session gets its own buffers)."""
    per_model = _ENGINES.setdefault(adapter.model, {})
    slot = 0
    while True:
        key = (batch, capacity, engine, adapter.dtype, enc_cap, slot)
        eng = per_model.get(key)
        if eng is None or eng.owner() is None:
            break
        slot += 1
    eng = per_model.pop(key, None)
    if eng is None:
        while len(per_model) >= MAX_ENGINES_PER_MODEL:
            oldest = next((k for k, e in per_model.items() if e.owner() is None), None)
            if oldest is None:
                break
            per_model.pop(oldest)
        eng = StaticEngine(adapter, batch, capacity, engine, enc_cap)
    eng.owner = weakref.ref(owner)
    per_model[key] = eng  # most recently used last
    return eng


class StaticSession:
    """One model's state for one ``generate`` call on a :class:`StaticEngine`: the static
    :class:`~specref.decode.session.KVSession`. ``enc_width`` (seq2seq) is the encoder input's width."""

    def __init__(
        self, adapter: Any, batch: int, capacity: int, vocab: int, engine: str | Engine, reserve: int = 1,
        enc_width: int | None = None,
    ) -> None:
        spec = get_engine(engine)
        check_static_models(spec, (adapter,))
        self.adapter = adapter
        self.vocab = vocab
        self.reserve = max(int(reserve), 1)
        cap = _round_up(capacity + self.reserve)
        enc_cap = _round_up(enc_width or 1, ENCODER_ROUND) if adapter.is_seq2seq else None
        self.engine = _engine_for(adapter, batch, cap, spec.name, self, enc_cap)
        self.capacity = cap
        self.length = 0
        dev = adapter.device
        self.live = torch.arange(batch, device=dev)
        self.n_live = batch
        self.live_mask = torch.ones(batch, dtype=torch.bool, device=dev)
        self.engine.set_live(self.live_mask)
        #: per physical row, the index of its live row (dead rows: 0); per-call constants of the rollback and
        #: the summary: the position of a junk slot, and slot j's distance cap - 1 - j from the buffer's end
        self._live_of = torch.arange(batch, device=dev)
        self._junk_pos = torch.tensor(-1, dtype=torch.long, device=dev)
        self._rev = torch.arange(cap - 1, -1, -1, device=dev)
        self.forwards = 0
        self.compactions = 0
        self.profiler: Any = None
        self.role = adapter.role

    def set_encoder(self, encoder_outputs: Any, attention_mask: Tensor) -> None:
        """The call's encoder output (seq2seq) and its ``[B, S]`` mask, fixed for the call."""
        self.engine.set_encoder(encoder_outputs.last_hidden_state, attention_mask.bool())

    @property
    def contiguous(self) -> bool:
        return False

    @property
    def batch(self) -> int:
        return self.n_live

    def _phys(self, x: Tensor, fill: Any = 0) -> Tensor:
        return self.engine._phys(x, None if self.n_live == self.engine.b0 else self.live, fill)

    def forward(self, tokens: Tensor, positions: Tensor, real: Tensor | None = None, *, hidden: bool = False,
                logits: bool = True) -> Any:
        if hidden:
            raise ValueError("static engines do not return hidden states; use engine='fast' for heads that need them")
        n = tokens.shape[1]
        if self.length + n > self.capacity:
            raise RuntimeError(f"static cache of {self.capacity} slots is full (length {self.length} + {n})")
        eng = self.engine
        live = None if self.n_live == eng.b0 else self.live
        prof = self.profiler
        if prof is not None:
            prof.forward_begin(self.role)
        lg = eng.run(tokens, positions, self.length, live, real, eager=not logits, last_only=not logits)
        if prof is not None:
            prof.forward_end(self.role)
        self.length += n
        self.forwards += 1
        lg = lg[..., : self.vocab]
        if live is not None:
            lg = lg.index_select(0, live)
        return ForwardOut(lg, None)

    # ---- rollback and maintenance --------------------------------------------------------------------
    def keep_last(self, n: int, keep: Tensor) -> None:
        eng, s, e = self.engine, self.length - n, self.length
        tail = eng.valid[:, s:e]
        if self.n_live < eng.b0:
            # physical rows read their live row's mask; a dead row reads some live row's, harmlessly: its
            # slots are all junk (valid false, position -1) already
            keep = keep.index_select(0, self._live_of)
        tail &= keep
        pos = eng.pos[:, s:e]
        torch.where(tail, pos, self._junk_pos, out=pos)

    def truncate(self, lengths: Tensor, rows: Tensor | None = None) -> None:
        raise NotImplementedError("static engines support the speculative and single-model decoders only")

    def summary(self) -> Tensor:
        """:func:`~specref.decode.kvcache.slot_summary` of the physical rows. Dead rows hold no live slot,
        so the first two entries (the ones :meth:`maintain` reads) are the live rows' own; the third counts a
        dead row as all junk."""
        return slot_summary(self.engine.valid[:, : self.length], self._rev[self.capacity - self.length :])

    def maintain(self, summary: list[int], rows: Tensor | None = None) -> None:
        """Rows leaving become dead rows; trailing junk is cropped; holes are compacted only when the next
        round would not fit (attention spans the whole capacity anyway, so holes cost nothing else)."""
        max_valid, trail_min, _ = summary
        if rows is not None:
            self.live = self.live.index_select(0, rows)
            self.n_live = int(rows.shape[0])
            self.live_mask.fill_(False)
            self.live_mask[self.live] = True
            self.engine.set_live(self.live_mask)
            self._live_of = torch.zeros_like(self._live_of)
            self._live_of[self.live] = torch.arange(self.n_live, device=self.live.device)
        if trail_min > 0:
            self.length -= min(trail_min, self.length)
        if self.length + self.reserve > self.capacity and self.length > 0:
            self.engine.compact(self.length, max_valid)
            self.length = max_valid
            self.compactions += 1

    def realign(self) -> None:  # pragma: no cover - static sessions are never contiguous
        raise NotImplementedError
