"""Decoding statistics: per-row and per-batch counters, timers, and the per-round logging record.

Counters are accumulated on the device during decoding (no host sync) and copied to the CPU once, when
``generate`` returns.

Cost model (THEORY.md section 8). With ``c`` the cost of one draft forward relative to one target forward,
the modeled latency relative to target-only decoding is

    per row:    (target_calls_b + c * draft_calls_b) / tokens_b
    per batch:  (target_forwards + c * draft_forwards) / max_b tokens_b

Target-only decoding spends one target forward per token, and a batch of rows needs as many forwards as its
longest row, so 1.0 means "as slow as the target alone" and smaller is faster. Prefill forwards (the prompt)
are counted separately (``prefill_forwards``) and left out of the model, as in the paper's per-token
latency. A speculative round costs ``gamma + 1`` draft forwards (the last one gives the draft distribution
at the bonus position and the KV entry of the last draft) and one target forward.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from specref.cost import modeled_relative_latency

__all__ = ["Counters", "DecodeStats", "RoundRecord", "Timer"]


@dataclass
class RoundRecord:
    """What the ``on_round`` hook receives after every round; tensors stay on the device.

    For speculative methods, positions ``0..gamma`` of a round are the ``gamma + 1`` scored positions.
    Fields that do not apply to a method are None.

    Attributes:
        method: decoding method name.
        round: 0-based round index within this ``generate`` call.
        row_ids: ``[B]`` original batch index of each row in this round.
        start: ``[B]`` number of tokens each row had generated before the round (absolute index t).
        drafts: ``[B, gamma]`` drafted tokens.
        accepted: ``[B]`` drafts accepted (before EOS / length truncation).
        emitted: ``[B]`` tokens actually emitted by the round (after truncation).
        tokens: ``[B, gamma + 1]`` emitted tokens, ``-1`` after the last.
        q_max, p_max: ``[B, P]`` max probability of the tempered (sampled) draft / target distributions.
        q_rule_max, p_rule_max: ``[B, P]`` the same for the untempered distributions the rules read.
        q_entropy, p_entropy: ``[B, P]`` entropies (nats) of the untempered distributions.
        tv: ``[B, P]`` total variation between the tempered draft and target distributions.
        defer: ``[B, P]`` deferral at each position (whole-position rules: r; token rules: the mass
            ``sum_v q(v) r(v)`` of deferred candidates).
        defer_drafted: ``[B, gamma]`` deferral value that applied to each drafted token.
        accept_prob: ``[B, gamma]`` acceptance probability of each drafted token.
        rejection_prob: ``[B, P]`` probability that a fresh draft is rejected at each position.
        deferred: ``[B]`` bool, for sequential baselines: the rows that called the target this round.
        offered: ``[B]`` with the draft stop (``draft_confidence_threshold``): the drafts each row offered for
            verification; ``drafts`` after them were drawn for the batch's shared forwards and never read.
        extra: method-specific tensors.
    """

    method: str
    round: int
    row_ids: Tensor
    start: Tensor
    drafts: Tensor | None = None
    accepted: Tensor | None = None
    emitted: Tensor | None = None
    tokens: Tensor | None = None
    q_max: Tensor | None = None
    p_max: Tensor | None = None
    q_rule_max: Tensor | None = None
    p_rule_max: Tensor | None = None
    q_entropy: Tensor | None = None
    p_entropy: Tensor | None = None
    tv: Tensor | None = None
    defer: Tensor | None = None
    defer_drafted: Tensor | None = None
    accept_prob: Tensor | None = None
    rejection_prob: Tensor | None = None
    deferred: Tensor | None = None
    offered: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def entropy(p: Tensor) -> Tensor:
    """Entropy in nats over the last dimension."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)


