"""The speculative-cascade decoder: batched rounds of draft -> one target call -> rule -> verify -> emit.

Build one with :func:`make_decoder` (any method by name) or :class:`SpecCascadeDecoder` (any rule)::

    dec = make_decoder(draft_model, target_model, "token_v3", alpha=0.3, gamma=5, tokenizer=tok)
    out = dec.generate(input_ids, attention_mask, max_new_tokens=64, temperature=1.0, seed=0)
    out.sequences, out.lengths, out.stats.summary()

``generate`` follows transformers' conventions: ``generation_config=`` (a ``GenerationConfig``) and/or its
kwargs (``do_sample``, ``max_new_tokens`` / ``max_length``, ``temperature``, ``top_k``, ``top_p``,
``eos_token_id``); EOS defaults to every EOS id of the target's generation config and the tokenizer.

A round, for every row at once (THEORY.md section 7):

1. the draft runs ``gamma + 1`` one-token steps on its KV cache, feeding the row's pending token and then its
   own drafts, keeping ``q`` at each step; step ``gamma`` gives ``q`` at the bonus position (needed by
   ``bonus="pi"``) and the KV entry of the last draft (needed next round whenever all drafts pass);
2. the target scores the ``gamma + 1`` positions in ONE forward;
3. the rule reads the untempered pair and mixes the tempered pair; :func:`specref.verify.verify_block`
   accepts a prefix of the drafts and draws the residual / bonus token, with uniforms keyed by (row seed,
   absolute token index, stream) so a row's output never depends on the rest of the batch;
4. rows emit 1..gamma+1 tokens (cut at EOS and max_new_tokens); rejected drafts become masked holes in both
   caches (see :mod:`specref.decode.kvcache`);
5. ONE host sync reads a small tensor (non-finite logits flag, rows still running, cache summaries); finished
   rows leave the batch and caches are tidied.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from specref import rules as rules_mod
from specref.decode.adapters import ModelAdapter, Session, check_prompts, shared_vocab_size
from specref.decode.fused import fused_kind, fused_verify
from specref.decode.kvcache import available_bytes, kv_cache_bytes
from specref.decode.stats import DecodeStats, RoundRecord, Timer, _Counters, entropy
from specref.defaults import (
    DEFAULT_GAMMA,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    ENGINES,
    METHODS,
    RULE_METHODS,
    STATIC_ENGINES,
)
from specref.dists import probs_from_logits, sample_categorical, tv
from specref.rng import _GOLDEN, STREAM_ACCEPT, STREAM_DRAFT, STREAM_SAMPLE, _srl, hash64, keyed_uniform
from specref.verify import PAD, BlockUniforms, verify_block

__all__ = [
    "METHODS",
    "RULE_METHODS",
    "BaseDecoder",
    "GenerateOutput",
    "NonFiniteLogitsError",
    "SpecCascadeDecoder",
    "make_decoder",
]

# METHODS (every method make_decoder accepts) and RULE_METHODS (those with a rule from specref.rules) live
# in specref.defaults, importable without torch; they are re-exported here under their old names.


class NonFiniteLogitsError(ValueError):
    """A model produced NaN or +inf logits (or masked every token) at a position the decoder uses."""


@dataclass
class GenerateOutput:
    """Result of ``generate``.

    Attributes:
        sequences: ``[B, max_new_tokens]`` long, generated tokens (prompt excluded), ``-1`` after each row's end.
        lengths: ``[B]`` long, tokens generated per row (an EOS token is included and ends the row).
        stats: :class:`~specref.decode.stats.DecodeStats`.
    """

    sequences: Tensor
    lengths: Tensor
    stats: DecodeStats

    def token_lists(self) -> list[list[int]]:
        """Ragged Python lists of each row's generated tokens."""
        return [row[:n] for row, n in zip(self.sequences.tolist(), self.lengths.tolist())]


# ---- argument checks --------------------------------------------------------------------------------


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_sampling(temperature: Any, top_k: Any, top_p: Any) -> tuple[float, int | None, float | None]:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}") from None
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None:
        # transformers' convention: top_k = 0 turns the filter off
        top_k = _check_int("top_k", top_k, 0) or None
    if top_p is not None:
        try:
            top_p = float(top_p)
        except (TypeError, ValueError):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}") from None
        if not (0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    return t, top_k, top_p


def _seeds(seed: Any, batch: int, device: torch.device) -> Tensor:
    if isinstance(seed, Tensor):
        seed = seed.tolist()
    if isinstance(seed, (list, tuple)):
        if len(seed) != batch:
            raise ValueError(f"seed list has {len(seed)} entries for a batch of {batch} rows")
        vals = [_check_int("seed", s, -(2**63)) for s in seed]
    else:
        base = _check_int("seed", seed, -(2**63))
        vals = [base + i for i in range(batch)]
    return torch.tensor(vals, dtype=torch.long, device=device)


def _eos(eos_token_id: Any, vocab: int, device: torch.device) -> Tensor:
    if eos_token_id is None:
        ids: list[int] = []
    elif isinstance(eos_token_id, (list, tuple, set)):
        ids = [_check_int("eos_token_id", e, 0) for e in eos_token_id]
    else:
        ids = [_check_int("eos_token_id", eos_token_id, 0)]
    for e in ids:
        if e >= vocab:
            raise ValueError(f"eos_token_id {e} is outside the shared vocabulary of {vocab} tokens")
    return torch.tensor(ids, dtype=torch.long, device=device)


# ---- transformers' generation conventions -------------------------------------------------------------

#: GenerationConfig fields generate() honours.
_HONOURED = ("do_sample", "max_new_tokens", "max_length", "temperature", "top_k", "top_p", "eos_token_id")
#: Fields that never change which tokens are sampled (bookkeeping, caching, output format, assistants).
_HARMLESS = frozenset(
    {
        "pad_token_id", "bos_token_id", "decoder_start_token_id", "use_cache", "cache_implementation",
        "cache_config", "max_cache_len", "output_attentions", "output_hidden_states", "output_scores",
        "output_logits", "return_dict_in_generate", "compile_config", "disable_compile", "low_memory",
        "prefill_chunk_size", "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule",
        "assistant_confidence_threshold", "prompt_lookup_num_tokens", "max_matching_ngram_size",
        "assistant_early_exit", "assistant_lookbehind", "target_lookbehind", "continuous_batching_config",
        "early_stopping", "length_penalty", "transformers_version",
    }
)
#: Fields that change decoding unless they hold their no-op value (a value, or a set of them).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "num_beams": (1,), "num_beam_groups": (1,), "num_return_sequences": (1,), "repetition_penalty": (1.0,),
    "encoder_repetition_penalty": (1.0,), "no_repeat_ngram_size": (0,), "encoder_no_repeat_ngram_size": (0,),
    "min_length": (0,), "min_new_tokens": (0,), "typical_p": (1.0,), "epsilon_cutoff": (0.0,),
    "eta_cutoff": (0.0,), "min_p": (0.0,), "guidance_scale": (1.0,), "diversity_penalty": (0.0,),
    "penalty_alpha": (0.0,), "renormalize_logits": (False,), "remove_invalid_values": (False,),
    "token_healing": (False,), "bad_words_ids": ([],), "suppress_tokens": ([],), "begin_suppress_tokens": ([],),
    "sequence_bias": ({},), "use_mtp": (False,),
}


