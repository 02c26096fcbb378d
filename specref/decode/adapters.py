"""Adapters that run Hugging Face models one ragged block at a time over a :class:`~.kvcache.SlotCache`.

:class:`ModelAdapter` wraps a causal LM (``AutoModelForCausalLM``: GPT-2, Llama, Mistral, Qwen2/3, Gemma
1/2/3, ...) or an encoder-decoder (``AutoModelForSeq2SeqLM``: T5, mT5) and checks it is one the
decoder supports. :meth:`ModelAdapter.start` encodes / prefills a batch of LEFT-padded prompts and returns a
:class:`Session`, the per-generate state: the KV cache, the per-row slot table, and (for seq2seq) the
encoder outputs. Every forward takes explicit per-row position ids and a 2D mask over cache slots; see
:mod:`specref.decode.kvcache` for the cache design.

:func:`shared_vocab_size` decides the vocabulary the two models share (clear errors when they do not).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from specref.decode.engines import Engine, get_engine
from specref.decode.kvcache import PreallocSlotTable, SlotCache, SlotTable
from specref.decode.session import ForwardOut, KVSession
from specref.decode.static import StaticSession
from specref.defaults import DEFAULT_ENGINE

__all__ = [
    "SUPPORTED_CAUSAL",
    "SUPPORTED_SEQ2SEQ",
    "ForwardOut",
    "ModelAdapter",
    "Session",
    "check_prompts",
    "shared_vocab_size",
]

#: Causal families checked against an uncached full forward with left padding, holes and explicit
#: position ids (tests/test_decode_adapters.py).
SUPPORTED_CAUSAL = frozenset(
    {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "gpt2",
        "gpt_neox",
        "phi3",
        "olmo2",
        "granite",
        "stablelm",
        "smollm3",
    }
)
# Which session an engine gets, and what it preallocates, is read off :mod:`specref.decode.engines`.

#: Encoder-decoder families (relative position bias: run with contiguous caches).
SUPPORTED_SEQ2SEQ = frozenset({"t5", "mt5"})
# (UMT5 is left out: in transformers 5.17 its cached decoding disagrees with its own uncached forward.)
_ATTN_OK = ("sdpa", "eager")


def _context_length(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _cache_kwarg(model: Any) -> str:
    """The forward's name for the KV cache argument: ``cache`` in newer transformers, else ``past_key_values``."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins / exotic wrappers
        return "past_key_values"
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"


def _decoder_output_scale(config: Any) -> float | None:
    """T5 v1.0 checkpoints scale the decoder's output by ``d_model ** -0.5`` before the LM head; T5 v1.1 and mT5
    do not. transformers records it as ``config.scale_decoder_outputs`` (T5; mT5 configs have no such field and
    the mT5 forward never scales). None: a T5 config without the field, whose forward's choice is unknown here."""
    scale = getattr(config, "scale_decoder_outputs", None)
    if scale is None:
        return None if config.model_type == "t5" else 1.0
    return float(config.d_model) ** -0.5 if scale else 1.0