class Timer:
    """Wall time of a region: CUDA events on a GPU (no sync until read), ``perf_counter`` otherwise."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self._t0 = self._t1 = 0.0
        self._e0 = self._e1 = None

    def start(self) -> None:
        if self.cuda:
            self._e0 = torch.cuda.Event(enable_timing=True)
            self._e1 = torch.cuda.Event(enable_timing=True)
            self._e0.record()
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self._e1.record()
        self._t1 = time.perf_counter()

    def seconds(self) -> float:
        if self.cuda:
            self._e1.synchronize()
            return self._e0.elapsed_time(self._e1) / 1000.0
        return self._t1 - self._t0


class Counters:
    """Device-side per-row counters for the whole original batch.

    Public because the decoders' per-call context (:mod:`specref.decode.base`) owns one and the rounds add
    into it; :meth:`DecodeStats.from_counters` reads it back at the end of the call."""

    #: columns of :attr:`table`: draft calls, target calls, rounds; then the speculative counts (drafted,
    #: defer_positions, accepted, rejections, pos_reached[g], pos_accepted[g]), adjacent so that a loop can
    #: write a row's counts in one op; then tokens and rollbacks
    CALLS = slice(0, 3)
    SPECULATIVE_START = 3

    def __init__(self, batch: int, gamma: int, device: torch.device) -> None:
        g = max(gamma, 1)
        #: every long counter, one column (or ``g`` columns) each; the fields below are views of it
        self.table = torch.zeros((batch, 9 + 2 * g), dtype=torch.long, device=device)
        t = self.table
        self.draft_calls, self.target_calls, self.rounds = t[:, 0], t[:, 1], t[:, 2]
        self.drafted = t[:, 3]  # drafted tokens that were verified (reached)
        self.defer_positions = t[:, 4]  # denominator of the deferral rate
        self.accepted, self.rejections = t[:, 5], t[:, 6]
        self.pos_reached, self.pos_accepted = t[:, 7 : 7 + g], t[:, 7 + g : 7 + 2 * g]
        self.tokens, self.rollbacks = t[:, 7 + 2 * g], t[:, 8 + 2 * g]
        self.deferred = torch.zeros(batch, dtype=torch.float64, device=device)


@dataclass
class DecodeStats:
    """Statistics of one ``generate`` call (CPU tensors, per row ``[B]`` unless stated).

    Attributes:
        method: decoding method.
        gamma: block size (0 for non-speculative methods).
        c: draft/target cost ratio used for :attr:`modeled_latency` (changeable via :meth:`modeled`).
        tokens: tokens emitted per row.
        draft_calls / target_calls: draft / target forwards each row took part in (decode phase; a
            sequential cascade counts a target call only for the rows that deferred).
        rounds: rounds each row took part in.
        drafted / accepted: verified drafted tokens and the accepted ones (speculative methods).
        rejections: rounds that ended with a rejected draft.
        deferred / defer_positions: summed deferral values and the positions they were summed over.
        pos_reached / pos_accepted: ``[B, gamma]`` how often draft position i was verified / accepted.
        rollbacks: BiLD rollbacks per row.
        draft_forwards / target_forwards / prefill_forwards: forward calls of the whole batch.
        num_rounds: rounds of the whole batch.
        gamma_rounds: with a block-size policy, rounds of the whole batch per block size ``{g: rounds}``;
            with the draft stop (``draft_confidence_threshold``), per drafted width (the round's widest row's
            drafts) instead (empty without either: every round drafted ``gamma``).
        wall_time_s: wall time of the call (CUDA events on GPU).
        extra: method-specific per-row tensors (e.g. SeqCascade's ``seq_deferred`` and ``confidence``; with the
            draft stop, ``drafts_offered`` (drafts offered for verification, each round's up to the row's stop)
            and ``confidence_stops`` (rounds whose drafting the stop ended before the round's gamma)).
        c_source: where ``c`` came from: ``"given"`` (passed to the decoder) or ``"params"`` (the ratio of
            per-step parameters, the default).
        params: the method's parameters: ``alpha`` (None for methods without one) and, where they apply,
            ``weight`` (ensemble), ``beta`` (lossy), ``threshold`` / ``aggregate`` (seq_cascade),
            ``fallback`` / ``rollback`` (bild).
        settings: the call's ``temperature``, ``top_k``, ``top_p``, ``max_new_tokens`` and ``eos_token_ids``.
    """

    method: str
    gamma: int
    c: float
    tokens: Tensor
    draft_calls: Tensor
    target_calls: Tensor
    rounds: Tensor
    drafted: Tensor
    accepted: Tensor
    rejections: Tensor
    deferred: Tensor
    defer_positions: Tensor
    pos_reached: Tensor
    pos_accepted: Tensor
    rollbacks: Tensor
    draft_forwards: int
    target_forwards: int
    prefill_forwards: int
    num_rounds: int
    wall_time_s: float
    extra: dict[str, Tensor] = field(default_factory=dict)
    gamma_rounds: dict[int, int] = field(default_factory=dict)
    c_source: str = "given"
    params: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_counters(cls, method: str, gamma: int, c: float, cnt: Counters, **batch: Any) -> DecodeStats:
        cpu = lambda t: t.detach().to("cpu")  # noqa: E731
        return cls(
            method=method,
            gamma=gamma,
            c=c,
            tokens=cpu(cnt.tokens),
            draft_calls=cpu(cnt.draft_calls),
            target_calls=cpu(cnt.target_calls),
            rounds=cpu(cnt.rounds),
            drafted=cpu(cnt.drafted),
            accepted=cpu(cnt.accepted),
            rejections=cpu(cnt.rejections),
            deferred=cpu(cnt.deferred),
            defer_positions=cpu(cnt.defer_positions),
            pos_reached=cpu(cnt.pos_reached[:, :gamma] if gamma else cnt.pos_reached[:, :0]),
            pos_accepted=cpu(cnt.pos_accepted[:, :gamma] if gamma else cnt.pos_accepted[:, :0]),
            rollbacks=cpu(cnt.rollbacks),
            **batch,
        )

    # ---- derived, per batch ---------------------------------------------------------------------------
    @property
    def total_tokens(self) -> int:
        return int(self.tokens.sum())

    @property
    def tokens_per_target_call(self) -> float:
        """Tokens emitted per target call, summed over rows (the per-row calls)."""
        calls = int(self.target_calls.sum())
        return self.total_tokens / calls if calls else float("inf")

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / verified drafts."""
        n = int(self.drafted.sum())
        return int(self.accepted.sum()) / n if n else float("nan")

    @property
    def per_position_acceptance(self) -> Tensor:
        """``[gamma]``: P(draft i accepted | drafts 0..i-1 accepted), pooled over rows."""
        reached = self.pos_reached.sum(0).double()
        return self.pos_accepted.sum(0).double() / reached.clamp_min(1) * torch.where(reached > 0, 1.0, float("nan"))

    @property
    def deferral_rate(self) -> float:
        """Mean deferral over verified positions (speculative) or over emitted tokens (sequential)."""
        n = int(self.defer_positions.sum())
        return float(self.deferred.sum()) / n if n else float("nan")

    @property
    def rejection_rate(self) -> float:
        """Rejected drafts / verified drafts (at most one rejection per round)."""
        n = int(self.drafted.sum())
        return int(self.rejections.sum()) / n if n else float("nan")

    @property
    def modeled_latency(self) -> float:
        """Batch modeled latency relative to target-only decoding (see the module docstring)."""
        return self.modeled(self.c)

    def modeled(self, c: float) -> float:
        longest = int(self.tokens.max()) if self.tokens.numel() else 0
        if longest == 0:
            return float("nan")
        return modeled_relative_latency(self.target_forwards, self.draft_forwards, longest, c)

    def row_modeled_latency(self, c: float | None = None) -> Tensor:
        """``[B]`` per-row modeled latency relative to target-only decoding."""
        c = self.c if c is None else c
        return (self.target_calls + c * self.draft_calls).double() / self.tokens.clamp_min(1).double()

    @property
    def tokens_per_second(self) -> float:
        return self.total_tokens / self.wall_time_s if self.wall_time_s > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """Headline numbers, then the parameters and settings they came from, as plain Python values (for
        printing and JSON; docs/decoding.md lists every key)."""
        out = {
            "method": self.method,
            "rows": int(self.tokens.numel()),
            "tokens": self.total_tokens,
            "wall_time_s": self.wall_time_s,
            "tokens_per_s": self.tokens_per_second,
            "draft_forwards": self.draft_forwards,
            "target_forwards": self.target_forwards,
            "prefill_forwards": self.prefill_forwards,
            "rounds": self.num_rounds,
            "tokens_per_target_call": self.tokens_per_target_call,
            "acceptance_rate": self.acceptance_rate,
            "deferral_rate": self.deferral_rate,
            "rejection_rate": self.rejection_rate,
            "c": self.c,
            "c_source": self.c_source,
            "modeled_relative_latency": self.modeled_latency,
        }
        if self.gamma:
            out["per_position_acceptance"] = [round(float(x), 4) for x in self.per_position_acceptance]
        if self.gamma_rounds:
            out["gamma_rounds"] = {int(g): int(n) for g, n in self.gamma_rounds.items()}
            total = sum(self.gamma_rounds.values())
            out["mean_gamma"] = sum(g * n for g, n in self.gamma_rounds.items()) / total
        if "confidence_stops" in self.extra:  # the draft stop, per row and round
            row_rounds = int(self.rounds.sum())
            stops = int(self.extra["confidence_stops"].sum())
            out["confidence_stops"] = stops
            out["stop_share"] = stops / row_rounds if row_rounds else float("nan")
            out["mean_drafts"] = int(self.extra["drafts_offered"].sum()) / row_rounds if row_rounds else float("nan")
        out.update({"alpha": None, **self.params})
        out.update(self.settings)
        return out

    def row(self, i: int) -> dict[str, float]:
        """Statistics of row ``i`` as plain numbers."""
        drafted = int(self.drafted[i])
        calls = int(self.target_calls[i])
        dp = int(self.defer_positions[i])
        return {
            "tokens": int(self.tokens[i]),
            "draft_calls": int(self.draft_calls[i]),
            "target_calls": calls,
            "rounds": int(self.rounds[i]),
            "tokens_per_target_call": int(self.tokens[i]) / calls if calls else float("inf"),
            "acceptance_rate": int(self.accepted[i]) / drafted if drafted else float("nan"),
            "rejection_rate": int(self.rejections[i]) / drafted if drafted else float("nan"),
            "deferral_rate": float(self.deferred[i]) / dp if dp else float("nan"),
            "modeled_relative_latency": float(self.row_modeled_latency()[i]),
        }
