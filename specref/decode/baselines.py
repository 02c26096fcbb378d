"""Baseline decoders: target-only, draft-only, TokenCascade [Chow], SeqCascade [Chow] and BiLD.

All share the batched plumbing of :mod:`specref.decode.base` (left-padded prompts, slot caches, keyed
per-row randomness, one host sync per round, finished rows leaving the batch). Randomness is keyed so that
no uniform is ever consumed twice by a row, which keeps every method exactly equal in distribution to its
enumeration in :mod:`specref.baselines_exact`:

* target-only / draft-only: token ``t`` uses (STREAM_SAMPLE, t).
* SeqCascade: the draft pass uses (STREAM_DRAFT, t), the target's regeneration (STREAM_SAMPLE, t). A deferred
  row's output is therefore exactly its target-only output for the same seed.
* TokenCascade / BiLD: a draft token at ``t`` uses (STREAM_DRAFT, t + k 2^32), a target token
  (STREAM_SAMPLE, t + k 2^32), where ``k`` counts the row's target calls so far. BiLD needs the epoch ``k``:
  whether a fallback (and so a rollback) happens depends on draft tokens drawn after the rolled-back
  position, so their uniforms may not be reused.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from specref import rules as rules_mod
from specref.decode.base import BaseDecoder, CallContext, any_nonfinite, end_round
from specref.decode.stats import RoundRecord, entropy
from specref.dists import sample_categorical
from specref.rng import STREAM_DRAFT, STREAM_SAMPLE

__all__ = [
    "SEQ_AGGREGATES",
    "BiLDDecoder",
    "SeqCascadeDecoder",
    "SingleModelDecoder",
    "TokenCascadeDecoder",
    "sequence_confidence",
]

#: Sequence-confidence aggregates of SeqCascade.
SEQ_AGGREGATES = ("mean", "sum", "quantile")
#: Counter offset per target call in TokenCascade / BiLD (see the module docstring).
EPOCH = 1 << 32


def _autoregress(
    ctx: CallContext,
    session: Any,
    pend: Tensor,
    pos: Tensor,
    row_ids: Tensor,
    seeds: Tensor,
    stream: int,
    role: str,
    method: str,
    logprob_buf: Tensor | None = None,
) -> None:
    """Plain sampling from one model until every row hits EOS or max_new_tokens (rows start at length 0)."""
    cnt = ctx.counters
    gen = torch.zeros_like(pend)
    ones = torch.ones_like(pend)
    calls = cnt.target_calls if role == "target" else cnt.draft_calls
    prof = ctx.profiler
    while True:
        if prof is not None:
            prof.round_begin()
        fo = session.forward(pend.unsqueeze(1), pos.unsqueeze(1))
        lg = fo.logits[:, -1]
        bad = any_nonfinite(lg)
        raw, probs = ctx.probs(lg)
        x = sample_categorical(probs, ctx.uniform(seeds, gen.unsqueeze(1), stream)[:, 0])
        if logprob_buf is not None:
            logprob_buf[row_ids, gen] = torch.log(raw.gather(1, x.unsqueeze(1)).squeeze(1).double())
        n_out, finished = ctx.emit(row_ids, gen, x.unsqueeze(1), ones)
        calls[row_ids] += 1
        cnt.rounds[row_ids] += 1
        if role == "target":
            ctx.target_forwards += 1
        else:
            ctx.draft_forwards += 1
        if ctx.on_round is not None:
            ctx.on_round(
                RoundRecord(
                    method=method,
                    round=ctx.rounds,
                    row_ids=row_ids,
                    start=gen,
                    emitted=n_out,
                    tokens=x.unsqueeze(1),
                    **(
                        {"p_max": probs.amax(-1), "p_rule_max": raw.amax(-1), "p_entropy": entropy(raw)}
                        if role == "target"
                        else {"q_max": probs.amax(-1), "q_rule_max": raw.amax(-1), "q_entropy": entropy(raw)}
                    ),
                )
            )
        ctx.rounds += 1
        pend, pos, gen = x, pos + 1, gen + n_out
        step = end_round(finished, bad, (session,), (row_ids, seeds, gen, pend, pos, ones), where=role)
        if prof is not None:
            prof.round_end()
        if step is None:
            return
        row_ids, seeds, gen, pend, pos, ones = step[0]


class SingleModelDecoder(BaseDecoder):
    """Autoregressive decoding with the target alone (``use="target"``) or the draft alone (``"draft"``)."""

    supports_static = True

    def __init__(self, draft: Any, target: Any, use: str = "target", **kwargs: Any) -> None:
        if use not in ("target", "draft"):
            raise ValueError(f"use must be 'target' or 'draft', got {use!r}")
        self.use = use
        self.method = use
        self.uses_draft = use == "draft"
        self.uses_target = use == "target"
        super().__init__(draft, target, **kwargs)

    def _run(self, ctx: CallContext) -> None:
        ad = self.target if self.use == "target" else self.draft
        session, pend, pos = self._start(ad, ctx, ctx.input_ids, ctx.mask)
        rows = torch.arange(ctx.batch, device=ctx.device)
        _autoregress(ctx, session, pend, pos, rows, ctx.seeds, STREAM_SAMPLE, self.use, self.method)


def sequence_confidence(logprobs: Tensor, lengths: Tensor, aggregate: str, quantile: float = 0.5) -> Tensor:
    """Confidence ``[B]`` of each row's first ``lengths`` token log-probabilities ``[B, L]``.

    ``sum``, ``mean``, or ``quantile``: linear interpolation between order statistics (``torch.quantile``'s
    default), so ``quantile=0`` is the least confident token.
    """
    n = lengths.clamp_min(1)
    valid = torch.arange(logprobs.shape[1], device=logprobs.device).unsqueeze(0) < n.unsqueeze(1)
    lp = logprobs.double()
    if aggregate == "sum":
        return torch.where(valid, lp, torch.zeros_like(lp)).sum(dim=1)
    if aggregate == "mean":
        return torch.where(valid, lp, torch.zeros_like(lp)).sum(dim=1) / n
    srt = torch.sort(torch.where(valid, lp, torch.full_like(lp, math.inf)), dim=1).values
    x = quantile * (n - 1).double()
    lo = x.floor().long()
    hi = torch.minimum(lo + 1, n - 1)
    a = srt.gather(1, lo.unsqueeze(1)).squeeze(1)
    b = srt.gather(1, hi.unsqueeze(1)).squeeze(1)
    return a + (x - lo.double()) * (b - a)


class SeqCascadeDecoder(BaseDecoder):
    """SeqCascade [Chow]: the draft answers; rows whose sequence confidence is low are regenerated by the target.

    Confidence is the ``aggregate`` (``mean`` / ``sum`` / ``quantile``) of the log-probabilities the
    UNtempered draft gave its own sampled tokens; a row defers iff ``confidence < threshold``, with
    ``threshold = log(1 - alpha)`` by default (``mean``: the geometric-mean token probability is below
    ``1 - alpha``, Chow's rule at the sequence level).
    """

    method = "seq_cascade"

    def __init__(
        self,
        draft: Any,
        target: Any,
        alpha: float | None = None,
        *,
        aggregate: str = "mean",
        quantile: float = 0.5,
        threshold: float | None = None,
        **kwargs: Any,
    ) -> None:
        if aggregate not in SEQ_AGGREGATES:
            raise ValueError(f"aggregate must be one of {SEQ_AGGREGATES}, got {aggregate!r}")
        q = rules_mod.check_real("quantile", quantile)
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile!r}")
        if threshold is not None and alpha is not None:
            raise ValueError("give seq_cascade either alpha or threshold, not both")
        if threshold is None and alpha is None:
            raise rules_mod.missing_alpha_error(self.method)
        if threshold is None:
            a = rules_mod.check_real("alpha", alpha)
            if not (a < 1.0):
                raise ValueError(f"seq_cascade alpha must be < 1 (threshold log(1 - alpha)), got {alpha!r}")
            threshold = math.log1p(-a) if a > -math.inf else math.inf
            rules_mod.warn_degenerate_alpha(self.method, a)
            alpha = a
        self.threshold = rules_mod.check_real("threshold", threshold)
        if alpha is None and self.threshold > 0:
            # every aggregate of log-probabilities is <= 0
            warnings.warn(
                f"seq_cascade with threshold={threshold!r} > 0 always defers (every row is regenerated by the "
                "target): confidences are log-probabilities, <= 0",
                stacklevel=2,
            )
        self.alpha = alpha
        self.aggregate, self.quantile = aggregate, q
        super().__init__(draft, target, **kwargs)

    def __repr__(self) -> str:
        return (
            f"SeqCascadeDecoder(aggregate={self.aggregate!r}, quantile={self.quantile}, threshold={self.threshold:.4g})"
        )

    def _stat_params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "threshold": self.threshold, "aggregate": self.aggregate}

    def _run(self, ctx: CallContext) -> None:
        dev = ctx.device
        lp = torch.zeros((ctx.batch, ctx.max_new), dtype=torch.float64, device=dev)
        session, pend, pos = self._start(self.draft, ctx, ctx.input_ids, ctx.mask)
        rows = torch.arange(ctx.batch, device=dev)
        _autoregress(ctx, session, pend, pos, rows, ctx.seeds, STREAM_DRAFT, "draft", self.method, lp)
        del session
        conf = sequence_confidence(lp, ctx.lengths, self.aggregate, self.quantile)
        defer = conf < self.threshold
        ctx.extra["confidence"] = conf
        ctx.extra["seq_deferred"] = defer
        ctx.counters.deferred += defer.double()
        ctx.counters.defer_positions += 1
        idx = torch.nonzero(defer).squeeze(1)  # one extra host sync, at the phase boundary
        if idx.numel() == 0:
            return
        ids, mask = ctx.input_ids.index_select(0, idx), ctx.mask.index_select(0, idx)
        keep = int(mask.sum(dim=1).max())  # drop all-padding columns of the sub-batch
        ids, mask = ids[:, -keep:], mask[:, -keep:]
        ctx.lengths[idx] = 0
        session, pend, pos = self._start(self.target, ctx, ids, mask)
        _autoregress(ctx, session, pend, pos, idx, ctx.seeds.index_select(0, idx), STREAM_SAMPLE, "target", self.method)


class _SequentialCascade(BaseDecoder):
    """Token-by-token cascade: the draft proposes; when its max probability is below ``fallback`` the target
    is called on everything it has not seen and produces the token; with a finite ``rollback`` (BiLD) the
    target first rolls back to the first unchecked draft token whose target NLL exceeds ``rollback``."""

    def __init__(self, draft: Any, target: Any, fallback: float, rollback: float, **kwargs: Any) -> None:
        self.fallback = rules_mod.check_real("fallback threshold", fallback)
        self.rollback = rules_mod.check_real("rollback threshold", rollback)
        if self.rollback < 0:
            raise ValueError(f"rollback threshold must be >= 0 (nats), got {rollback!r}")
        super().__init__(draft, target, **kwargs)

    def _block(self) -> int:
        return 1

    def _run(self, ctx: CallContext) -> None:
        dev = ctx.device
        draft, pend, base = self._start(self.draft, ctx, ctx.input_ids, ctx.mask)
        target, _, _ = self._start(self.target, ctx, ctx.input_ids, ctx.mask)
        last_prompt = pend.clone()  # x_{-1}; token x_i sits at position base + 1 + i
        row_ids = torch.arange(ctx.batch, device=dev)
        seeds = ctx.seeds
        zeros = torch.zeros(ctx.batch, dtype=torch.long, device=dev)
        gen, verified, epoch = zeros.clone(), zeros.clone(), zeros.clone()
        finished = torch.zeros(ctx.batch, dtype=torch.bool, device=dev)
        carried_bad = torch.zeros((), dtype=torch.bool, device=dev)
        cnt = ctx.counters
        while True:
            # Phase A: one draft step for every row.
            start = gen
            fo = draft.forward(pend.unsqueeze(1), (base + gen).unsqueeze(1))
            ctx.draft_forwards += 1
            lg = fo.logits[:, -1]
            bad = carried_bad | any_nonfinite(lg)
            q_rule, q = ctx.probs(lg)
            alive = ~finished
            fb = alive & rules_mod.confidence_below(q_rule.amax(dim=-1), self.fallback)
            small = alive & ~fb
            x = sample_categorical(q, ctx.uniform(seeds, (gen + epoch * EPOCH).unsqueeze(1), STREAM_DRAFT)[:, 0])
            n_out, fin = ctx.emit(row_ids, gen, x.unsqueeze(1), small.long())
            finished = finished | (small & fin)
            pend = torch.where(small, x, pend)
            gen = gen + n_out
            n_blk = torch.where(fb, gen - verified + 1, torch.zeros_like(gen))
            cnt.draft_calls[row_ids] += alive.long()
            cnt.rounds[row_ids] += alive.long()
            cnt.deferred[row_ids] += fb.double()
            cnt.defer_positions[row_ids] += alive.long()
            record = None
            if ctx.on_round is not None:
                record = RoundRecord(
                    method=self.method,
                    round=ctx.rounds,
                    row_ids=row_ids,
                    start=start,
                    deferred=fb,
                    q_max=q.amax(-1),
                    q_rule_max=q_rule.amax(-1),
                    q_entropy=entropy(q_rule),
                    emitted=n_out,
                )
            ctx.rounds += 1
            # The round's single host sync.
            step = end_round(
                finished,
                bad,
                (draft, target),
                (row_ids, seeds, gen, verified, epoch, finished, pend, base, last_prompt, fb, n_blk),
                extra=(n_blk.max(),),
            )
            if step is None:
                if record is not None:
                    ctx.on_round(record)
                return
            (row_ids, seeds, gen, verified, epoch, finished, pend, base, last_prompt, fb, n_blk), (lb,) = step
            carried_bad = torch.zeros((), dtype=torch.bool, device=dev)
            if lb > 0:
                # Phase B: the target catches up on the deferring rows and produces their token.
                j = torch.arange(lb, device=dev).unsqueeze(0)
                idx = verified.unsqueeze(1) - 1 + j  # index into x (-1: the last prompt token)
                real = j < n_blk.unsqueeze(1)
                width = ctx.out.shape[1]
                hist = ctx.out[row_ids.unsqueeze(1), idx.clamp(0, width - 1)]
                tok = torch.where(idx < 0, last_prompt.unsqueeze(1), hist)
                tok = torch.where(real, tok, torch.zeros_like(tok))
                fo_t = target.forward(tok, base.unsqueeze(1) + 1 + idx, real)
                ctx.target_forwards += 1
                logits = fo_t.logits
                carried_bad = (~torch.isfinite(logits.float().amax(dim=-1)) & real).any()
                p_rule, p = ctx.probs(logits)
                last = (n_blk - 1).clamp_min(0)
                jstar = last
                if math.isfinite(self.rollback) and lb > 1:
                    nxt = tok[:, 1:]
                    nll = -torch.log(p_rule[:, :-1].gather(-1, nxt.unsqueeze(-1)).squeeze(-1))
                    check = (j[:, :-1] < last.unsqueeze(1)) & (nll > self.rollback)
                    jstar = torch.where(check.any(dim=1), check.to(torch.int8).argmax(dim=1), last)
                m = verified + jstar  # index of the token the target produces
                v = p.shape[-1]
                p_sel = p.gather(1, jstar.view(-1, 1, 1).expand(-1, 1, v)).squeeze(1)
                y = sample_categorical(p_sel, ctx.uniform(seeds, (m + epoch * EPOCH).unsqueeze(1), STREAM_SAMPLE)[:, 0])
                at = torch.where(fb, m, gen)
                n_out, fin = ctx.emit(row_ids, at, y.unsqueeze(1), fb.long())
                finished = finished | (fb & fin)
                rolled = fb & (jstar < last)
                gen = torch.where(fb, m + n_out, gen)
                pend = torch.where(fb, y, pend)
                target.keep_last(lb, real & (j <= jstar.unsqueeze(1)))
                draft.truncate(base + 1 + m, rows=fb)
                verified = torch.where(fb, m + 1, verified)
                epoch = epoch + fb.long()
                cnt.target_calls[row_ids] += fb.long()
                cnt.rollbacks[row_ids] += rolled.long()
                if target.contiguous:
                    target.realign()
                if draft.contiguous:
                    draft.realign()
                if record is not None:
                    record.p_rule_max = p_rule.amax(-1)
                    record.extra.update({"rolled_back": rolled, "target_token": y, "target_index": m})
            if record is not None:
                ctx.on_round(record)


class TokenCascadeDecoder(_SequentialCascade):
    """TokenCascade [Chow]: per token, keep the draft's sample unless ``max q < 1 - alpha`` (the untempered
    draft; alpha is required); then call the target (only then) and sample the token from p."""

    method = "token_cascade"

    def __init__(self, draft: Any, target: Any, alpha: float | None = None, **kwargs: Any) -> None:
        if alpha is None:
            raise rules_mod.missing_alpha_error(self.method)
        self.alpha = rules_mod.check_real("alpha", alpha)
        rules_mod.warn_degenerate_alpha(self.method, self.alpha)
        super().__init__(draft, target, fallback=1.0 - self.alpha, rollback=math.inf, **kwargs)

    def __repr__(self) -> str:
        return f"TokenCascadeDecoder(alpha={self.alpha!r})"

    def _stat_params(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


class BiLDDecoder(_SequentialCascade):
    """BiLD (Kim et al. 2023): fallback when the UNtempered draft's max probability < ``fallback`` (give
    ``fallback``, or ``alpha`` for ``fallback = 1 - alpha``; there is no default); at each fallback the
    target rolls back to the first unchecked draft token ``x_j`` with ``-log p(x_j) > rollback`` (nats,
    untempered target) and samples position j itself, else it samples the current position. Tokens
    drafted after the last fallback are kept when generation ends."""

    method = "bild"

    def __init__(
        self,
        draft: Any,
        target: Any,
        alpha: float | None = None,
        *,
        fallback: float | None = None,
        rollback: float = 2.0,
        **kwargs: Any,
    ) -> None:
        if fallback is not None and alpha is not None:
            raise ValueError("give bild either alpha (fallback = 1 - alpha) or fallback, not both")
        if fallback is None and alpha is None:
            raise rules_mod.missing_alpha_error(self.method)
        if fallback is None:
            alpha = rules_mod.check_real("alpha", alpha)
            fallback = 1.0 - alpha
        self.alpha = alpha
        super().__init__(draft, target, fallback=fallback, rollback=rollback, **kwargs)
        # the fallback test is Chow's, max q < fallback: alpha = 1 - fallback has Chow's limits
        rules_mod.warn_degenerate_alpha(self.method, 1.0 - self.fallback if alpha is None else alpha)

    def __repr__(self) -> str:
        return f"BiLDDecoder(fallback={self.fallback!r}, rollback={self.rollback!r})"

    def _stat_params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "fallback": self.fallback, "rollback": self.rollback}