@dataclass
class _Generation:
    """Resolved generation settings of one ``generate`` call."""

    max_new: int
    temperature: float
    top_k: int | None
    top_p: float | None
    #: explicit EOS ids (None: use the decoder's defaults; [] with ``no_eos``)
    eos: Any


def _generation_fields(generation_config: Any) -> dict[str, Any]:
    """The fields a ``GenerationConfig`` sets (transformers 5 leaves every unset field None)."""
    from transformers import GenerationConfig

    if not isinstance(generation_config, GenerationConfig):
        raise ValueError(
            f"generation_config must be a transformers GenerationConfig, got {type(generation_config).__name__}"
        )
    return {
        k: v
        for k, v in generation_config.to_dict().items()
        if v is not None and not k.startswith("_") and k not in _HARMLESS
    }


def _refuse_unsupported(fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        if name in _HONOURED or name in _HARMLESS:
            continue
        if name in _NEUTRAL and any(value == ok for ok in _NEUTRAL[name]):
            continue
        raise ValueError(
            f"{name}={value!r} changes decoding and specref's decoder does not implement it; it honours "
            f"{', '.join(_HONOURED)}"
        )


def resolve_generation(
    generation_config: Any,
    given: dict[str, Any],
    extra: dict[str, Any],
    *,
    prompt_width: int,
    seq2seq: bool,
    no_eos: bool,
) -> _Generation:
    """transformers' rules for the settings of one call; ``given`` are generate()'s own keyword arguments
    (None = not given) and ``extra`` any other GenerationConfig field passed as a keyword.

    Keywords override the config (as ``generate(**kwargs)`` updates it in transformers). ``do_sample=False``
    is greedy (T = 0); ``top_k`` of 0 is off; ``max_length`` counts the prompt's (padded) width for causal
    models and the decoder's start token for seq2seq ones, as in transformers. Fields that would change
    decoding and are not implemented (``repetition_penalty``, ``num_beams > 1``, ...) are refused.
    """
    from transformers import GenerationConfig

    fields = {} if generation_config is None else _generation_fields(generation_config)
    if extra:
        known = set(GenerationConfig().to_dict())
        for name in extra:
            if name not in known:
                raise ValueError(f"generate() got an unknown argument {name!r}")
    kw = {k: v for k, v in {**extra, **given}.items() if v is not None and k not in _HARMLESS}
    # a keyword length replaces the config's length of either kind
    if "max_new_tokens" in kw or "max_length" in kw:
        fields.pop("max_new_tokens", None)
        fields.pop("max_length", None)
    fields.update(kw)
    _refuse_unsupported(fields)
    if "max_new_tokens" in fields and "max_length" in fields:
        raise ValueError(
            f"give max_new_tokens or max_length, not both (got {fields['max_new_tokens']!r} and "
            f"{fields['max_length']!r})"
        )
    if "max_length" in fields:
        length = _check_int("max_length", fields["max_length"], 1)
        # transformers: causal max_length counts input_ids.shape[-1]; seq2seq, the decoder start token
        used = 1 if seq2seq else prompt_width
        what = "the decoder start token" if seq2seq else f"a prompt of width {prompt_width}"
        if length - used < 1:
            raise ValueError(f"max_length={length} leaves no room for new tokens after {what}")
        max_new = length - used
    else:
        max_new = _check_int("max_new_tokens", fields.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS), 1)
    do_sample = fields.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
    if do_sample is False:
        temperature: Any = 0.0  # greedy: the temperature and filters cannot change an argmax
    else:
        temperature = fields.get("temperature", DEFAULT_TEMPERATURE)
        if do_sample is True and isinstance(temperature, numbers.Real) and temperature == 0:
            raise ValueError("do_sample=True needs temperature > 0 (temperature=0 is greedy: pass do_sample=False)")
    t, k, p = _check_sampling(temperature, fields.get("top_k"), fields.get("top_p"))
    eos = fields.get("eos_token_id")
    if no_eos:
        if given.get("eos_token_id") is not None:
            raise ValueError(f"no_eos=True turns EOS off; do not also pass eos_token_id={given['eos_token_id']!r}")
        eos = []
    return _Generation(max_new, t, k, p, eos)