class ModelAdapter:
    """A supported Hugging Face model and the facts the decoder needs about it.

    Args:
        model: a ``PreTrainedModel`` (causal LM or seq2seq LM). Its weights are not touched.
        role: ``"draft"`` or ``"target"``, used in error messages.
        allow_untested: accept a causal ``model_type`` outside :data:`SUPPORTED_CAUSAL` (it must honour
            explicit ``position_ids`` and 2D attention masks over the cache, as Llama-style models do).
    """

    def __init__(self, model: Any, role: str = "model", *, allow_untested: bool = False) -> None:
        from transformers import PreTrainedModel

        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"{role} must be a transformers PreTrainedModel, got {type(model).__name__}")
        config = model.config
        self.model, self.config, self.role = model, config, role
        self.model_type = getattr(config, "model_type", "?")
        self.is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        if self.is_seq2seq:
            if self.model_type not in SUPPORTED_SEQ2SEQ:
                raise ValueError(
                    f"unsupported {role} architecture {self.model_type!r} ({type(model).__name__}): encoder-decoder "
                    f"models supported are {sorted(SUPPORTED_SEQ2SEQ)}"
                )
        else:
            if model.get_output_embeddings() is None:
                raise ValueError(
                    f"unsupported {role} model {type(model).__name__}: it has no LM head; load it with "
                    "AutoModelForCausalLM or AutoModelForSeq2SeqLM"
                )
            if self.model_type not in SUPPORTED_CAUSAL and not allow_untested:
                raise ValueError(
                    f"unsupported {role} architecture {self.model_type!r} ({type(model).__name__}); supported causal "
                    f"families: {sorted(SUPPORTED_CAUSAL)}; encoder-decoder: {sorted(SUPPORTED_SEQ2SEQ)} "
                    "(pass allow_untested=True to try a Llama-like model anyway)"
                )
        attn = getattr(config, "_attn_implementation", None) or "eager"
        if attn not in _ATTN_OK:
            raise ValueError(
                f"{role} uses attn_implementation={attn!r}; the decoder needs 'sdpa' or 'eager' (it masks cache "
                "slots with a 2D mask). Load the model with attn_implementation='sdpa'"
            )
        head = model.get_output_embeddings()
        self.vocab_out = int(head.weight.shape[0]) if head is not None else int(config.vocab_size)
        self.context = None if self.is_seq2seq else _context_length(config)
        sliding = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None) or ()
        self.sliding = bool(sliding) or any("sliding" in str(t) or "chunk" in str(t) for t in layer_types)
        #: the sliding window in positions (None: no layer slides) and each layer's attention type, for the
        #: static engines' own per-layer-type masks
        self.window = sliding if isinstance(sliding, int) and sliding > 0 else None
        self.layer_types = tuple(str(t) for t in layer_types) if self.sliding else ()
        #: T5's relative bias and sliding windows read slot distances: keep each row's slots contiguous.
        self.contiguous = self.is_seq2seq or self.sliding
        #: Build the 4D attention mask here (no host sync) unless the model needs per-layer-type masks
        #: (sliding windows), which transformers derives from a 2D mask.
        self.own_mask = not self.sliding
        self.eager = attn == "eager"
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.decoder_start_token_id = getattr(config, "decoder_start_token_id", None)
        if self.is_seq2seq and self.decoder_start_token_id is None:
            raise ValueError(f"{role} seq2seq model has no decoder_start_token_id in its config")
        #: seq2seq: the factor on the decoder's output before the LM head (the static engines apply it, as
        #: they run the decoder's blocks themselves); None where this transformers release does not say
        self.decoder_output_scale = _decoder_output_scale(config) if self.is_seq2seq else None
        self.hidden_size = int(getattr(config, "d_model", None) or getattr(config, "hidden_size", 0) or 0)
        # transformers renamed ``past_key_values`` to ``cache`` (the old name warns from 5.2x and goes in 5.40)
        self.cache_kwarg = _cache_kwarg(model)

    def __repr__(self) -> str:
        kind = "seq2seq" if self.is_seq2seq else "causal"
        return f"ModelAdapter({self.role}: {self.model_type}, {kind}, vocab={self.vocab_out}, device={self.device})"

    def start(
        self,
        input_ids: Tensor,  # [B, W] left-padded prompts (seq2seq: encoder inputs)
        attention_mask: Tensor,  # [B, W] 1 = real token
        vocab: int,
        capacity: int,
        *,
        engine: str | Engine = DEFAULT_ENGINE,
        reserve: int = 1,
    ) -> tuple[KVSession, Tensor, Tensor]:
        """Encode / prefill and return ``(session, pending_token [B], pending_position [B])``.

        For causal LMs the prompt minus its last token is prefilled; the last token is left pending (the
        first forward of decoding feeds it). For seq2seq the encoder runs once and the pending token is
        ``decoder_start_token_id`` at position 0. ``engine`` (a name or an
        :class:`~specref.decode.engines.Engine`) picks the session kind;
        ``reserve`` is the most slots one round appends (static engines keep that much room free).
        """
        b, w = input_ids.shape
        spec = get_engine(engine)
        if spec.static_shapes:
            session: Any = StaticSession(self, b, capacity, vocab, spec, reserve, enc_width=w)
        else:
            session = Session(self, b, capacity, vocab, prealloc=spec.preallocated)
        if self.is_seq2seq:
            # the encoder runs once per call; its output is fixed for the call
            enc = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
            session.set_encoder(enc, attention_mask)
            pending = torch.full((b,), int(self.decoder_start_token_id), dtype=torch.long, device=input_ids.device)
            pos = torch.zeros(b, dtype=torch.long, device=input_ids.device)
        else:
            mask = attention_mask.bool()
            positions = (mask.long().cumsum(dim=1) - 1).clamp_min(0)
            if w > 1:
                session.forward(input_ids[:, :-1], positions[:, :-1], mask[:, :-1], logits=False)
            pending = input_ids[:, -1]
            pos = positions[:, -1]
        return session, pending.long(), pos


