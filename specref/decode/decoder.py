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
   ``bonus="pi"``) and the KV entry of the last draft (needed next round whenever all drafts pass); with
   ``draft_confidence_threshold``, a row stops drafting after a token its draft doubts, and the drafting
   ends (one step after) once every row has stopped;
2. the target scores the ``gamma + 1`` positions in ONE forward;
3. the rule reads the untempered pair and mixes the tempered pair; :func:`specref.verify.verify_block`
   accepts a prefix of the drafts and draws the residual / bonus token, with uniforms keyed by (row seed,
   absolute token index, stream) so a row's output never depends on the rest of the batch;
4. rows emit 1..gamma+1 tokens (cut at EOS and max_new_tokens); rejected drafts become masked holes in both
   caches (see :mod:`specref.decode.kvcache`);
5. ONE host sync reads a small tensor (non-finite logits flag, rows still running, cache summaries); finished
   rows leave the batch and caches are tidied. (The draft stop adds one read per draft step in step 1: has
   every row stopped?)
"""

from __future__ import annotations

from functools import partial
from numbers import Integral
from typing import Any

import torch
from torch import Tensor

from specref import rules as rules_mod
from specref.decode import baselines
from specref.decode.base import (
    BaseDecoder,
    CallContext,
    GenerateOutput,
    NonFiniteLogitsError,
    any_nonfinite,
    end_round,
)
from specref.decode.fused import FusedResult, fused_kind, fused_verify
from specref.decode.gamma_policy import AdaptiveGamma
from specref.decode.generation import check_confidence_threshold, check_int
from specref.decode.rounds import DraftStop, round_plan
from specref.decode.stats import RoundRecord, entropy
from specref.defaults import DEFAULT_GAMMA, METHODS, RULE_METHODS
from specref.dists import sample_categorical, tv
from specref.verify import BlockUniforms, verify_block

__all__ = [
    "METHODS",
    "RULE_METHODS",
    "BaseDecoder",
    "GenerateOutput",
    "NonFiniteLogitsError",
    "SpecCascadeDecoder",
    "all_methods",
    "make_decoder",
]

# METHODS (every method make_decoder accepts) and RULE_METHODS (those with a rule from specref.rules) live
# in specref.defaults, importable without torch; they are re-exported here under their old names.


def all_methods() -> tuple[str, ...]:
    """Every method :func:`make_decoder` accepts now: the built-in ones, then the rules added with
    :func:`specref.rules.register`."""
    return (*METHODS, *(name for name in rules_mod.NAMES() if name not in METHODS))


# ---- the speculative cascade ----------------------------------------------------------------------------


class SpecCascadeDecoder(BaseDecoder):
    """Speculative cascade with any rule (SpecDecode, lossy, ensemble, Chow, Diff, OPT, Token V1-3, learned).

    Args:
        draft, target: Hugging Face models sharing a vocabulary (causal LMs or seq2seq, not mixed).
        rule: a :class:`specref.rules.Rule` or a rule name (then ``alpha`` and ``rule_options`` build it).
        gamma: drafts per round (>= 1); with a block-size policy or the draft stop, the most a round drafts.
        bonus: ``"pi"`` (default; the output is exactly the token-level cascade prod_t pi_t) or
            ``"target"`` (bonus token from p, the usual SpecDecode practice).
        alpha, rule_options: for a rule given by name.
        gamma_policy: None (every round drafts ``gamma``), ``"adaptive"`` or an
            :class:`~specref.decode.gamma_policy.AdaptiveGamma`: each round's block size, chosen before it.
        draft_confidence_threshold: None (off, the default) or a number in (0, 1): the in-round draft stop of
            transformers' assisted generation (``assistant_confidence_threshold``, a fixed threshold here).
            After the draft samples ``x_i`` with probability ``q_i(x_i)`` (under the distribution it sampled
            from: tempered and filtered) below the threshold, the row drafts nothing more this round; its
            position ``i + 1`` takes the bonus token (from ``pi``, or ``p`` with ``bonus="target"``), as in a
            round of ``i`` drafts. ``gamma`` (or the policy's choice) is then each round's maximum, so a larger
            one pays (e.g. 20). The law is unchanged: the decision not to draft position ``i + 1`` is a
            function of its prefix (see :class:`~specref.decode.rounds.DraftStop`). Its price: one host read
            per draft step (has every row stopped?), where the round otherwise syncs once. A
            ``GenerationConfig``'s ``assistant_confidence_threshold`` given to ``generate`` overrides it for
            that call (0: off).
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
        gamma_policy: AdaptiveGamma | str | None = None,
        draft_confidence_threshold: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.gamma = check_int("gamma", gamma, 1)
        #: the in-round draft stop (None: off)
        self.draft_confidence_threshold = (None if draft_confidence_threshold is None else
                                           check_confidence_threshold("draft_confidence_threshold",
                                                                      draft_confidence_threshold))
        if gamma_policy == "adaptive":
            gamma_policy = AdaptiveGamma()
        if gamma_policy is not None and not isinstance(gamma_policy, AdaptiveGamma):
            raise ValueError(f"gamma_policy must be None, 'adaptive' or an AdaptiveGamma, got {gamma_policy!r}")
        #: picks each round's block size in 1..gamma, or 0..gamma where pi = p (None: every round drafts gamma)
        self.gamma_policy = gamma_policy
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
        if self.wants_hidden and self.engine_spec.static_shapes:
            raise ValueError(f"engine {self.engine!r} does not return hidden states, which this head needs: use 'fast'")
        self._fused_kind = fused_kind(self.rule)
        #: rounds may skip the draft (g = 0, a plain target step): a policy and a rule whose pi is p
        self._zero_ok = gamma_policy is not None and self.rule.pi_is_target

    def __repr__(self) -> str:
        stop = self.draft_confidence_threshold
        more = "" if stop is None else f", draft_confidence_threshold={stop!r}"
        return f"SpecCascadeDecoder(rule={self.rule!r}, gamma={self.gamma}, bonus={self.bonus!r}{more})"

    def _call_draft_stop(self, given: float | None) -> float | None:
        """The decoder's draft stop, unless the call's GenerationConfig gave one (0: off for the call)."""
        if given is None:
            return self.draft_confidence_threshold
        return given or None

    @property
    def alpha(self) -> float | None:
        return getattr(self.rule, "alpha", None)

    def _stat_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alpha": self.alpha}
        if self.gamma_policy is not None:
            out["gamma_policy"] = repr(self.gamma_policy)
        for name in ("weight", "beta"):  # ensemble's weight, lossy's beta
            if hasattr(self.rule, name):
                out[name] = getattr(self.rule, name)
        return out

    def _block(self) -> int:
        return self.gamma + 1

    def _reserve(self, ad: Any) -> int:
        """Slots one round may append to ``ad``'s session. After ``g = 0`` rounds the draft's next round
        also reads the skipped tokens, at most the policy's ``probe_every`` of them (static engines keep
        that much room free)."""
        if self._zero_ok and ad is self.draft:
            return self._block() + self.gamma_policy.probe_every
        return self._block()

    def _run(self, ctx: CallContext) -> None:
        """The speculative round loop of every engine; what differs per engine is the :class:`RoundPlan`
        (uniforms, non-finite checks, fused or reference verification, counters, cache summaries)."""
        g = self.gamma
        dev = ctx.device
        prof = ctx.profiler
        plan = round_plan(self.engine_spec.lean_round, ctx, g)
        policy = self.gamma_policy
        accepted_so_far = verified_so_far = 0  # the policy's running acceptance, read in the round's sync
        # ... and per draft position (accepted, verified given the drafts before it passed)
        accepted_at, verified_at = [0] * self.gamma, [0] * self.gamma
        # g = 0 rounds (a plain target step) only where pi = p; the draft then lags behind the target, so
        # the two caches no longer share one summary
        zero_ok = self._zero_ok
        low = 0 if zero_ok else 1
        # a static draft session keeps room for at most probe_every skipped tokens (``_reserve``)
        max_lag = policy.probe_every if zero_ok and self.engine_spec.static_shapes else None
        since_draft = 0
        shared = plan.shared_summary and not zero_ok
        draft, pend, pos = self._start(self.draft, ctx, ctx.input_ids, ctx.mask)
        target, _, _ = self._start(self.target, ctx, ctx.input_ids, ctx.mask)
        row_ids = torch.arange(ctx.batch, device=dev)
        gen = torch.zeros(ctx.batch, dtype=torch.long, device=dev)
        keys = plan.uniforms.keys(ctx.seeds)
        ar_max = torch.arange(self.gamma + 1, device=dev)
        # the live rows are always 0..B-1 of the round's tensors: a slice of this is their arange
        ar_rows = torch.arange(ctx.batch, device=dev)
        lag = pend.new_zeros((ctx.batch, 0))  # [B, L] emitted tokens the draft has not read (after g = 0)
        counters = plan.counters
        fused = self._fused_kind if (plan.fused and ctx.on_round is None) else None
        hidden = self.wants_hidden
        # rounds per block size: the policy's, or with the draft stop the width each round drafted
        per_width = policy is not None or ctx.draft_stop is not None
        while True:
            if prof is not None:
                prof.round_begin()
            if policy is not None:  # this round's block size, from what earlier rounds did
                g = policy.choose(self.gamma, self.c, accepted_so_far, verified_so_far, zero_ok, since_draft,
                                  by_position=(accepted_at, verified_at), rows=ctx.batch, new_tokens=ctx.max_new)
                if isinstance(g, bool) or not isinstance(g, Integral) or not low <= g <= self.gamma:
                    raise ValueError(f"{type(policy).__name__}.choose returned {g!r}; a block size must be an "
                                     f"integer in {low}..{self.gamma}")
                g = int(g)
                if g == 0 and max_lag is not None and since_draft >= max_lag:
                    raise ValueError(f"{type(policy).__name__}.choose returned 0 after {since_draft} rounds without "
                                     f"drafts; on engine {self.engine!r} at most probe_every = {max_lag} in a row")
                since_draft = since_draft + 1 if g == 0 else 0
            if g == 0:  # a plain target step: pi = p at the pending position, drawn as a bonus would be
                finished, bad, tok, gen = self._target_step(target, ctx, plan, keys, row_ids, gen, pend, pos)
                counters.add(row_ids, None, None, 0)
                ctx.rounds += 1
                lag = torch.cat([lag, pend.unsqueeze(1)], dim=1)
                pend, pos = tok, pos + 1
                verified: tuple[Tensor, ...] = ()  # nothing drafted: the acceptance estimate stays
                width = 0
            else:
                finished, bad, verified, pend, pos, gen, width = self._spec_round(
                    ctx, plan, draft, target, row_ids, keys, gen, pend, pos, lag, g, ar_max[: g + 1], counters,
                    fused, hidden, track=policy is not None, rows=ar_rows,
                )
                lag = lag[:, :0]
            if per_width:
                ctx.gamma_rounds[width] = ctx.gamma_rounds.get(width, 0) + 1
            # the round's single host sync
            step = end_round(
                finished, bad, (draft, target), (row_ids, keys, gen, pend, pos, lag, *counters.live),
                extra=verified, shared=shared and g != 0, on_leave=partial(_leave, ctx, counters, row_ids, gen),
            )
            if prof is not None:
                prof.round_end()
            if step is None:
                break
            row_ids, keys, gen, pend, pos, lag, *live = step[0]
            counters.live = tuple(live)
            if verified:  # [verified at each draft position, accepted at each]
                counts = step[1]
                for j in range(self.gamma):
                    verified_at[j] += counts[j]
                    accepted_at[j] += counts[self.gamma + j]
                accepted_so_far, verified_so_far = sum(accepted_at), sum(verified_at)

    def _spec_round(
        self,
        ctx: CallContext,
        plan: Any,
        draft: Any,
        target: Any,
        row_ids: Tensor,  # [B]
        keys: Tensor,  # [B, ...] per-row uniform keys
        gen: Tensor,  # [B] tokens emitted so far
        pend: Tensor,  # [B] the pending token
        pos: Tensor,  # [B] its position
        lag: Tensor,  # [B, L] tokens the draft has not read yet
        g: int,
        ar_g1: Tensor,  # [g + 1] 0..g
        counters: Any,
        fused: Any,
        hidden: bool,
        track: bool,
        rows: Tensor | None = None,  # [>= B] 0, 1, 2, ...
    ) -> tuple[Tensor, Tensor, tuple[Tensor, ...], Tensor, Tensor, Tensor, int]:
        """One speculative round of at most ``g`` drafts. Returns ``(finished, bad, verified, pend, pos, gen,
        width)``: the finished rows, the non-finite flag, for a block-size policy (``track``; else empty) the
        ``[2 gamma]`` drafts verified and accepted at each draft position, the next round's pending token, its
        position, the rows' new lengths, and the drafts of the round's widest row (``g`` unless the draft stop
        ended every row's drafting earlier)."""
        # 1. draft g + 1 steps (after reading the tokens skipped by g = 0 rounds, if any)
        u_draft, u_acc, u_smp = plan.uniforms.round(keys, gen, g)
        block, q, q_rule, d_hidden, bad, limit = self._draft_block(
            draft, ctx, pend, pos, u_draft, check=plan.check_each_forward, g=g, lag=lag, with_pending=True,
            ar_g1=ar_g1, stop=ctx.draft_stop,
        )
        planned = g
        if block.shape[1] <= g:  # the draft stop ended every row's drafting early: a round of the drafted width
            g = block.shape[1] - 1
            u_acc, u_smp, ar_g1 = u_acc[:, :g], u_smp[:, : g + 1], ar_g1[: g + 1]
        drafts = block[:, 1:]
        # 2. one target call on the pending token and the drafts
        fo_t = target.forward(block, pos.unsqueeze(1) + ar_g1, hidden=hidden)
        ctx.target_forwards += 1
        p_rule, p = ctx.probs(fo_t.logits)
        if plan.check_each_forward:
            bad = bad | plan.logits_nonfinite(fo_t.logits)
        else:
            bad = plan.round_nonfinite(q_rule, p_rule)
        # 3. rule + verification with keyed uniforms
        features = None
        if hidden:
            features = {"draft_hidden": d_hidden, "target_hidden": fo_t.hidden}
        res: Any = None
        if fused is not None:
            res = fused_verify(drafts, q, p, self.rule, q_rule, p_rule, self.bonus, u_acc, u_smp, features, fused,
                               rows=rows, cols=ar_g1, limit=limit)
        if res is None:
            res = verify_block(
                drafts, q, p, self.rule, q_rule=q_rule, p_rule=p_rule, bonus=self.bonus,
                uniforms=BlockUniforms(accept=u_acc, sample=u_smp), features=features, validate=False, limit=limit,
            )
        acc = res.accepted
        # 4. roll back both caches: keep the pending token and the accepted drafts
        if isinstance(res, FusedResult):
            keep, pend_next, defer_drafted = res.kept, res.final, res.defer_given
        else:
            keep = ar_g1.unsqueeze(0) <= acc.unsqueeze(1)
            pend_next = res.tokens.gather(1, acc.unsqueeze(1)).squeeze(1)  # the residual / bonus draw
            defer_drafted = res.defer_drafted
        draft.keep_last(g + 1, keep)
        target.keep_last(g + 1, keep)
        finished, gen_next = ctx.emit_lean(row_ids, gen, res.tokens, res.num_emitted)
        hits = counters.add(row_ids, acc, defer_drafted, g, limit, planned, track=track)
        if ctx.on_round is not None:
            ctx.on_round(self._record(ctx, row_ids, gen, drafts, res, gen_next - gen, q, p, q_rule, p_rule, limit))
        ctx.rounds += 1
        verified: tuple[Tensor, ...] = ()
        if track:  # the policy's per-position counts: the counters' own verified / accepted columns, summed
            verified = (hits.sum(dim=0),)
        # next round: the residual / bonus draw is pending, after the accepted drafts
        return finished, bad, verified, pend_next, pos + res.num_emitted, gen_next, g

    def _target_step(
        self,
        target: Any,
        ctx: CallContext,
        plan: Any,
        keys: Tensor,  # [B, ...] per-row uniform keys
        row_ids: Tensor,  # [B]
        gen: Tensor,  # [B] tokens emitted so far
        pend: Tensor,  # [B] the pending token
        pos: Tensor,  # [B] its position
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A round without drafts (pi = p): the target reads the pending token and the next token is drawn
        from p with the sample stream's uniform at its position, as a bonus draw would be. Returns
        ``(finished, bad, token, gen)``, each ``[B]`` (``bad`` 0-dim; ``gen`` the rows' new lengths)."""
        u_smp = plan.uniforms.round(keys, gen, 0)[2]  # [B, 1]
        fo = target.forward(pend.unsqueeze(1), pos.unsqueeze(1), hidden=False)
        ctx.target_forwards += 1
        p_rule, p = ctx.probs(fo.logits[:, -1])
        bad = plan.logits_nonfinite(fo.logits) if plan.check_each_forward else plan.round_nonfinite(p_rule, p_rule)
        tok = sample_categorical(p, u_smp[:, 0])
        finished, gen = ctx.emit_lean(row_ids, gen, tok.unsqueeze(1), torch.ones_like(gen))
        return finished, bad, tok, gen

    def _draft_block(
        self,
        draft: Any,
        ctx: CallContext,
        pend: Tensor,  # [B] the pending token (last emitted, not yet in the draft's cache)
        pos: Tensor,  # [B] its position
        u_draft: Tensor,  # [B, >= g] uniforms of the draft samples
        check: bool,
        g: int | None = None,
        lag: Tensor | None = None,  # [B, L] tokens before ``pend`` the draft has not read (L may be 0)
        with_pending: bool = False,
        ar_g1: Tensor | None = None,  # [g + 1] 0..g, if the caller has it
        stop: float | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """Draft ``g`` (default gamma) tokens with ``g + 1`` forwards (the last one gives q at the bonus
        position); the first forward also reads ``lag``, the tokens emitted by plain target steps.

        Returns ``drafts`` ``[B, gamma]`` (``with_pending``: the block ``[B, gamma + 1]`` of ``pend`` and the
        drafts), tempered ``q`` and untempered ``q_rule`` ``[B, gamma + 1, V]`` (the same tensor when sampling
        does not change the distribution), the draft's last hidden states ``[B, gamma + 1, H]`` when the rule
        reads them, with ``check`` a 0-dim bool "some logits were non-finite" (the reference loop checks every
        forward; the fast loop checks once per round), and the rows' ``limit`` (below; None without ``stop``).

        ``stop`` (the draft stop, :class:`~specref.decode.rounds.DraftStop`): a row stops drafting after a token
        whose probability under the ``q`` it was sampled from is below ``stop``; ``limit`` ``[B]`` counts each
        row's drafts up to and including that token (``g`` if none). Every other row keeps drafting; once none
        does, the draft makes one more step (``q`` at the rows' bonus positions, and the last draft's KV entry)
        and the block ends: ``gamma`` in the shapes above is then the widest row's drafts. Knowing that every
        row has stopped takes one host read per draft step (the last one excepted).
        """
        g = self.gamma if g is None else g
        tok = pend.unsqueeze(1)
        first_pos = pos.unsqueeze(1)
        if lag is not None and lag.shape[1]:
            tok = torch.cat([lag, tok], dim=1)
            first_pos = pos.unsqueeze(1) + torch.arange(-lag.shape[1], 1, device=pos.device)
            if self.engine_spec.static_shapes:
                tok, first_pos = self._catch_up(draft, tok, first_pos)
        # the later steps' positions pos + i, in one op: row i of [g + 1, B] (contiguous, as a step's own would be)
        ar = torch.arange(g + 1, device=pos.device) if ar_g1 is None else ar_g1
        step_pos = ar.unsqueeze(1) + pos if g else None
        q_list, qr_list, d_list, dh_list = [], [], [], []
        bad = None
        stopper = None if stop is None else DraftStop(stop, pend.shape[0], pend.device)
        i = 0
        while True:  # steps 0..g (the draft stop may lower g)
            fo = draft.forward(tok, first_pos if i == 0 else step_pos[i].unsqueeze(1), hidden=self.wants_hidden)
            lg = fo.logits[:, -1]
            if check:
                bad = any_nonfinite(lg) if bad is None else bad | any_nonfinite(lg)
            qr, q = ctx.probs(lg)
            q_list.append(q)
            qr_list.append(qr)
            if fo.hidden is not None:
                dh_list.append(fo.hidden[:, -1])
            if i == g:
                break
            d = sample_categorical(q, u_draft[:, i])
            d_list.append(d)
            tok = d.unsqueeze(1)
            if stopper is not None:
                going = stopper.step(q, d)
                # the option's price: a host read per draft step (at the last one the block ends anyway)
                if i + 1 < g and not bool(going.any()):
                    g = i + 1  # every row has stopped: one more step gives q at their bonus positions
            i += 1
        ctx.draft_forwards += g + 1
        q_rule = torch.stack(qr_list, dim=1)
        q = q_rule if q_list[0] is qr_list[0] else torch.stack(q_list, dim=1)
        d_hidden = torch.stack(dh_list, dim=1) if dh_list else None
        block = torch.stack([pend, *d_list] if with_pending else d_list, dim=1)
        return block, q, q_rule, d_hidden, bad, None if stopper is None else stopper.limit

    def _catch_up(self, draft: Any, tok: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Static engines: feed all but the last ``gamma + 1``-wide chunk of ``tok`` / ``positions``
        ``[B, n]`` (the skipped tokens and the pending one) to the draft, and return that last chunk.

        Every forward of a static session is one captured graph or compiled shape per width, so the catch-up
        runs in chunks of at most ``gamma + 1`` tokens: with the one-token steps, the draft's widths stay
        within the ``gamma + 1`` the target's blocks may take (a single forward of ``n`` tokens would add up
        to ``probe_every`` widths, each a graph capture or a recompilation). Only the last chunk's logits are
        read, so the chunks' logits are the same up to rounding as one forward's. The statistics count the
        catch-up as one draft call, as on the dynamic engines (the cost model's call, not the engine's)."""
        width, n = self.gamma + 1, tok.shape[1]
        last = n - width * ((n - 1) // width)  # 1..width tokens left for the step that reads q
        for s in range(0, n - last, width):
            draft.forward(tok[:, s : s + width], positions[:, s : s + width])
        return tok[:, n - last :], positions[:, n - last :]

    def _record(
        self,
        ctx: CallContext,
        row_ids: Tensor,
        gen: Tensor,
        drafts: Tensor,
        res: Any,
        n_out: Tensor,
        q: Tensor,
        p: Tensor,
        q_rule: Tensor,
        p_rule: Tensor,
        limit: Tensor | None = None,  # [B] drafts each row offered (the draft stop; None: every draft)
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
            offered=limit,
        )


def _leave(ctx: CallContext, counters: Any, row_ids: Tensor, gen: Tensor) -> None:
    """Before the live rows change (and at the end): write their counters and lengths back."""
    counters.flush(row_ids)
    ctx.lengths[row_ids] = gen


# ---- factory ----------------------------------------------------------------------------------------------


def make_decoder(
    draft: Any,
    target: Any,
    method: str | rules_mod.Rule = "specdecode",
    alpha: float | None = None,
    gamma: int = DEFAULT_GAMMA,
    **options: Any,
) -> BaseDecoder:
    """Build the decoder for ``method`` (one of :data:`METHODS`, a rule added with
    :func:`specref.rules.register`, or a Rule object).

    ``alpha`` is required by every method whose rule reads one (see :data:`specref.rules.ALPHA_MEANING`;
    ``ensemble`` may take ``weight``, ``seq_cascade`` ``threshold`` and ``bild`` ``fallback`` instead) and
    refused by ``target``, ``draft`` and ``specdecode``.

    Options by method (all also take ``tokenizer``, ``draft_tokenizer``, ``vocab_size``, ``c``, ``engine``):

    * rule methods (``specdecode`` ... ``learned``): ``bonus`` ("pi" | "target"); ``gamma_policy``
      (None | "adaptive" | a :class:`~specref.decode.gamma_policy.AdaptiveGamma`: each round's block size
      in ``1..gamma``, or ``0..gamma`` for specdecode, from the running acceptance and the step costs, on every
      engine (the static ones capture or compile one shape per block size used); the law is unchanged);
      ``draft_confidence_threshold`` (None | a number in (0, 1): a row stops drafting within a round after a
      token its draft gave a probability below it, as transformers' ``assistant_confidence_threshold``; with
      ``gamma`` or the policy's ``g`` as the round's maximum; the law is unchanged; one host read per draft
      step); rule options such as ``beta`` (lossy), ``weight`` (ensemble), ``head`` (learned).
    * ``target`` / ``draft``: autoregressive decoding with one model.
    * ``token_cascade``: Chow's rule per token, the target called only on deferral (defer iff
      ``max q < 1 - alpha``).
    * ``seq_cascade``: ``aggregate`` ("mean" | "sum" | "quantile"), ``quantile`` (in [0, 1]),
      ``threshold`` (log-prob units; ``log(1 - alpha)`` when alpha is given).
    * ``bild``: ``fallback`` (max-prob threshold; ``1 - alpha`` when alpha is given), ``rollback`` (nats,
      default 2.0).
    """
    common = {
        k: options.pop(k)
        for k in ("tokenizer", "draft_tokenizer", "vocab_size", "c", "allow_untested", "engine")
        if k in options
    }
    if isinstance(method, rules_mod.Rule):
        return SpecCascadeDecoder(draft, target, method, gamma, **options, **common)
    known = all_methods()
    if not isinstance(method, str) or method not in known:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(known)}")
    if method in RULE_METHODS or method not in METHODS:  # built-in or registered rule
        bonus = options.pop("bonus", "pi")
        policy = options.pop("gamma_policy", None)
        stop = options.pop("draft_confidence_threshold", None)
        return SpecCascadeDecoder(
            draft, target, method, gamma, bonus=bonus, alpha=alpha, rule_options=options, gamma_policy=policy,
            draft_confidence_threshold=stop, **common,
        )
    for name in ("gamma_policy", "draft_confidence_threshold"):
        if options.get(name) is not None:
            raise ValueError(f"{name} applies to the speculative methods, not to {method!r}")
        options.pop(name, None)
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
