"""What every decoder shares: the per-call context, the argument checks of ``generate``, output buffers,
statistics, and the end-of-round step (one host sync, non-finite raise, live-row selection, cache maintenance).

The speculative decoder (:mod:`specref.decode.decoder`) and the baselines (:mod:`specref.decode.baselines`)
both build on this module; neither imports the other's internals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from specref.decode.adapters import ModelAdapter, check_prompts, shared_vocab_size
from specref.decode.engines import check_static_models, get_engine
from specref.decode.generation import check_nonnegative, default_eos_ids, eos_ids, resolve_generation, row_seeds
from specref.decode.kvcache import available_bytes, kv_cache_bytes
from specref.decode.session import KVSession
from specref.decode.stats import Counters, DecodeStats, RoundRecord, Timer
from specref.defaults import DEFAULT_ENGINE
from specref.dists import probs_from_logits
from specref.rng import keyed_uniform
from specref.verify import PAD


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


# ---- per-call context and per-row state ---------------------------------------------------------------


class CallContext:
    """Everything one ``generate`` call needs, shared by the methods' loops.

    Public within the package because each method's loop (:mod:`specref.decode.decoder`,
    :mod:`specref.decode.baselines`) and the round strategies (:mod:`specref.decode.rounds`) receive it;
    it is built only by :meth:`BaseDecoder.generate`."""

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
        self.counters = Counters(self.batch, getattr(dec, "gamma", 0) or 0, self.device)
        self.draft_forwards = self.target_forwards = self.prefill_forwards = 0
        self.rounds = 0
        #: rounds per block size, when a block-size policy or the draft stop sets them (empty otherwise)
        self.gamma_rounds: dict[int, int] = {}
        #: the speculative decoder's in-round draft stop for this call (None: off; set by ``generate``)
        self.draft_stop: float | None = None
        self.extra: dict[str, Tensor] = {}
        self.prompt_len = mask.sum(dim=1)
        #: optional :class:`~specref.decode.profile.RoundProfiler`
        self.profiler: Any = None
        #: column offsets of a round's tokens, and emit_lean's EOS weights (block + 1 - j at column j)
        self._ar = torch.arange(block + 1, device=self.device)
        self._eos_weight = block + 1 - self._ar
        self._eos_cut = block + 2

    def probs(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`~specref.dists.probs_from_logits` with the call's settings."""
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

    def emit_lean(self, row_ids: Tensor, gen: Tensor, tokens: Tensor, n_new: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`emit` in fewer ops, for a loop that keeps every row's length itself: returns
        ``(finished, gen + n_out)`` and does NOT update :attr:`lengths` (the caller writes them, at the latest
        when rows leave). Needs ``gen <= max_new_tokens`` (true of every live row: a row leaves once it
        reaches it).

        The slots after a row's last emitted token are written too (with ``tokens``' values there); they are
        overwritten by the row's next round or, for a finished row, cut off by its length when ``generate``
        returns, so the output is :meth:`emit`'s."""
        n = tokens.shape[1]
        self.out[row_ids.unsqueeze(1), gen.unsqueeze(1) + self._ar[:n]] = tokens
        if not self.eos.numel():
            # n_out = min(n_new, max_new - gen); the row ends iff the length stopped it
            end = gen + n_new
            return end >= self.max_new, end.clamp(max=self.max_new)
        # the first EOS among all n tokens: if it lies at or after the row's limit, the row's tokens stop at the
        # limit either way, so searching only the candidates (as emit does) changes nothing.
        # weight (block + 1 - j) for an EOS at j: the first EOS has the largest; none gives 0
        w = torch.isin(tokens, self.eos) * self._eos_weight[:n]
        cut = self._eos_cut - w.amax(dim=1)  # first EOS index + 1; block + 2 > n when there is none
        stop = torch.minimum(self.max_new - gen, cut)
        # n_out = min(n_new, max_new - gen, first EOS + 1); the row ends iff the length or an EOS stopped it
        return stop <= n_new, gen + torch.minimum(n_new, stop)


def any_nonfinite(logits: Tensor) -> Tensor:
    """0-dim bool: some row of ``logits`` ``[..., V]`` contains NaN / +inf or is all -inf.

    Public because every method's loop checks its forwards with it before :func:`end_round` raises."""
    return ~torch.isfinite(logits.float().amax(dim=-1)).all()


def _raise_nonfinite(where: str) -> None:
    raise NonFiniteLogitsError(
        f"the {where} model produced NaN or infinite logits; refusing to sample from them (check the "
        "model's weights and dtype, e.g. fp16 overflow: try bfloat16 or float32)"
    )


def _alive_rows(finished: Tensor, n_alive: int) -> Tensor:
    """Indices of the ``n_alive`` unfinished rows, in order, without a host sync."""
    return torch.argsort(finished.to(torch.int8), stable=True)[:n_alive]