class Session:
    """One model's state during one ``generate`` call on a cache that grows (the dynamic
    :class:`~specref.decode.session.KVSession`; rows may leave the batch as they finish)."""

    def __init__(self, adapter: ModelAdapter, batch: int, capacity: int, vocab: int, prealloc: bool = False) -> None:
        self.adapter = adapter
        self.vocab = vocab
        self.prealloc = prealloc
        self.table: SlotTable = PreallocSlotTable(batch, adapter.device, capacity) if prealloc else SlotTable(
            batch, adapter.device
        )
        self.self_cache = SlotCache(capacity)
        self.cache: Any = (
            EncoderDecoderCache(self.self_cache, DynamicCache()) if adapter.is_seq2seq else self.self_cache
        )
        self.encoder_outputs: Any = None
        self.encoder_mask: Tensor | None = None
        self.forwards = 0
        #: compactions done (for tests and profiling)
        self.compactions = 0
        #: optional :class:`~specref.decode.profile.RoundProfiler` (None: no timing, no cost)
        self.profiler: Any = None
        self.role = adapter.role

    @property
    def contiguous(self) -> bool:
        return self.adapter.contiguous

    @property
    def batch(self) -> int:
        return self.table.valid.shape[0]

    def set_encoder(self, encoder_outputs: Any, attention_mask: Tensor) -> None:
        """The call's encoder output (seq2seq) and its ``[B, S]`` mask."""
        self.encoder_outputs = encoder_outputs
        # cross-attention mask [B, 1, 1, S], prepared once (transformers would re-derive it, with a host sync, at
        # every step)
        self.encoder_mask = self.format_mask(attention_mask.bool()[:, None, None, :])

    # ---- forward ------------------------------------------------------------------------------------
    def forward(
        self,
        tokens: Tensor,  # [B, n]
        positions: Tensor,  # [B, n] logical positions (ignored by seq2seq models)
        real: Tensor | None = None,  # [B, n] bool: live slots (default all); junk slots are masked
        *,
        hidden: bool = False,
        logits: bool = True,
    ) -> ForwardOut:
        """Append a block of ``n`` tokens for every row; return their logits (and last hidden states)."""
        ad = self.adapter
        if self.prealloc and ad.own_mask:
            # Write the block into the table first; the mask is then read off the table itself. For one
            # live token per row the mask is exactly the row's live slots (a view: no kernel at all).
            self.table.append(real, positions)
            mask = self._mask_after_append(real, tokens.shape[1])
            appended = True
        else:
            if real is None:
                real = torch.ones_like(tokens, dtype=torch.bool)
            mask = self._mask(real) if ad.own_mask else torch.cat([self.table.valid, real], dim=1).long()
            appended = False
        kwargs: dict[str, Any] = {ad.cache_kwarg: self.cache, "use_cache": True, "return_dict": True}
        if hidden:
            kwargs["output_hidden_states"] = True
        if ad.is_seq2seq:
            out = ad.model(
                encoder_outputs=self.encoder_outputs,
                attention_mask=self.encoder_mask,
                decoder_input_ids=tokens,
                decoder_attention_mask=mask,
                **kwargs,
            )
            hs = out.decoder_hidden_states[-1] if hidden else None
        else:
            pos = positions if ad.context is None else positions.clamp(max=ad.context - 1)
            if not logits and not hidden:
                kwargs["logits_to_keep"] = 1
            prof = self.profiler
            if prof is not None:
                prof.forward_begin(self.role)
            out = ad.model(input_ids=tokens, attention_mask=mask, position_ids=pos, **kwargs)
            if prof is not None:
                prof.forward_end(self.role)
            hs = out.hidden_states[-1] if hidden else None
        if not appended:
            self.table.append(real, positions)
        self.forwards += 1
        lg = out.logits[..., : self.vocab] if logits else out.logits
        return ForwardOut(lg, hs)

    def _mask(self, real: Tensor) -> Tensor:
        """4D mask ``[B, 1, n, L + n]``: a query sees live slots up to its own slot, and always itself
        (so junk queries, whose outputs are never used, are never fully masked)."""
        length, n = self.table.length, real.shape[1]
        live = torch.cat([self.table.valid, real], dim=1)
        kv = torch.arange(length + n, device=real.device)
        q = torch.arange(length, length + n, device=real.device).unsqueeze(1)
        allowed = (live.unsqueeze(1) & (kv <= q).unsqueeze(0)) | (kv == q).unsqueeze(0)
        return self.format_mask(allowed.unsqueeze(1))

    def _mask_after_append(self, real: Tensor | None, n: int) -> Tensor:
        """The mask of :meth:`_mask`, read off a table that already holds the new block."""
        live = self.table.valid  # [B, L + n]
        if n == 1 and real is None:
            # the query at slot L sees every live slot up to L, itself included (its token is live)
            return self.format_mask(live[:, None, None, :])
        length = live.shape[1] - n
        kv = torch.arange(length + n, device=live.device)
        q = torch.arange(length, length + n, device=live.device).unsqueeze(1)
        allowed = live.unsqueeze(1) & (kv <= q).unsqueeze(0)
        if real is not None:  # junk queries always see themselves
            allowed = allowed | (kv == q).unsqueeze(0)
        return self.format_mask(allowed.unsqueeze(1))

    def format_mask(self, allowed: Tensor) -> Tensor:
        """Boolean for sdpa; additive float (0 / dtype min) for eager attention."""
        if not self.adapter.eager:
            return allowed
        dt = self.adapter.dtype
        return torch.zeros(allowed.shape, dtype=dt, device=allowed.device).masked_fill(~allowed, torch.finfo(dt).min)

    # ---- rollback and maintenance ----------------------------------------------------------------------
    def keep_last(self, n: int, keep: Tensor) -> None:
        """Of the last forward's ``n`` slots keep only ``keep`` ``[B, n]`` (rejected drafts become holes)."""
        self.table.keep_last(n, keep)

    def truncate(self, lengths: Tensor, rows: Tensor | None = None) -> None:
        """Roll back rows (where ``rows``) to positions ``< lengths`` ``[B]``."""
        self.table.truncate(lengths, rows)

    def summary(self) -> Tensor:
        """``[3]`` device tensor for the round's single host sync: see :meth:`SlotTable.summary`."""
        return self.table.summary()

    def maintain(self, summary: list[int], rows: Tensor | None = None) -> None:
        """Reclaim holes using the host copy of :meth:`summary`; optionally keep only batch ``rows``.

        Trailing junk common to every row is cropped (no copy). A gather right-aligns each row's live
        slots when rows leave the batch, when a contiguous model has ragged junk, or when holes exceed
        half the cache.
        """
        max_valid, trail_min, trail_max = summary
        if rows is None and trail_min > 0:
            self._crop(trail_min)
            trail_max -= trail_min
        length = self.table.length
        need = rows is not None or (self.contiguous and trail_max > 0) or length > 2 * max_valid + 32
        if need and length > 0:
            self._compact(rows, max_valid)
        elif rows is not None:
            self._select(rows)

    def realign(self) -> None:
        """Right-align live slots without a host sync (length unchanged); used by contiguous sessions."""
        if self.table.length:
            self._compact(None, self.table.length)

    def _crop(self, n: int) -> None:
        self.table.crop(n)
        self.self_cache.crop(n)

    def _compact(self, rows: Tensor | None, new_len: int) -> None:
        slots = self.table.compaction_plan(rows, new_len)
        self.self_cache.rebuild(rows, slots)
        if rows is not None:
            self._select_extra(rows)
        self.compactions += 1

    def _select(self, rows: Tensor) -> None:
        self.table.select_rows(rows)
        for layer in self.self_cache.layers:
            layer.batch_select_indices(rows)
        self._select_extra(rows)

    def _select_extra(self, rows: Tensor) -> None:
        if self.adapter.is_seq2seq:
            enc = self.encoder_outputs
            enc.last_hidden_state = enc.last_hidden_state.index_select(0, rows)
            self.encoder_mask = self.encoder_mask.index_select(0, rows)
            cross = self.cache.cross_attention_cache
            for layer in cross.layers:
                layer.batch_select_indices(rows)