def default_eos_ids(target_model: Any, tokenizers: Sequence[Any] = ()) -> list[int]:
    """Every EOS id of the target's generation config (an int or a list) and of the tokenizers, in order,
    without repeats."""
    ids: list[int] = []
    gc = getattr(target_model, "generation_config", None)
    sources = [getattr(gc, "eos_token_id", None), *(getattr(t, "eos_token_id", None) for t in tokenizers)]
    for src in sources:
        for e in src if isinstance(src, (list, tuple)) else [src]:
            if isinstance(e, numbers.Integral) and not isinstance(e, bool) and e >= 0 and int(e) not in ids:
                ids.append(int(e))
    return ids


# ---- per-call context and per-row state ---------------------------------------------------------------


class _Ctx:
    """Everything one ``generate`` call needs, shared by the methods' loops."""

    def __init__(
        self,
        dec: BaseDecoder,
        input_ids: Tensor,
        mask: Tensor,
        max_new: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        seeds: Tensor,
        eos: Tensor,
        on_round: Callable[[RoundRecord], Any] | None,
        block: int,
    ) -> None:
        self.dec = dec
        self.input_ids, self.mask = input_ids, mask
        self.batch = input_ids.shape[0]
        self.device = input_ids.device
        self.max_new = max_new
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.seeds, self.eos = seeds, eos
        self.on_round = on_round
        self.out = torch.full((self.batch, max_new + block + 1), PAD, dtype=torch.long, device=self.device)
        self.lengths = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        self.counters = _Counters(self.batch, getattr(dec, "gamma", 0) or 0, self.device)
        self.draft_forwards = self.target_forwards = self.prefill_forwards = 0
        self.rounds = 0
        self.extra: dict[str, Tensor] = {}
        self.prompt_len = mask.sum(dim=1)
        #: optional :class:`~specref.decode.profile.RoundProfiler`
        self.profiler: Any = None

    def probs(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        return probs_from_logits(logits, self.temperature, self.top_k, self.top_p)

    def uniform(self, seeds: Tensor, counter: Tensor, stream: int) -> Tensor:
        return keyed_uniform(seeds, counter, stream)

    def emit(self, row_ids: Tensor, gen: Tensor, tokens: Tensor, n_new: Tensor) -> tuple[Tensor, Tensor]:
        """Write up to ``n_new`` ``[B]`` of ``tokens`` ``[B, n]`` at each row's length ``gen``, cut at EOS
        and ``max_new_tokens``. Returns ``(n_out [B], finished [B] bool)``."""
        n = tokens.shape[1]
        j = torch.arange(n, device=tokens.device).unsqueeze(0)
        remaining = (self.max_new - gen).clamp_min(0)
        limit = torch.minimum(n_new, remaining)
        cand = j < limit.unsqueeze(1)
        if self.eos.numel():
            is_eos = torch.isin(tokens, self.eos) & cand
            hit = is_eos.any(dim=1)
            first = torch.where(hit, is_eos.to(torch.int8).argmax(dim=1), torch.full_like(limit, n))
            n_out = torch.minimum(limit, first + 1)
        else:
            hit = torch.zeros_like(limit, dtype=torch.bool)
            n_out = limit
        finished = hit | (gen + n_out >= self.max_new)
        cols = gen.unsqueeze(1) + j
        vals = torch.where(j < n_out.unsqueeze(1), tokens, torch.full_like(tokens, PAD))
        self.out[row_ids.unsqueeze(1).expand_as(cols), cols] = vals
        self.lengths[row_ids] = gen + n_out
        return n_out, finished


_ROUND_STREAMS = (STREAM_DRAFT, STREAM_ACCEPT, STREAM_SAMPLE)


def _stream_keys(seeds: Tensor, streams: Sequence[int] = _ROUND_STREAMS) -> Tensor:
    """``[B, S]`` per-row keys of :func:`specref.rng.keyed_uniform` for each stream (constant per row)."""
    st = torch.tensor(list(streams), dtype=torch.long, device=seeds.device)
    return hash64(hash64(seeds.to(torch.int64)).unsqueeze(1) + st)


def _round_uniforms(keys: Tensor, start: Tensor, k: int) -> Tensor:
    """``[B, S, k]`` float32: ``keyed_uniform(seed, start + j, stream_s)`` for j < k, in one pass.

    The same integer arithmetic as :func:`specref.rng.keyed_uniform` (tests check it bit for bit), for
    all of a round's streams at once and with the per-row keys computed once per ``generate``.
    """
    counter = start.unsqueeze(1) + torch.arange(k, device=start.device)  # [B, k]
    h = hash64(keys.unsqueeze(-1) + ((counter + 1) * _GOLDEN).unsqueeze(1))
    return (_srl(h, 40).to(torch.float64) * 2.0**-24).to(torch.float32)


def _nonfinite(logits: Tensor) -> Tensor:
    """0-dim bool: some row's logits contain NaN / +inf or are all -inf."""
    return ~torch.isfinite(logits.float().amax(dim=-1)).all()


def _raise_nonfinite(where: str) -> None:
    raise NonFiniteLogitsError(
        f"the {where} model produced NaN or infinite logits; refusing to sample from them (check the "
        "model's weights and dtype, e.g. fp16 overflow: try bfloat16 or float32)"
    )


def _alive_rows(finished: Tensor, n_alive: int) -> Tensor:
    """Indices of the ``n_alive`` unfinished rows, in order, without a host sync."""
    return torch.argsort(finished.to(torch.int8), stable=True)[:n_alive]


class BaseDecoder:
    """Shared plumbing: model checks, argument validation, output buffers, timing, statistics.

    Subclasses implement :meth:`_run`. ``tokenizer`` / ``draft_tokenizer`` (optional) are checked for a
    shared vocabulary, and their EOS ids join the default EOS set; ``vocab_size`` overrides the inferred
    shared vocabulary; ``c`` is the draft/target cost ratio used for modeled latency (None: the ratio of
    per-step parameters, :func:`specref.decode.step_cost.step_cost_ratio`; the statistics say which).
    ``engine`` (see ``docs/performance.md``): ``"plain"`` (the
    reference path), ``"fast"`` (preallocated slot tables, a leaner round, fused rule + verification;
    identical outputs), or a static-shape engine, ``"static"``, ``"graph"`` (CUDA graphs of the model
    forwards), ``"compile"`` / ``"compile-graph"`` (``torch.compile``), for causal models with the
    speculative and single-model decoders.
    """

    method = "base"
    gamma = 0
    uses_draft = True
    uses_target = True
    #: decoders whose loops run on static-shape sessions (no rollback by truncation)
    supports_static = False

    def __init__(
        self,
        draft: Any,
        target: Any,
        *,
        tokenizer: Any = None,
        draft_tokenizer: Any = None,
        vocab_size: int | None = None,
        c: float | None = None,
        allow_untested: bool = False,
        engine: str = "plain",
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.engine = engine
        self.draft = ModelAdapter(draft, "draft", allow_untested=allow_untested)
        self.target = ModelAdapter(target, "target", allow_untested=allow_untested)
        if self.draft.device != self.target.device:
            raise ValueError(
                f"draft is on {self.draft.device} but target on {self.target.device}; put both on one device"
            )
        self.vocab = shared_vocab_size(self.draft, self.target, tokenizer, draft_tokenizer, vocab_size)
        self.tokenizers = tuple(t for t in (tokenizer, draft_tokenizer) if t is not None)
        if c is None:
            from specref.decode.step_cost import step_cost_ratio

            self.c, self.c_source = step_cost_ratio(draft, target), "params"
        else:
            self.c, self.c_source = _check_cost(c), "given"
        self.is_seq2seq = self.draft.is_seq2seq
        self.device = self.target.device
        if engine in STATIC_ENGINES:
            if not self.supports_static:
                raise ValueError(f"engine {engine!r} is available for the speculative and single-model decoders only")
            for ad in (self.draft, self.target):
                if ad.is_seq2seq or ad.sliding or not ad.own_mask:
                    raise ValueError(
                        f"engine {engine!r} needs causal models without sliding-window attention; the {ad.role} is "
                        f"{ad.model_type!r}: use engine='fast'"
                    )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r}, gamma={self.gamma}, vocab={self.vocab})"

    def _block(self) -> int:
        return 1

    def _stat_params(self) -> dict[str, Any]:
        """The method's parameters as printed by ``stats.summary()`` (alpha first)."""
        return {"alpha": getattr(self, "alpha", None)}

    def default_eos_ids(self) -> list[int]:
        """EOS ids used when ``generate`` gets none: the target's generation config and the tokenizers'
        (ids outside the shared vocabulary can never be sampled and are left out)."""
        return [e for e in default_eos_ids(self.target.model, self.tokenizers) if e < self.vocab]

    def _capacity(self, width: int, max_new: int) -> int:
        """KV slots a session of this call preallocates (prompt, output, a few rounds of junk)."""
        return width + max_new + 4 * (self._block() + 1) + 8

    def _memory_check(self, input_ids: Tensor, max_new: int) -> None:
        """Refuse before allocating when the KV caches and output buffers cannot fit in memory."""
        batch, width = input_ids.shape
        cap = self._capacity(width, max_new)
        need = 2 * batch * (max_new + self._block() + 1) * 8  # output buffer and per-token scratch (int64)
        for ad, used in ((self.draft, self.uses_draft), (self.target, self.uses_target)):
            if used:
                need += kv_cache_bytes(ad.config, batch, cap, ad.dtype.itemsize)
        avail = available_bytes(self.device)
        if avail is not None and need > avail:
            raise ValueError(
                f"max_new_tokens={max_new} needs about {need:,} bytes of KV cache for a batch of {batch} but "
                f"{avail:,} bytes are available on {self.device}; lower max_new_tokens or the batch size"
            )

    def _context_check(self, mask: Tensor, input_ids: Tensor, max_new: int) -> None:
        longest = int(mask.sum(dim=1).max())
        for ad, used in ((self.draft, self.uses_draft), (self.target, self.uses_target)):
            if not used or ad.is_seq2seq or ad.context is None:
                continue
            if longest > ad.context:
                raise ValueError(
                    f"prompt of {longest} tokens is longer than the {ad.role}'s context of {ad.context} positions"
                )
            if longest + max_new > ad.context:
                raise ValueError(
                    f"prompt ({longest} tokens) + max_new_tokens ({max_new}) exceeds the {ad.role}'s context of "
                    f"{ad.context} positions"
                )
        real = input_ids[mask.bool()]
        if int(real.max()) >= self.vocab or int(real.min()) < 0:
            raise ValueError(f"input_ids must lie in [0, {self.vocab}), the shared vocabulary")

    def generate(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        *,
        generation_config: Any = None,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        no_eos: bool = False,
        seed: int | Sequence[int] = 0,
        on_round: Callable[[RoundRecord], Any] | None = None,
        profiler: Any = None,
        **generation_kwargs: Any,
    ) -> GenerateOutput:
        """Decode a batch of LEFT-padded prompts (seq2seq: encoder inputs).

        Settings follow transformers' ``generate``: a ``generation_config`` (``GenerationConfig``) and/or its
        keywords, the keywords winning. ``max_new_tokens`` (default 64) or ``max_length`` (causal: prompt
        width + new tokens; seq2seq: decoder start token + new tokens); ``do_sample=False`` is greedy, as is
        ``temperature=0``; ``top_k`` (0 or None: off), ``top_p`` (None or 1: off). ``eos_token_id`` (int or
        list) ends a row (the EOS token is kept); when not given, every EOS id of the target's generation
        config and of the tokenizers is used; ``no_eos=True`` turns EOS off. Other GenerationConfig fields
        that change decoding (``repetition_penalty``, ``num_beams > 1``, ...) raise ``ValueError``.

        ``seed`` is an int (row i uses ``seed + i``) or one seed per row; a row's output depends only on its
        prompt and its seed. ``on_round`` receives a :class:`RoundRecord` after every round. ``profiler`` (a
        :class:`~specref.decode.profile.RoundProfiler`) records round and model-forward times.
        """
        if not isinstance(no_eos, bool):
            raise ValueError(f"no_eos must be True or False, got {no_eos!r}")
        if on_round is not None and not callable(on_round):
            raise ValueError("on_round must be callable")
        ids, mask = check_prompts(input_ids, attention_mask, self.device, seq2seq=self.is_seq2seq)
        given = {
            "max_new_tokens": max_new_tokens, "max_length": max_length, "do_sample": do_sample,
            "temperature": temperature, "top_k": top_k, "top_p": top_p, "eos_token_id": eos_token_id,
        }
        gen = resolve_generation(
            generation_config, given, generation_kwargs, prompt_width=ids.shape[1], seq2seq=self.is_seq2seq,
            no_eos=no_eos,
        )
        max_new = gen.max_new
        self._context_check(mask, ids, max_new)
        self._memory_check(ids, max_new)
        seeds = _seeds(seed, ids.shape[0], self.device)
        eos = _eos(self.default_eos_ids() if gen.eos is None else gen.eos, self.vocab, self.device)
        ctx = _Ctx(self, ids, mask, max_new, gen.temperature, gen.top_k, gen.top_p, seeds, eos, on_round, self._block())
        if profiler is not None:
            profiler.bind(self.device)
            ctx.profiler = profiler
        timer = Timer(self.device)
        with torch.inference_mode():
            timer.start()
            self._run(ctx)
            timer.stop()
        lengths = ctx.lengths.to("cpu")
        seq = ctx.out[:, :max_new].to("cpu")
        seq = torch.where(torch.arange(max_new).unsqueeze(0) < lengths.unsqueeze(1), seq, torch.full_like(seq, PAD))
        ctx.counters.tokens = ctx.lengths
        settings = {
            "temperature": gen.temperature, "top_k": gen.top_k, "top_p": gen.top_p, "max_new_tokens": max_new,
            "eos_token_ids": eos.tolist(),
        }
        stats = DecodeStats.from_counters(
            self.method,
            self.gamma,
            self.c,
            ctx.counters,
            c_source=self.c_source,
            params=self._stat_params(),
            settings=settings,
            draft_forwards=ctx.draft_forwards,
            target_forwards=ctx.target_forwards,
            prefill_forwards=ctx.prefill_forwards,
            num_rounds=ctx.rounds,
            wall_time_s=timer.seconds(),
            extra={k2: v.detach().to("cpu") for k2, v in ctx.extra.items()},
        )
        return GenerateOutput(seq, lengths, stats)

    def _start(
        self, ad: ModelAdapter, ctx: _Ctx, ids: Tensor, mask: Tensor, shift: Tensor | None = None
    ) -> tuple[Session, Tensor, Tensor]:
        cap = self._capacity(ids.shape[1], ctx.max_new)
        session, pending, pos = ad.start(
            ids, mask, self.vocab, cap, position_shift=shift, engine=self.engine, reserve=self._block()
        )
        session.profiler = ctx.profiler
        if ad.is_seq2seq or ids.shape[1] > 1:
            ctx.prefill_forwards += 1  # the encoder, or the prompt minus its last token
        return session, pending, pos

    def _run(self, ctx: _Ctx) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _check_cost(c: Any) -> float:
    try:
        v = float(c)
    except (TypeError, ValueError):
        raise ValueError(f"cost ratio c must be a number >= 0, got {c!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"cost ratio c must be a finite number >= 0, got {c!r}")
    return v


# ---- the speculative cascade ----------------------------------------------------------------------------


class SpecCascadeDecoder(BaseDecoder):
    """Speculative cascade with any rule (SpecDecode, lossy, ensemble, Chow, Diff, OPT, Token V1-3, learned).

    Args:
        draft, target: Hugging Face models sharing a vocabulary (causal LMs or seq2seq, not mixed).
        rule: a :class:`specref.rules.Rule` or a rule name (then ``alpha`` and ``rule_options`` build it).
        gamma: drafts per round (>= 1).
        bonus: ``"pi"`` (default; the output is exactly the token-level cascade prod_t pi_t) or
            ``"target"`` (bonus token from p, the usual SpecDecode practice).
        alpha, rule_options: for a rule given by name.
        tokenizer, draft_tokenizer, vocab_size, c, allow_untested: see :class:`BaseDecoder`.
    """

    method = "spec_cascade"
    supports_static = True

    def __init__(
        self,
        draft: Any,
        target: Any,
        rule: Any = "specdecode",
        gamma: int = 5,
        *,
        bonus: str = "pi",
        alpha: float | None = None,
        rule_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.gamma = _check_int("gamma", gamma, 1)
        if bonus not in ("pi", "target"):
            raise ValueError(f"bonus must be 'pi' or 'target', got {bonus!r}")
        self.bonus = bonus
        if isinstance(rule, str):
            if rule in ("target", "draft"):
                raise ValueError(
                    f"rule {rule!r} is a decoding method, not a speculative rule: use make_decoder(..., {rule!r})"
                )
            rule = rules_mod.get(rule, alpha=alpha, **(rule_options or {}))
        elif not isinstance(rule, rules_mod.Rule):
            raise ValueError(f"rule must be a specref.rules.Rule or a rule name, got {type(rule).__name__}")
        elif alpha is not None or rule_options:
            raise ValueError("alpha / rule_options only apply when the rule is given by name")
        self.rule = rule
        self.method = rule.name
        super().__init__(draft, target, **kwargs)
        head = getattr(rule, "head", None)
        self.wants_hidden = bool(getattr(head, "wants_hidden", False))
        if self.wants_hidden and self.engine in STATIC_ENGINES:
            raise ValueError(f"engine {self.engine!r} does not return hidden states, which this head needs: use 'fast'")
        self._fused_kind = fused_kind(self.rule)
        # Test hooks for deliberately wrong variants (negative controls). Never set them in real use.
        self._bug_no_rollback = False
        self._bug_position_shift = False
        self._bug_bonus_from_q = False

    def __repr__(self) -> str:
        return f"SpecCascadeDecoder(rule={self.rule!r}, gamma={self.gamma}, bonus={self.bonus!r})"

    @property
    def alpha(self) -> float | None:
        return getattr(self.rule, "alpha", None)

    def _stat_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alpha": self.alpha}
        for name in ("weight", "beta"):  # ensemble's weight, lossy's beta
            if hasattr(self.rule, name):
                out[name] = getattr(self.rule, name)
        return out

    def _block(self) -> int:
        return self.gamma + 1

    def _run(self, ctx: _Ctx) -> None:
        if self.engine != "plain":
            self._run_fast(ctx)
            return
        g = self.gamma
        dev = ctx.device
        prof = ctx.profiler
        shift = None
        if self._bug_position_shift:
            shift = (ctx.mask[:, 0] == 0).long()  # rows with left padding are off by one
        draft, pend, pos = self._start(self.draft, ctx, ctx.input_ids, ctx.mask, shift)
        target, _, _ = self._start(self.target, ctx, ctx.input_ids, ctx.mask, shift)
        row_ids = torch.arange(ctx.batch, device=dev)
        seeds = ctx.seeds
        gen = torch.zeros(ctx.batch, dtype=torch.long, device=dev)
        ar_g = torch.arange(g, device=dev)
        ar_g1 = torch.arange(g + 1, device=dev)
        cnt = ctx.counters
        while True:
            if prof is not None:
                prof.round_begin()
            # 1. draft gamma + 1 steps
            u_draft = ctx.uniform(seeds, gen.unsqueeze(1) + ar_g, STREAM_DRAFT)
            drafts, q, q_rule, d_hidden, bad = self._draft_block(draft, ctx, pend, pos, u_draft, check=True)
            # 2. one target call on the pending token and the drafts
            fo_t = target.forward(
                torch.cat([pend.unsqueeze(1), drafts], dim=1), pos.unsqueeze(1) + ar_g1, hidden=self.wants_hidden
            )
            ctx.target_forwards += 1
            bad = bad | _nonfinite(fo_t.logits)
            p_rule, p = ctx.probs(fo_t.logits)
            # 3. rule + verification with keyed uniforms
            features = None
            if self.wants_hidden:
                features = {"draft_hidden": d_hidden, "target_hidden": fo_t.hidden}
            uniforms = BlockUniforms(
                accept=ctx.uniform(seeds, gen.unsqueeze(1) + ar_g, STREAM_ACCEPT),
                sample=ctx.uniform(seeds, gen.unsqueeze(1) + ar_g1, STREAM_SAMPLE),
            )
            bonus: Any = q[:, g] if self._bug_bonus_from_q else self.bonus
            res = verify_block(
                drafts,
                q,
                p,
                self.rule,
                q_rule=q_rule,
                p_rule=p_rule,
                bonus=bonus,
                uniforms=uniforms,
                features=features,
                validate=False,
            )
            acc = res.accepted
            # 4. roll back both caches: keep the pending token and the accepted drafts
            keep = ar_g1.unsqueeze(0) <= acc.unsqueeze(1)
            if self._bug_no_rollback:
                keep = torch.ones_like(keep)
            draft.keep_last(g + 1, keep)
            target.keep_last(g + 1, keep)
            n_out, finished = ctx.emit(row_ids, gen, res.tokens, res.num_emitted)
            # statistics (device side)
            reached = ar_g.unsqueeze(0) <= acc.unsqueeze(1)
            n_reached = reached.sum(dim=1)
            cnt.rounds[row_ids] += 1
            cnt.draft_calls[row_ids] += g + 1
            cnt.target_calls[row_ids] += 1
            cnt.drafted[row_ids] += n_reached
            cnt.accepted[row_ids] += acc
            cnt.rejections[row_ids] += (acc < g).long()
            cnt.pos_reached[row_ids] += reached.long()
            cnt.pos_accepted[row_ids] += (ar_g.unsqueeze(0) < acc.unsqueeze(1)).long()
            cnt.deferred[row_ids] += (res.defer_drafted.double() * reached).sum(dim=1)
            cnt.defer_positions[row_ids] += n_reached
            if ctx.on_round is not None:
                ctx.on_round(self._record(ctx, row_ids, gen, drafts, res, n_out, q, p, q_rule, p_rule))
            ctx.rounds += 1
            # next round's pending token: the residual / bonus draw
            pend = res.tokens.gather(1, acc.unsqueeze(1)).squeeze(1)
            pos = pos + acc + 1
            gen = gen + n_out
            # 5. the round's single host sync
            alive = ~finished
            payload = torch.cat([torch.stack([bad.long(), alive.sum()]), draft.summary(), target.summary()])
            vals = payload.tolist()
            if vals[0]:
                _raise_nonfinite("draft or target")
            n_alive = vals[1]
            if n_alive == 0:
                if prof is not None:
                    prof.round_end()
                break
            rows = None
            if n_alive < row_ids.shape[0]:
                rows = _alive_rows(finished, n_alive)
                row_ids, seeds, gen, pend, pos = (x.index_select(0, rows) for x in (row_ids, seeds, gen, pend, pos))
            draft.maintain(vals[2:5], rows)
            target.maintain(vals[5:8], rows)
            if prof is not None:
                prof.round_end()

    def _draft_block(
        self,
        draft: Any,
        ctx: _Ctx,
        pend: Tensor,  # [B] the pending token (last emitted, not yet in the draft's cache)
        pos: Tensor,  # [B] its position
        u_draft: Tensor,  # [B, >= gamma] uniforms of the draft samples
        check: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """Draft ``gamma`` tokens with ``gamma + 1`` forwards (the last one gives q at the bonus position).

        Returns ``drafts`` ``[B, gamma]``, tempered ``q`` and untempered ``q_rule`` ``[B, gamma + 1, V]`` (the
        same tensor when sampling does not change the distribution), the draft's last hidden states
        ``[B, gamma + 1, H]`` when the rule reads them, and, with ``check``, a 0-dim bool "some logits were
        non-finite" (the reference loop checks every forward; the fast loop checks once per round).
        """
        g = self.gamma
        tok = pend.unsqueeze(1)
        q_list, qr_list, d_list, dh_list = [], [], [], []
        bad = None
        for i in range(g + 1):
            fo = draft.forward(tok, (pos + i).unsqueeze(1), hidden=self.wants_hidden)
            lg = fo.logits[:, -1]
            if check:
                bad = _nonfinite(lg) if bad is None else bad | _nonfinite(lg)
            qr, q = ctx.probs(lg)
            q_list.append(q)
            qr_list.append(qr)
            if fo.hidden is not None:
                dh_list.append(fo.hidden[:, -1])
            if i < g:
                d = sample_categorical(q, u_draft[:, i])
                d_list.append(d)
                tok = d.unsqueeze(1)
        ctx.draft_forwards += g + 1
        q_rule = torch.stack(qr_list, dim=1)
        q = q_rule if q_list[0] is qr_list[0] else torch.stack(q_list, dim=1)
        d_hidden = torch.stack(dh_list, dim=1) if dh_list else None
        return torch.stack(d_list, dim=1), q, q_rule, d_hidden, bad

    def _run_fast(self, ctx: _Ctx) -> None:
        """The round loop of the ``fast`` and static engines: same draws, same outputs, less work per round.

        Differences from :meth:`_run` (each exact): one non-finite check per round on the stacked untempered
        distributions instead of one per forward (softmax is non-finite iff the logits are NaN, +inf or all
        -inf); the rule and verification fused (:mod:`specref.decode.fused`) when no ``on_round`` hook needs
        the full per-position tensors; per-row counters accumulated in one ``[B, K]`` tensor of the live rows
        and written back (assigned, so float sums keep their order) only when rows leave and at the end.
        """
        g = self.gamma
        dev = ctx.device
        prof = ctx.profiler
        draft, pend, pos = self._start(self.draft, ctx, ctx.input_ids, ctx.mask)
        target, _, _ = self._start(self.target, ctx, ctx.input_ids, ctx.mask)
        row_ids = torch.arange(ctx.batch, device=dev)
        gen = torch.zeros(ctx.batch, dtype=torch.long, device=dev)
        ar_g = torch.arange(g, device=dev)
        ar_g1 = torch.arange(g + 1, device=dev)
        ar_col = ar_g.unsqueeze(0)
        # live-row accumulators: rounds, drafted, accepted, rejections, pos_reached[g], pos_accepted[g]
        acc_i = torch.zeros((ctx.batch, 4 + 2 * g), dtype=torch.long, device=dev)
        acc_d = torch.zeros(ctx.batch, dtype=torch.float64, device=dev)
        keys = _stream_keys(ctx.seeds)  # [B, 3]: draft, accept, sample streams
        fused = self._fused_kind if (ctx.on_round is None and not self._bug_bonus_from_q) else None
        hidden = self.wants_hidden

        def flush() -> None:
            cnt = ctx.counters
            r = acc_i[:, 0]
            cnt.rounds[row_ids] = r
            cnt.draft_calls[row_ids] = r * (g + 1)
            cnt.target_calls[row_ids] = r
            cnt.drafted[row_ids] = acc_i[:, 1]
            cnt.defer_positions[row_ids] = acc_i[:, 1]
            cnt.accepted[row_ids] = acc_i[:, 2]
            cnt.rejections[row_ids] = acc_i[:, 3]
            cnt.pos_reached[row_ids] = acc_i[:, 4 : 4 + g]
            cnt.pos_accepted[row_ids] = acc_i[:, 4 + g :]
            cnt.deferred[row_ids] = acc_d

        while True:
            if prof is not None:
                prof.round_begin()
            # 1. draft gamma + 1 steps (no per-step non-finite check: one per round, below)
            u_all = _round_uniforms(keys, gen, g + 1)  # [B, 3, g + 1]
            drafts, q, q_rule, d_hidden, _ = self._draft_block(draft, ctx, pend, pos, u_all[:, 0], check=False)
            # 2. one target call on the pending token and the drafts
            block = torch.cat([pend.unsqueeze(1), drafts], dim=1)
            fo_t = target.forward(block, pos.unsqueeze(1) + ar_g1, hidden=hidden)
            ctx.target_forwards += 1
            p_rule, p = ctx.probs(fo_t.logits)
            # softmax rows are in [0, 1] or all NaN: a row max is NaN iff the row is (max propagates NaN)
            bad = ~(torch.isfinite(q_rule.amax(dim=-1)).all() & torch.isfinite(p_rule.amax(dim=-1)).all())
            # 3. rule + verification with keyed uniforms
            features = None
            if hidden:
                features = {"draft_hidden": d_hidden, "target_hidden": fo_t.hidden}
            u_acc, u_smp = u_all[:, 1, :g], u_all[:, 2]
            res: Any = None
            if fused is not None:
                res = fused_verify(drafts, q, p, self.rule, q_rule, p_rule, self.bonus, u_acc, u_smp, features, fused)
            if res is None:
                bonus: Any = q[:, g] if self._bug_bonus_from_q else self.bonus
                res = verify_block(
                    drafts, q, p, self.rule, q_rule=q_rule, p_rule=p_rule, bonus=bonus,
                    uniforms=BlockUniforms(accept=u_acc, sample=u_smp), features=features, validate=False,
                )
            acc = res.accepted
            # 4. roll back both caches: keep the pending token and the accepted drafts
            keep = ar_g1.unsqueeze(0) <= acc.unsqueeze(1)
            draft.keep_last(g + 1, keep)
            target.keep_last(g + 1, keep)
            n_out, finished = ctx.emit(row_ids, gen, res.tokens, res.num_emitted)
            # statistics (device side, live rows)
            acc_col = acc.unsqueeze(1)
            reached = ar_col <= acc_col
            n_reached = reached.sum(dim=1)
            acc_i[:, 0] += 1
            acc_i[:, 1:] += torch.cat(
                [torch.stack([n_reached, acc, (acc < g).long()], dim=1), reached.long(), (ar_col < acc_col).long()],
                dim=1,
            )
            acc_d += (res.defer_drafted.double() * reached).sum(dim=1)
            if ctx.on_round is not None:
                ctx.on_round(self._record(ctx, row_ids, gen, drafts, res, n_out, q, p, q_rule, p_rule))
            ctx.rounds += 1
            pend = res.tokens.gather(1, acc_col).squeeze(1)
            pos = pos + acc + 1
            gen = gen + n_out
            # 5. the round's single host sync
            alive = ~finished
            # both sessions saw the same appends, rollbacks and compactions: their slot tables are equal
            payload = torch.cat([torch.stack([bad.long(), alive.sum()]), draft.summary()])
            vals = payload.tolist()
            if vals[0]:
                _raise_nonfinite("draft or target")
            n_alive = vals[1]
            if n_alive == 0:
                flush()
                if prof is not None:
                    prof.round_end()
                break
            rows = None
            if n_alive < row_ids.shape[0]:
                flush()
                rows = _alive_rows(finished, n_alive)
                row_ids, keys, gen, pend, pos, acc_i, acc_d = (
                    x.index_select(0, rows) for x in (row_ids, keys, gen, pend, pos, acc_i, acc_d)
                )
            draft.maintain(vals[2:5], rows)
            target.maintain(vals[2:5], rows)
            if prof is not None:
                prof.round_end()

    def _record(
        self,
        ctx: _Ctx,
        row_ids: Tensor,
        gen: Tensor,
        drafts: Tensor,
        res: Any,
        n_out: Tensor,
        q: Tensor,
        p: Tensor,
        q_rule: Tensor,
        p_rule: Tensor,
    ) -> RoundRecord:
        defer = res.defer
        if defer.dim() == 3:  # token rules: mass of deferred candidates
            defer = (q * defer).sum(dim=-1)
        return RoundRecord(
            method=self.method,
            round=ctx.rounds,
            row_ids=row_ids,
            start=gen,
            drafts=drafts,
            accepted=res.accepted,
            emitted=n_out,
            tokens=res.tokens,
            q_max=q.amax(-1),
            p_max=p.amax(-1),
            q_rule_max=q_rule.amax(-1),
            p_rule_max=p_rule.amax(-1),
            q_entropy=entropy(q_rule),
            p_entropy=entropy(p_rule),
            tv=tv(p, q),
            defer=defer,
            defer_drafted=res.defer_drafted,
            accept_prob=res.accept_prob,
            rejection_prob=res.rejection_prob,
        )


# ---- factory ----------------------------------------------------------------------------------------------


def make_decoder(
    draft: Any,
    target: Any,
    method: str | rules_mod.Rule = "specdecode",
    alpha: float | None = None,
    gamma: int = DEFAULT_GAMMA,
    **options: Any,
) -> BaseDecoder:
    """Build the decoder for ``method`` (one of :data:`METHODS`, or a Rule object).

    ``alpha`` is required by every method whose rule reads one (see :data:`specref.rules.ALPHA_MEANING`;
    ``ensemble`` may take ``weight``, ``seq_cascade`` ``threshold`` and ``bild`` ``fallback`` instead) and
    refused by ``target``, ``draft`` and ``specdecode``.

    Options by method (all also take ``tokenizer``, ``draft_tokenizer``, ``vocab_size``, ``c``, ``engine``):

    * rule methods (``specdecode`` ... ``learned``): ``bonus`` ("pi" | "target"); rule options such as
      ``beta`` (lossy), ``weight`` (ensemble), ``head`` (learned).
    * ``target`` / ``draft``: autoregressive decoding with one model.
    * ``token_cascade``: Chow's rule per token, the target called only on deferral (defer iff
      ``max q < 1 - alpha``).
    * ``seq_cascade``: ``aggregate`` ("mean" | "sum" | "quantile"), ``quantile`` (in [0, 1]),
      ``threshold`` (log-prob units; ``log(1 - alpha)`` when alpha is given).
    * ``bild``: ``fallback`` (max-prob threshold; ``1 - alpha`` when alpha is given), ``rollback`` (nats,
      default 2.0).
    """
    from specref.decode import baselines

    common = {
        k: options.pop(k)
        for k in ("tokenizer", "draft_tokenizer", "vocab_size", "c", "allow_untested", "engine")
        if k in options
    }
    if isinstance(method, rules_mod.Rule):
        return SpecCascadeDecoder(draft, target, method, gamma, **options, **common)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if method in RULE_METHODS:
        bonus = options.pop("bonus", "pi")
        return SpecCascadeDecoder(
            draft, target, method, gamma, bonus=bonus, alpha=alpha, rule_options=options, **common
        )
    if method in ("target", "draft"):
        if alpha is not None or options:
            raise ValueError(f"method {method!r} takes no alpha or options, got alpha={alpha!r}, {options}")
        return baselines.SingleModelDecoder(draft, target, use=method, **common)
    if method == "token_cascade":
        if options:
            raise ValueError(f"token_cascade takes only alpha, got {options}")
        return baselines.TokenCascadeDecoder(draft, target, alpha=alpha, **common)
    if method == "seq_cascade":
        return baselines.SeqCascadeDecoder(draft, target, alpha=alpha, **options, **common)
    return baselines.BiLDDecoder(draft, target, alpha=alpha, **options, **common)