def end_round(
    finished: Tensor,  # [B] bool: rows that ended this round
    bad: Tensor,  # 0-dim bool: some logits of the round were non-finite
    sessions: Sequence[Any],
    carry: Sequence[Tensor],  # [B, ...] per-row tensors that follow the live rows
    *,
    extra: Sequence[Tensor] = (),  # long tensors (any shape, read flat) read in the same sync
    shared: bool = False,
    on_leave: Callable[[], Any] | None = None,
    where: str = "draft or target",
) -> tuple[list[Tensor], list[int]] | None:
    """The end of every decoding round: ONE host sync, then the non-finite raise, live-row selection and
    cache maintenance.

    The sync reads ``bad``, the number of live rows, ``extra`` and each session's summary (``shared``: the
    sessions saw the same appends, rollbacks and compactions, so the first one's summary serves all).
    ``on_leave`` runs before the live rows change (and when every row has finished). Returns None when every
    row has finished, else ``(carry, extra values)`` with ``carry`` restricted to the live rows.
    """
    summaries = [sessions[0].summary()] if shared else [s.summary() for s in sessions]
    # one cat of long tensors (one kernel on a GPU, where mixed dtypes copy input by input): the flag, the
    # finished count, extra, the summaries
    flat = [e.reshape(-1) for e in extra]
    head_vals = [bad.long().reshape(1), finished.sum().reshape(1), *flat]
    vals = torch.cat([*head_vals, *summaries]).tolist()
    if vals[0]:
        _raise_nonfinite(where)
    n_alive = finished.shape[0] - vals[1]
    head = 2 + sum(int(e.shape[0]) for e in flat)
    if n_alive == 0:
        if on_leave is not None:
            on_leave()
        return None
    rows = None
    out = list(carry)
    if n_alive < finished.shape[0]:
        if on_leave is not None:
            on_leave()
        rows = _alive_rows(finished, n_alive)
        out = [t.index_select(0, rows) if t.numel() else t[:n_alive] for t in carry]  # empty: any n_alive rows
    for i, s in enumerate(sessions):
        k = head if shared else head + 3 * i
        s.maintain(vals[k : k + 3], rows)
    return out, vals[2:head]


class BaseDecoder:
    """Shared plumbing: model checks, argument validation, output buffers, timing, statistics.

    Subclasses implement :meth:`_run`. ``tokenizer`` / ``draft_tokenizer`` (optional) are checked for a
    shared vocabulary, and their EOS ids join the default EOS set; ``vocab_size`` overrides the inferred
    shared vocabulary; ``c`` is the draft/target cost ratio used for modeled latency (None: the ratio of
    per-step parameters, :func:`specref.decode.step_cost.step_cost_ratio`; the statistics say which).
    ``engine`` (see ``docs/performance.md``): ``"plain"`` (the
    reference path), ``"fast"`` (preallocated slot tables, a leaner round, fused rule + verification;
    identical outputs), or a static-shape engine, ``"static"``, ``"graph"`` (CUDA graphs of the model
    forwards), ``"compile"`` / ``"compile-graph"`` (``torch.compile``), with the speculative and single-model
    decoders.
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
        engine: str = DEFAULT_ENGINE,
    ) -> None:
        #: the engine's entry in :data:`specref.decode.engines.ENGINE_TABLE`; ``engine`` is its name
        self.engine_spec = get_engine(engine)
        self.engine = self.engine_spec.name
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
            self.c, self.c_source = check_nonnegative("cost ratio c", c), "given"
        self.is_seq2seq = self.draft.is_seq2seq
        self.device = self.target.device
        if self.engine_spec.static_shapes and not self.supports_static:
            raise ValueError(f"engine {engine!r} is available for the speculative and single-model decoders only")
        check_static_models(self.engine_spec, (self.draft, self.target))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r}, gamma={self.gamma}, vocab={self.vocab})"

    def _block(self) -> int:
        return 1

    def _reserve(self, ad: ModelAdapter) -> int:
        """The most KV slots one round appends to ``ad``'s session (static engines keep that much free)."""
        return self._block()

    def _stat_params(self) -> dict[str, Any]:
        """The method's parameters as printed by ``stats.summary()`` (alpha first)."""
        return {"alpha": getattr(self, "alpha", None)}

    def _call_draft_stop(self, given: float | None) -> float | None:
        """The in-round draft stop of one call from a GenerationConfig's ``assistant_confidence_threshold``
        (``given``; None: not given): only the speculative decoder drafts in rounds, so this one has none."""
        return None

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
        seeds = row_seeds(seed, ids.shape[0], self.device)
        eos = eos_ids(self.default_eos_ids() if gen.eos is None else gen.eos, self.vocab, self.device)
        ctx = CallContext(
            self, ids, mask, max_new, gen.temperature, gen.top_k, gen.top_p, seeds, eos, on_round, self._block()
        )
        ctx.draft_stop = self._call_draft_stop(gen.draft_stop)
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
        params = self._stat_params()
        if ctx.draft_stop is not None:
            params["draft_confidence_threshold"] = ctx.draft_stop
        stats = DecodeStats.from_counters(
            self.method,
            self.gamma,
            self.c,
            ctx.counters,
            c_source=self.c_source,
            params=params,
            settings=settings,
            draft_forwards=ctx.draft_forwards,
            target_forwards=ctx.target_forwards,
            prefill_forwards=ctx.prefill_forwards,
            num_rounds=ctx.rounds,
            gamma_rounds=dict(sorted(ctx.gamma_rounds.items())),
            wall_time_s=timer.seconds(),
            extra={k2: v.detach().to("cpu") for k2, v in ctx.extra.items()},
        )
        return GenerateOutput(seq, lengths, stats)

    def _start(self, ad: ModelAdapter, ctx: CallContext, ids: Tensor, mask: Tensor) -> tuple[KVSession, Tensor, Tensor]:
        """Prefill ``ad`` on the prompts: ``(session, pending token [B], its position [B])``."""
        # a seq2seq decoder holds the start token and the output only (the prompt is the encoder's)
        cap = self._capacity(1 if ad.is_seq2seq else ids.shape[1], ctx.max_new)
        session, pending, pos = ad.start(ids, mask, self.vocab, cap, engine=self.engine_spec, reserve=self._reserve(ad))
        session.profiler = ctx.profiler
        if ad.is_seq2seq or ids.shape[1] > 1:
            ctx.prefill_forwards += 1  # the encoder, or the prompt minus its last token
        return session, pending, pos

    def _run(self, ctx: CallContext) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