def check_prompts(
    input_ids: Any, attention_mask: Any, device: torch.device, seq2seq: bool = False
) -> tuple[Tensor, Tensor]:
    """Validate a batch of LEFT-padded prompts; return ``(input_ids, attention_mask)`` long on ``device``.

    Encoder inputs of seq2seq models may be padded on either side. Padding positions are set to token 0
    (their ids are never looked at, and may lie outside the vocabulary)."""
    if not isinstance(input_ids, Tensor):
        try:
            input_ids = torch.as_tensor(input_ids)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                "input_ids must be a [B, W] integer tensor (pad ragged prompts on the left and pass attention_mask)"
            ) from None
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be a non-empty [B, W] tensor, got shape {tuple(input_ids.shape)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = torch.as_tensor(attention_mask)
    if attention_mask.dim() == 1:
        attention_mask = attention_mask.unsqueeze(0)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
        )
    m = attention_mask.to("cpu").long()
    if bool(((m != 0) & (m != 1)).any()):
        raise ValueError("attention_mask must contain only 0 and 1")
    if seq2seq:
        if bool((m.sum(dim=1) == 0).any()):
            raise ValueError("every encoder input needs at least one token (an attention_mask row is all 0)")
    elif bool((m[:, -1] == 0).any()) or bool((m[:, 1:] < m[:, :-1]).any()):
        raise ValueError(
            "prompts must be LEFT-padded: each attention_mask row must be 0s then 1s, ending in 1 "
            "(use tokenizer.padding_side = 'left')"
        )
    input_ids = input_ids.to(device=device, dtype=torch.long)
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
    return input_ids.masked_fill(attention_mask == 0, 0), attention_mask


def _tokenizer_vocab(tok: Any) -> dict[str, int]:
    get = getattr(tok, "get_vocab", None)
    if get is None:
        raise TypeError(f"tokenizer {type(tok).__name__} has no get_vocab()")
    return dict(get())


def shared_vocab_size(
    draft: ModelAdapter,
    target: ModelAdapter,
    tokenizer: Any = None,
    draft_tokenizer: Any = None,
    vocab_size: int | None = None,
) -> int:
    """The vocabulary the draft and target share; logits beyond it are padding and are dropped.

    With tokenizers, they must map every token string to the same id (else a ``ValueError``), and the
    shared size is the tokenizer's length: LM-head rows beyond it (padded vocabularies, e.g. T5's 32128
    rows for 32100 tokens) are dropped, i.e. masked. Without tokenizers the heads must have the same width
    (a head-size difference cannot be told apart from a different vocabulary). ``vocab_size`` overrides.
    """
    if draft.is_seq2seq != target.is_seq2seq:
        raise ValueError(
            f"draft is {'seq2seq' if draft.is_seq2seq else 'causal'} but target is "
            f"{'seq2seq' if target.is_seq2seq else 'causal'}: both must be the same kind of model"
        )
    if draft.is_seq2seq and draft.decoder_start_token_id != target.decoder_start_token_id:
        raise ValueError(
            f"draft and target have different decoder_start_token_id ({draft.decoder_start_token_id} vs "
            f"{target.decoder_start_token_id})"
        )
    smallest = min(draft.vocab_out, target.vocab_out)
    if vocab_size is not None:
        v = int(vocab_size)
        if v < 2 or v > smallest:
            raise ValueError(f"vocab_size={vocab_size} must be in [2, {smallest}] (the smaller LM head's width)")
        return v
    if tokenizer is not None and draft_tokenizer is not None and tokenizer is not draft_tokenizer:
        if _tokenizer_vocab(tokenizer) != _tokenizer_vocab(draft_tokenizer):
            raise ValueError(
                "tokenizer mismatch: the draft's and the target's tokenizers map tokens to different ids; "
                "speculative decoding needs one shared vocabulary"
            )
    tok = tokenizer if tokenizer is not None else draft_tokenizer
    if tok is not None:
        v = len(tok)
        if v > smallest:
            raise ValueError(
                f"the tokenizer has {v} tokens but the {'draft' if draft.vocab_out < target.vocab_out else 'target'} "
                f"LM head only {smallest} outputs: tokenizer and models do not belong together"
            )
        return v
    if draft.vocab_out == target.vocab_out:
        return draft.vocab_out
    raise ValueError(
        f"draft and target vocabularies differ (LM heads of {draft.vocab_out} and {target.vocab_out} tokens, "
        f"{draft.model_type} vs {target.model_type}); speculative decoding needs one shared vocabulary. If the "
        "heads differ only by padding rows, pass the tokenizers (or vocab_size=N) so the padding can be masked"
    )
