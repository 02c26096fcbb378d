"""Deferral rules: each turns the draft/target pair at a position into a defer decision and a target pi.

Every rule reads the UNtempered pair ``(q_rule, p_rule)`` for its decision and mixes the tempered pair
``(q, p)`` that is actually sampled (THEORY.md section 5). All tensors are ``[..., V]``; decisions are
``[...]`` for whole-position rules and ``[..., V]`` for token-specific ones. ``defer = 1`` means "use the
target". Strict ``<`` defers; equality keeps the draft.

Alpha (THEORY.md sections 3-4): every rule whose decision reads a lenience takes ``alpha`` and has no default
(:data:`ALPHA_MEANING` says what it means for each); ``target``, ``draft`` and ``specdecode`` refuse one. An
alpha outside a rule's useful range, where the rule always or never defers, is allowed (sweeps use the
limits) but warns (:func:`alpha_regime`).

Use :func:`get` to build a rule by name::

    rule = specref.rules.get("token_v3", alpha=0.3)
    out = rule(q, p, q_rule=q_raw, p_rule=p_raw)   # out.pi, out.defer, out.accept, out.residual
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from specref import genspec
from specref.dists import check_distribution, check_same_vocab, normalize, tv

__all__ = [
    "ALPHA_MEANING",
    "NAMES",
    "DeferralHead",
    "PositionStats",
    "Rule",
    "RuleOutput",
    "SweepGrid",
    "alpha_regime",
    "check_real",
    "confidence_below",
    "cost_penalty",
    "get",
    "get_swept",
    "mixture_weight",
    "register",
    "sweep_grid",
    "unregister",
]


@dataclass(frozen=True)
class RuleOutput:
    """What a rule decides at each position.

    Attributes:
        pi: ``[..., V]`` the distribution the verifier samples from (the emitted token is exactly ``pi``).
        defer: ``[...]`` (whole-position rules) or ``[..., V]`` (token rules) in [0, 1]; 1 = use the target.
        accept: ``[..., V]`` probability of accepting a drafted candidate ``v``.
        residual: ``[..., V]`` distribution drawn from after a rejection.
    """

    pi: Tensor
    defer: Tensor
    accept: Tensor
    residual: Tensor

    def rejection_rate(self, q: Tensor) -> Tensor:
        """Probability ``[...]`` that a draft ``v ~ q`` is rejected at each position."""
        return genspec.rejection_rate(q, self.accept)

# ---- what alpha means, per rule and per sequential baseline -------------------------------------------

#: What ``alpha`` means for every method that takes one, with its useful range (the message of a missing
#: alpha). The sequential baselines of :mod:`specref.decode.baselines` are listed too, so the whole
#: convention lives here.
ALPHA_MEANING: dict[str, str] = {
    "lossy": "accept a draft v with min(1, p(v) / ((1 - alpha) q(v))); alpha in [0, 1)",
    "ensemble": "pi = (1 - alpha) p + alpha q; it takes exactly one of weight (on the target) or alpha = 1 - "
    "weight, in [0, 1]",
    "chow": "defer iff max q < 1 - alpha; useful range [0, 1)",
    "diff": "defer iff max q < max p - alpha; useful range (-1, 1)",
    "opt": "defer iff max q < max p - alpha * TV(p, q); useful range [-1, 1]",
    "token_v1": "defer v iff q(v) < max p - alpha; useful range (-1, 1)",
    "token_v2": "defer v iff p(v) < max p - alpha; useful range [0, 1)",
    "token_v3": "defer v iff p(v) < (1 - alpha) max p; useful range [0, 1)",
    "learned": "cascade head: defer iff loss_q > loss_p + alpha * TV(p, q); token head: defer v iff "
    "score(v) < max score - alpha; mixture head: pi = (1 - w) q + w p with w = sigmoid(a - softplus(b) alpha), "
    "alpha the price of a rejection (>= 0; larger alpha, smaller w)",
    "token_cascade": "defer iff max q < 1 - alpha; useful range [0, 1)",
    "seq_cascade": "defer a row iff its draft confidence < log(1 - alpha); alpha < 1 (or pass threshold)",
    "bild": "fall back to the target iff max q < 1 - alpha (or pass fallback); useful range [0, 1)",
}

# (always defers, never defers) as conditions on alpha, derived from the rule's formula and the facts
# 1/V <= max q, max p <= 1, 0 <= TV <= 1 and |max p - max q| <= TV (THEORY.md sections 2-4).
_ALPHA_LIMITS: dict[str, tuple[Callable[[float], bool], Callable[[float], bool]]] = {
    "ensemble": (lambda a: a == 0.0, lambda a: a == 1.0),
    "chow": (lambda a: a < 0.0, lambda a: a >= 1.0),
    "diff": (lambda a: a <= -1.0, lambda a: a >= 1.0),
    # OPT at alpha = +-1 sits on |max p - max q| <= TV itself: only rounding decides, so the limits are open
    "opt": (lambda a: a < -1.0, lambda a: a > 1.0),
    "token_v1": (lambda a: a <= -1.0, lambda a: a >= 1.0),
    "token_v2": (lambda a: a < 0.0, lambda a: a >= 1.0),
    "token_v3": (lambda a: a < 0.0, lambda a: a >= 1.0),
    "token_cascade": (lambda a: a < 0.0, lambda a: a >= 1.0),
    "seq_cascade": (lambda a: a < 0.0, lambda a: False),
    "bild": (lambda a: a < 0.0, lambda a: a >= 1.0),
}


def alpha_regime(name: str, alpha: float | None) -> str | None:
    """``"always"`` / ``"never"`` when ``alpha`` makes method ``name`` always / never defer, else None.

    The limits hold for every pair of distributions (OPT's: when it reads the pair it samples, i.e. T = 1
    without top-k / top-p). Learned rules have none: their range depends on the head's estimates.
    """
    limits = _ALPHA_LIMITS.get(name)
    if limits is None or alpha is None or math.isnan(alpha):
        return None
    if limits[0](alpha):
        return "always"
    if limits[1](alpha):
        return "never"
    return None


def warn_degenerate_alpha(name: str, alpha: float | None, stacklevel: int = 3) -> None:
    """``warnings.warn`` when ``alpha`` makes ``name`` always or never defer (allowed: sweeps use limits)."""
    regime = alpha_regime(name, alpha)
    if regime is None:
        return
    what = (
        "always defers (it decodes as SpecDecode / the target)"
        if regime == "always"
        else "never defers (it decodes as the draft alone)"
    )
    warnings.warn(f"{name} with alpha={alpha!r} {what}: {ALPHA_MEANING[name]}", stacklevel=stacklevel)


def missing_alpha_error(name: str) -> ValueError:
    """The error of a method that needs alpha and got none."""
    meaning = ALPHA_MEANING.get(name, "see the rule's documentation")
    return ValueError(f"{name} needs alpha ({meaning}); there is no default")



# ---- what whole-position rules read ------------------------------------------------------------------


class PositionStats:
    """The per-position quantities ``[...]`` a whole-position rule decides from, computed on first use.

    ``q_max`` / ``p_max``: maxima of the untempered pair (what the paper's rules compare); ``tv``:
    ``TV(p, q)`` of the tempered pair that is sampled (the rejection rate it prices, Lemma 3); ``estimates``:
    a learned head's ``[..., 2]`` (loss_q, loss_p). At decode time they come from the full distributions
    (:meth:`of_pair`); offline they come from a log's columns (:meth:`of_log`), so a rule written as
    :meth:`Rule.decide_position` is the same code in the decoder and in offline evaluation.
    """

    def __init__(
        self,
        shape: torch.Size,
        dtype: torch.dtype,
        device: torch.device,
        compute: dict[str, Callable[[], Tensor]],
        source: str,
        features: Any = None,
    ) -> None:
        self.shape, self.dtype, self.device, self.features = shape, dtype, device, features
        self._compute = compute
        self._source = source
        self._cache: dict[str, Tensor] = {}

    @classmethod
    def of_pair(
        cls,
        q_rule: Tensor,  # [..., V] untempered draft
        p_rule: Tensor,  # [..., V] untempered target
        q: Tensor,  # [..., V] tempered draft (sampled)
        p: Tensor,  # [..., V] tempered target (sampled)
        features: Any = None,
        estimates: Callable[[], Tensor] | None = None,  # () -> [..., 2]
    ) -> PositionStats:
        compute: dict[str, Callable[[], Tensor]] = {
            "q_max": lambda: _max(q_rule), "p_max": lambda: _max(p_rule), "tv": lambda: tv(p, q),
        }
        if estimates is not None:
            compute["estimates"] = estimates
        return cls(q.shape[:-1], q.dtype, q.device, compute, "the full distributions", features)

    @classmethod
    def of_log(
        cls,
        columns: Any,  # mapping with "q_max", "p_max", "tv" [N] (specref.logs column names)
        estimates: Tensor | None = None,  # [N, 2]
    ) -> PositionStats:
        """From logged position summaries (untempered; their TV is the sampled pair's at T = 1)."""
        compute = {name: (lambda v=columns[name]: v) for name in ("q_max", "p_max", "tv") if name in columns}
        if estimates is not None:
            compute["estimates"] = lambda: estimates
        ref = columns["q_max"]
        return cls(ref.shape, ref.dtype, ref.device, compute, "the logged position summaries")

    def _get(self, name: str) -> Tensor:
        if name not in self._cache:
            fn = self._compute.get(name)
            if fn is None:
                raise ValueError(f"{name!r} is not available from {self._source}")
            self._cache[name] = fn()
        return self._cache[name]

    @property
    def q_max(self) -> Tensor:
        """``max_v q_rule(v)`` ``[...]``."""
        return self._get("q_max")

    @property
    def p_max(self) -> Tensor:
        """``max_v p_rule(v)`` ``[...]``."""
        return self._get("p_max")

    @property
    def tv(self) -> Tensor:
        """``TV(p, q)`` ``[...]`` of the sampled pair."""
        return self._get("tv")

    @property
    def estimates(self) -> Tensor:
        """A learned cascade head's ``[..., 2]`` estimated losses of keeping the draft and of deferring."""
        return self._get("estimates")


def cost_penalty(alpha: float, d: Tensor) -> Tensor:
    """``alpha * TV`` ``[...]``, the price of a deferral in the OPT and learned rules (Eq. 10, Lemma 4).

    ``alpha = +-inf`` with ``TV = 0`` would give NaN; with TV = 0 deferring does not change pi, so 0.
    """
    return torch.where(d > 0, alpha * d, torch.zeros_like(d))


class Rule:
    """Base class. Subclasses implement :meth:`decide`; whole-position rules mix ``(1 - r) q + r p``."""

    name: str = "rule"
    token_level: bool = False
    #: False only for draft-only decoding, which never needs the target's distribution.
    needs_target: bool = True
    #: True when pi = p whatever q is: a round may then skip the draft (block size 0, a plain target step).
    pi_is_target: bool = False
    #: True: alpha is required (no default); False: alpha is refused; None (custom rules): optional.
    takes_alpha: bool | None = None

    def __init__(self, alpha: float | None = None) -> None:
        if alpha is None:
            if self.takes_alpha:
                raise missing_alpha_error(self.name)
            self.alpha: float | None = None
            return
        if self.takes_alpha is False:
            raise ValueError(f"rule {self.name!r} takes no alpha, got alpha={alpha!r}")
        self.alpha = _check_alpha(alpha, self.name)
        if self.takes_alpha:
            warn_degenerate_alpha(self.name, self.alpha, stacklevel=4)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha!r})"

    # -- to override -------------------------------------------------------------------------------
    def decide(self, q_rule: Tensor, p_rule: Tensor, q: Tensor, p: Tensor, features: Any = None) -> Tensor:
        """Defer decision: ``[...]`` for whole-position rules, ``[..., V]`` for token rules.

        Whole-position rules usually implement :meth:`decide_position` instead, which this calls: then the
        same code decides in the decoder and in offline evaluation on logs. Token rules implement this.
        """
        if self.token_level:
            raise NotImplementedError(f"token rule {self.name!r} must implement decide(q_rule, p_rule, q, p)")
        return self.decide_position(PositionStats.of_pair(q_rule, p_rule, q, p, features))

    def decide_position(self, stats: PositionStats) -> Tensor:
        """Whole-position decision ``[...]`` from the position's :class:`PositionStats`."""
        raise NotImplementedError(
            f"rule {self.name!r} implements neither decide_position(stats) nor decide(q_rule, p_rule, q, p)"
        )

    def decides_from_position_stats(self) -> bool:
        """True when the decision is :meth:`decide_position` alone, so logged summaries can evaluate it."""
        cls = type(self)
        return not self.token_level and cls.decide is Rule.decide and cls.decide_position is not Rule.decide_position

    def mix(self, defer: Tensor, q: Tensor, p: Tensor) -> Tensor:
        """Target distribution ``pi`` ``[..., V]`` from the decision and the tempered pair."""
        if self.token_level:
            return self.mix_at(defer, q, p, self.deferred_mass(defer, q))
        return self.mix_at(defer.unsqueeze(-1), q, p)

    def verification(self, q: Tensor, p: Tensor, pi: Tensor, defer: Tensor) -> tuple[Tensor, Tensor]:
        """(accept, residual) pair used to verify drafts; GenSpecSample against ``pi`` by default."""
        return genspec.acceptance(q, pi), genspec.residual(q, pi)

    # -- the pieces of mix and verification that a decoding round reads (the fused path) --------------
    #: whether :meth:`drafted_acceptance` reads :meth:`decide` (False: it uses its own formula, so a
    #: subclass that changes ``decide`` must also change it)
    fused_reads_decide = True

    @staticmethod
    def deferred_mass(defer: Tensor, q: Tensor) -> Tensor:
        """Token rules' ``eta = sum_v q(v) defer(v)`` ``[..., 1]`` from ``defer`` ``[..., V]`` (bool or float)."""
        if defer.dtype == torch.bool:
            # q * 1.0 == q and q * 0.0 == +0.0 exactly (q is finite and >= 0): the same summands as the float
            # decision's, without materialising it
            return torch.where(defer, q, 0.0).sum(dim=-1, keepdim=True)
        return (q * defer).sum(dim=-1, keepdim=True)

    def mix_at(self, defer: Tensor, q: Tensor, p: Tensor, eta: Tensor | None = None) -> Tensor:
        """``pi`` at chosen entries: ``q``, ``p`` and ``defer`` of the same shape (whole-position rules: the
        position's decision broadcast), ``eta`` the position's deferred mass (token rules)."""
        if self.token_level:
            return q * (1 - defer) + p * eta
        return (1 - defer) * q + defer * p

    def drafted_acceptance(
        self,
        drafts: Tensor,  # [B, G] drafted tokens
        q_rule: Tensor,  # [B, G + 1, V] untempered
        p_rule: Tensor,  # [B, G + 1, V] untempered
        q: Tensor,  # [B, G + 1, V] tempered
        p: Tensor,  # [B, G + 1, V] tempered
        features: Any = None,
    ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """Verification of the drafted tokens only: ``(defer_d [B, G], accept_d [B, G], decision)``; ``defer_d``
        None means 1 at every drafted token.

        ``accept_d`` is bitwise ``verification(...)[0]`` at the drafted tokens; ``decision`` is a tuple of
        ``[B, G + 1, ...]`` tensors that :meth:`row_distributions` reads at one position per row.
        """
        g = drafts.shape[1]
        d_idx, q_d, p_d = _at_drafts(drafts, q, p)
        defer = self.decide(q_rule, p_rule, q, p, features)  # [B, P] or [B, P, V]
        if self.token_level:
            if defer.dtype != torch.bool:
                defer = defer.to(q.dtype)
            eta = self.deferred_mass(defer, q)  # [B, P, 1]
            defer_d = defer[:, :g].gather(-1, d_idx).squeeze(-1).to(q.dtype)
            pi_d = self.mix_at(defer_d, q_d, p_d, eta[:, :g, 0])
            decision: tuple[Tensor, ...] = (defer, eta)
        else:
            defer = defer.to(q.dtype)
            defer_d = defer[:, :g]
            pi_d = self.mix_at(defer_d, q_d, p_d)
            decision = (defer,)
        return defer_d, genspec.acceptance(q_d, pi_d), decision

    def row_distributions(
        self,
        decision: tuple[Tensor, ...],  # drafted_acceptance's decision at one position per row: [B, ...] each
        q: Tensor,  # [B, V] tempered draft at that position
        p: Tensor,  # [B, V] tempered target
        bonus: str,  # "pi" | "target"
    ) -> tuple[Tensor, Tensor]:
        """``(residual [B, V], bonus [B, V])`` at one position per row, as :meth:`verification` and
        :meth:`mix` give them there."""
        if self.token_level:
            defer, eta = decision
            pi = self.mix_at(defer.to(q.dtype), q, p, eta)
        else:
            pi = self.mix_at(decision[0].unsqueeze(-1), q, p)
        return genspec.residual(q, pi), pi if bonus == "pi" else p

    # -- public --------------------------------------------------------------------------------------
    def __call__(
        self,
        q: Tensor,  # [..., V] draft distribution, tempered and filtered (what is sampled)
        p: Tensor,  # [..., V] target distribution, tempered and filtered
        q_rule: Tensor | None = None,  # [..., V] untempered draft distribution (defaults to q)
        p_rule: Tensor | None = None,  # [..., V] untempered target distribution (defaults to p)
        features: Any = None,
        validate: bool = True,
    ) -> RuleOutput:
        q_rule = q if q_rule is None else q_rule
        p_rule = p if p_rule is None else p_rule
        if validate:
            for name, x in (("q", q), ("p", p), ("q_rule", q_rule), ("p_rule", p_rule)):
                check_distribution(x, name)
            check_same_vocab(q, p)
            check_same_vocab(q_rule, q, ("q_rule", "q"))
            check_same_vocab(p_rule, p, ("p_rule", "p"))
        defer = self.decide(q_rule, p_rule, q, p, features).to(q.dtype)
        pi = self.mix(defer, q, p)
        accept, resid = self.verification(q, p, pi, defer)
        return RuleOutput(pi=pi, defer=defer, accept=accept, residual=resid)


def _at_drafts(drafts: Tensor, q: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(index [B, G, 1], q_d [B, G], p_d [B, G])``: the drafted tokens' probabilities under ``q``, ``p``
    ``[B, G + 1, V]``."""
    g = drafts.shape[1]
    d_idx = drafts.long().unsqueeze(-1)
    return d_idx, q[:, :g].gather(-1, d_idx).squeeze(-1), p[:, :g].gather(-1, d_idx).squeeze(-1)


def check_real(what: str, value: Any) -> float:
    """``value`` as a float; a ValueError naming ``what`` when it is not a number or is NaN (a NaN
    threshold makes every comparison false: a rule that silently never defers)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if math.isnan(v):
        raise ValueError(f"{what} is NaN")
    return v


def _check_alpha(alpha: float, name: str) -> float:
    return check_real(f"alpha for rule {name!r}", alpha)


def _as_float(x: Any) -> float:
    """``float(x)``, or NaN for a non-number, so range checks report it with their own clear message."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _max(x: Tensor) -> Tensor:  # [..., V] -> [...]
    # amax: the same value as max(...).values (NaN propagates alike) without computing the argmax
    return x.amax(dim=-1)


# ---- trivial targets -------------------------------------------------------------------------------


class TargetRule(Rule):
    """pi = p. As a decoding method, ``target`` means target-only decoding (no drafts)."""

    name = "target"
    takes_alpha = False
    pi_is_target = True
    #: the fused methods below write the decision (defer everywhere) in: a subclass that changes it must
    #: change them too
    fused_reads_decide = False

    def decide_position(self, stats):
        return torch.ones(stats.shape, dtype=stats.dtype, device=stats.device)

    # The fused path with the decision written in: pi = (1 - 1) q + 1 p is computed as p + 0 q, the same floats
    # (NaN wherever q is not finite) in one op, and the deferral at the drafted tokens, 1 at each, is left
    # implicit (None) so a round does not build and count it.
    def drafted_acceptance(self, drafts, q_rule, p_rule, q, p, features=None):
        _, q_d, p_d = _at_drafts(drafts, q, p)
        return None, genspec.acceptance(q_d, torch.add(p_d, q_d, alpha=0.0)), ()

    def row_distributions(self, decision, q, p, bonus):
        pi = torch.add(p, q, alpha=0.0)
        return genspec.residual(q, pi), pi if bonus == "pi" else p


class SpecDecodeRule(TargetRule):
    """Lossless speculative decoding (Leviathan et al. 2023; Chen et al. 2023): pi = p."""

    name = "specdecode"


class DraftRule(Rule):
    """pi = q: every draft is accepted. As a decoding method, draft-only decoding."""

    name = "draft"
    needs_target = False
    takes_alpha = False

    def decide_position(self, stats):
        return torch.zeros(stats.shape, dtype=stats.dtype, device=stats.device)


class EnsembleRule(Rule):
    """Constant fractional deferral pi = w p + (1 - w) q (transformers' ``assistant_ensemble_weight``).

    Pass ``weight=w`` in [0, 1]; or ``alpha`` as lenience, meaning ``w = 1 - alpha``.
    """

    name = "ensemble"
    takes_alpha = True

    def __init__(self, alpha: float | None = None, weight: float | None = None) -> None:
        if alpha is None and weight is None:
            raise missing_alpha_error(self.name)
        if alpha is not None and weight is not None:
            raise ValueError("ensemble takes exactly one of weight (on the target) or alpha (= 1 - weight)")
        w = 1.0 - _check_alpha(alpha, self.name) if weight is None else _as_float(weight)
        if not (0.0 <= w <= 1.0):
            raise ValueError(f"ensemble weight must be in [0, 1], got {w if weight is None else weight!r}")
        self.weight = w
        super().__init__(1.0 - w)

    def __repr__(self) -> str:
        return f"EnsembleRule(weight={self.weight!r}, alpha={self.alpha!r})"

    def decide_position(self, stats):
        return torch.full(stats.shape, self.weight, dtype=stats.dtype, device=stats.device)


class LossyRule(Rule):
    """Lossy speculative decoding (Leviathan et al. App. A.5; Tran-Thien 2023).

    Accept a draft ``v`` with ``min(1, p(v) / ((1 - alpha) q(v)))``; on rejection draw from
    ``norm(max(0, p - beta q))``. Its emitted distribution is Lemma 2's
    ``pi = min(q, p/(1-alpha)) + (1 - sum min(q, p/(1-alpha))) norm(max(0, p - beta q))``.
    ``defer[..., v]`` is the probability that drafted ``v`` is sent to the residual, ``1 - accept(v)``.
    ``beta`` in [0, 1] guarantees the residual has mass whenever a rejection can happen.
    """

    name = "lossy"
    token_level = True
    takes_alpha = True

    def __init__(self, alpha: float | None = None, beta: float = 1.0) -> None:
        super().__init__(alpha)
        if not (0.0 <= self.alpha < 1.0):
            raise ValueError(f"lossy alpha must be in [0, 1), got {alpha!r}")
        b = _as_float(beta)
        if not (0.0 <= b <= 1.0):
            raise ValueError(f"lossy beta must be in [0, 1], got {beta!r}")
        self.beta = b
        if self.alpha == 0.0 and b == 1.0:
            # accept min(1, p/q), residual norm(max(0, p - q)): Leviathan et al.'s lossless test
            warnings.warn("lossy with alpha=0 and beta=1 is exactly SpecDecode (always defers)", stacklevel=2)

    def __repr__(self) -> str:
        return f"LossyRule(alpha={self.alpha!r}, beta={self.beta!r})"

    fused_reads_decide = False

    def accept_prob(self, q: Tensor, p: Tensor) -> Tensor:
        """``min(1, p(v) / ((1 - alpha) q(v)))`` elementwise (1 where ``q(v) = 0``)."""
        scaled = (1 - self.alpha) * q
        safe = torch.where(scaled > 0, scaled, torch.ones_like(q))
        return torch.where(scaled > 0, (p / safe).clamp(max=1.0), torch.ones_like(q))

    def residual_dist(self, q: Tensor, p: Tensor) -> Tensor:
        """``norm(max(0, p - beta q))`` ``[..., V]`` (``p`` itself where that has no mass)."""
        excess = (p - self.beta * q).clamp_min(0)
        # beta = 1 and p = q: no rejection can happen; keep the residual a valid distribution anyway.
        mass = excess.sum(dim=-1, keepdim=True)
        return torch.where(mass > 16 * torch.finfo(q.dtype).eps, normalize(excess), p)

    def decide(self, q_rule, p_rule, q, p, features=None):
        return 1 - self.accept_prob(q, p)

    def mix(self, defer, q, p):
        return genspec.emitted(q, 1 - defer, self.residual_dist(q, p))

    def verification(self, q, p, pi, defer):
        return 1 - defer, self.residual_dist(q, p)

    def drafted_acceptance(self, drafts, q_rule, p_rule, q, p, features=None):
        # elementwise: only the drafted entries are needed, so the full [B, G + 1, V] decision is never built
        _, q_d, p_d = _at_drafts(drafts, q, p)
        defer_d = 1 - self.accept_prob(q_d, p_d)
        return defer_d, 1 - defer_d, ()

    def row_distributions(self, decision, q, p, bonus):
        resid = self.residual_dist(q, p)
        return resid, genspec.emitted(q, 1 - self.decide(None, None, q, p), resid) if bonus == "pi" else p


# ---- whole-position cascade rules (Section 3) ---------------------------------------------------------


class ChowRule(Rule):
    """Chow (Eq. 2): defer iff ``max_v q(v) < 1 - alpha``."""

    name = "chow"
    takes_alpha = True

    def decide_position(self, stats):
        return confidence_below(stats.q_max, 1 - self.alpha)


def confidence_below(
    q_max: Tensor,  # [...] the draft's max probability (untempered)
    threshold: float | Tensor,
) -> Tensor:  # [...] bool
    """Chow's test ``max q < threshold``, written once: :class:`ChowRule` at ``1 - alpha``, the sequential
    TokenCascade and BiLD (:mod:`specref.decode.baselines`) at their fallback threshold."""
    return q_max < threshold


class DiffRule(Rule):
    """Diff (Eq. 5): defer iff ``max_v q(v) < max_v p(v) - alpha``."""

    name = "diff"
    takes_alpha = True

    def decide_position(self, stats):
        return stats.q_max < stats.p_max - self.alpha


class OptRule(Rule):
    """OPT (Eq. 10): defer iff ``max_v q(v) < max_v p(v) - alpha * TV(p, q)``.

    The maxima are read on the untempered pair, the TV on the tempered pair that is sampled (the cost it
    prices is the rejection rate of the tempered mixture, Lemma 3).
    """

    name = "opt"
    takes_alpha = True

    def decide_position(self, stats):
        # the TV first, as before: the same kernels in the same order
        penalty = cost_penalty(self.alpha, stats.tv)
        return stats.q_max < stats.p_max - penalty


# ---- token-specific rules (Section 4) -----------------------------------------------------------------


class TokenV1Rule(Rule):
    """TokenV1 (Eq. 13): defer candidate v iff ``q(v) < max_u p(u) - alpha``."""

    name = "token_v1"
    token_level = True
    takes_alpha = True

    def decide(self, q_rule, p_rule, q, p, features=None):
        return q_rule < (_max(p_rule) - self.alpha).unsqueeze(-1)


class TokenV2Rule(Rule):
    """TokenV2 (Eq. 14): defer candidate v iff ``p(v) < max_u p(u) - alpha``."""

    name = "token_v2"
    token_level = True
    takes_alpha = True

    def decide(self, q_rule, p_rule, q, p, features=None):
        return p_rule < (_max(p_rule) - self.alpha).unsqueeze(-1)


class TokenV3Rule(Rule):
    """TokenV3 (Eq. 15): defer candidate v iff ``p(v) < (1 - alpha) max_u p(u)``.

    Keeps the "min-p" set of the target. ``alpha = 0`` is NOT SpecDecode: tokens tied for the target's
    argmax are kept without a coin.
    """

    name = "token_v3"
    token_level = True
    takes_alpha = True

    def decide(self, q_rule, p_rule, q, p, features=None):
        threshold = _max(p_rule)
        # (1 - alpha) * max with alpha = -inf would be inf * 0 when max is 0 (never: max >= 1/V).
        return p_rule < ((1 - self.alpha) * threshold).unsqueeze(-1)


# ---- learned rules ------------------------------------------------------------------------------------


class DeferralHead(Protocol):
    """What ``rules.get("learned", head=...)`` needs from a trained head (see ``specref.heads``).

    ``kind == "cascade"``: ``estimate`` returns ``[..., 2]`` estimated expected losses of keeping the draft
    and of deferring, ``(loss_q, loss_p)``; the rule defers iff ``loss_q > loss_p + alpha * TV(p, q)``
    (the plug-in of Lemma 4 with learned estimates).
    ``kind == "token"``: ``estimate`` returns ``[..., V]`` estimated probability that each candidate is
    correct; the rule defers candidate v iff ``score(v) < max_u score(u) - alpha`` (the token oracle's
    plug-in, THEORY.md section 6).
    ``kind == "mixture"``: ``estimate`` returns ``[..., 2]`` logits ``(a, b)`` of a mixture weight that the
    rule turns into ``w = sigmoid(a - softplus(b) * alpha)`` (:func:`mixture_weight`) and mixes
    ``pi = (1 - w) q + w p`` (continuous deferral, THEORY.md section 7).
    """

    kind: str

    def estimate(self, q_rule: Tensor, p_rule: Tensor, q: Tensor, p: Tensor, features: Any = None) -> Tensor:
        ...


def mixture_weight(
    estimates: Tensor,  # [..., 2] a mixture head's logits (a, b)
    alpha: float | Tensor,  # price of a rejection; a tensor broadcasts against [...]
) -> Tensor:  # [...] weight on the target, in [0, 1]
    """A mixture head's weight on the target at price ``alpha``: ``sigmoid(a - softplus(b) * alpha)``.

    The softplus keeps the weight non-increasing in the price, so sweeping alpha traces a curve from the
    target (alpha -> -inf) to the draft (alpha -> +inf) as for every other rule; one head serves every alpha
    because it was trained with the price as an input (``training.deferral``, objective ``loglik``). The
    decoder, offline evaluation and training all read this one formula.
    """
    a, slope = estimates[..., 0], torch.nn.functional.softplus(estimates[..., 1])
    price = slope * alpha
    # an infinite alpha (the sweeps' limits) on a slope that underflowed to 0 would be 0 * inf = NaN: no price
    price = torch.where(slope == 0, torch.zeros_like(price), price)
    return torch.sigmoid(a - price)


class LearnedRule(Rule):
    """Defers with a learned estimator of the expected losses (cascade), token correctness (token), or a
    learned mixture weight (mixture)."""

    name = "learned"
    takes_alpha = True

    def __init__(self, head: DeferralHead, alpha: float | None = None) -> None:
        kind = getattr(head, "kind", None)
        if kind not in ("cascade", "token", "mixture") or not callable(getattr(head, "estimate", None)):
            raise ValueError(
                "learned rule needs a head with kind 'cascade', 'token' or 'mixture' and an estimate(...) method, "
                f"got {type(head).__name__}"
            )
        super().__init__(alpha)
        self.head = head
        self.kind = kind
        self.token_level = kind == "token"

    def __repr__(self) -> str:
        return f"LearnedRule(head={type(self.head).__name__}, kind={self.head.kind!r}, alpha={self.alpha!r})"

    def decide(self, q_rule, p_rule, q, p, features=None):
        est = self.head.estimate(q_rule, p_rule, q, p, features)
        if self.token_level:
            if est.shape != q.shape:
                raise ValueError(f"token head returned shape {tuple(est.shape)}, expected {tuple(q.shape)}")
            return self.decide_scores(est)
        if est.shape != (*q.shape[:-1], 2):
            raise ValueError(f"{self.kind} head returned shape {tuple(est.shape)}, expected {(*q.shape[:-1], 2)}")
        return self.decide_position(PositionStats.of_pair(q_rule, p_rule, q, p, features, estimates=lambda: est))

    def decide_position(self, stats):
        """Cascade head: defer iff ``loss_q > loss_p + alpha * TV(p, q)`` (also the oracle's rule, with the
        realized losses as estimates). Mixture head: the fractional deferral ``w`` of :func:`mixture_weight`."""
        est = stats.estimates
        if self.kind == "mixture":
            return mixture_weight(est, self.alpha).to(stats.dtype)
        penalty = cost_penalty(self.alpha, stats.tv)
        return est[..., 0] > est[..., 1] + penalty

    def decide_scores(self, scores: Tensor) -> Tensor:  # [..., M] -> [..., M] bool
        """Token head: defer candidate v iff ``score(v) < max_u score(u) - alpha`` over the scored candidates."""
        # amax, not max(...).values: the same maximum (NaN included; a zero's sign cannot change a comparison)
        # without tracking the argmax, which made this the slowest step after the head's own features
        return scores < (scores.amax(dim=-1) - self.alpha).unsqueeze(-1)


# ---- registry -------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., Rule]] = {
    "target": TargetRule,
    "draft": DraftRule,
    "specdecode": SpecDecodeRule,
    "lossy": LossyRule,
    "ensemble": EnsembleRule,
    "chow": ChowRule,
    "diff": DiffRule,
    "opt": OptRule,
    "token_v1": TokenV1Rule,
    "token_v2": TokenV2Rule,
    "token_v3": TokenV3Rule,
    "learned": LearnedRule,
}

#: Rules whose behaviour does not depend on alpha (``get`` refuses one for them).
_NO_ALPHA = {"target", "draft", "specdecode"}


def NAMES() -> tuple[str, ...]:  # noqa: N802 - reads like a constant, stays current after register()
    """All registered rule names."""
    return tuple(_REGISTRY)


@dataclass(frozen=True)
class SweepGrid:
    """How ``specref reproduce`` sweeps a registered rule: its curve's label and alpha grids."""

    label: str
    param: str  # what the alpha column means ("" when the rule takes no alpha)
    quick: tuple[float, ...] = ()
    full: tuple[float, ...] = ()


_SWEEPS: dict[str, SweepGrid] = {}
_BUILTIN = frozenset(_REGISTRY)


def register(
    name: str,
    factory: Callable[..., Rule],
    *,
    label: str | None = None,
    alpha_meaning: str | None = None,
    quick: tuple[float, ...] = (),
    full: tuple[float, ...] | None = None,
) -> None:
    """Add a rule under ``name``: usable by name in :func:`get`, ``make_decoder``, ``specref generate
    --method``, ``reproduce --methods`` and offline ``evaluate`` (docs/architecture.md).

    ``factory(alpha=..., **options)`` builds the rule (usually the Rule subclass itself). The optional
    sweep: ``label`` (the curve's name in tables and plots), ``alpha_meaning`` (the alpha column's meaning
    and the missing-alpha message), ``quick`` / ``full`` alpha grids (``full`` defaults to ``quick``).
    An existing name, or the name of another decoding method, is an error (no silent shadowing).
    """
    from specref.defaults import METHODS  # torch-free; the sequential baselines' names are taken too

    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a rule name must be an identifier like 'my_rule', got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"a rule named {name!r} is already registered")
    if name in METHODS or name == "oracle":
        raise ValueError(f"a method named {name!r} already exists (a sequential baseline or the offline oracle)")
    if not callable(factory):
        raise ValueError(f"rule factory for {name!r} must be callable, got {type(factory).__name__}")
    grid = tuple(float(a) for a in quick)
    full_grid = grid if full is None else tuple(float(a) for a in full)
    if any(math.isnan(a) for a in (*grid, *full_grid)):
        raise ValueError(f"sweep grid of rule {name!r} has a NaN alpha")
    _REGISTRY[name] = factory
    _SWEEPS[name] = SweepGrid(label or name, alpha_meaning or ("alpha" if grid else ""), grid, full_grid)
    if alpha_meaning:
        ALPHA_MEANING[name] = alpha_meaning


def unregister(name: str) -> None:
    """Remove a rule added with :func:`register` (built-in rules cannot be removed)."""
    if name in _BUILTIN:
        raise ValueError(f"built-in rule {name!r} cannot be unregistered")
    if name not in _REGISTRY:
        raise ValueError(f"no registered rule named {name!r}")
    del _REGISTRY[name]
    del _SWEEPS[name]
    ALPHA_MEANING.pop(name, None)


def sweep_grid(name: str) -> SweepGrid | None:
    """The sweep of a rule added with :func:`register` (None for built-in rules and unknown names)."""
    return _SWEEPS.get(name)


def get_swept(name: str, alpha: float | None, **options: Any) -> Rule:
    """:func:`get` at one point of a sweep: ``alpha`` goes only to rules that read one, and an alpha at a
    limit of the rule's range (where sweeps start and end) does not warn."""
    factory = _REGISTRY.get(name) if isinstance(name, str) else None
    if name in _NO_ALPHA or getattr(factory, "takes_alpha", None) is False:
        alpha = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get(name, alpha, **options)


def get(name: str, alpha: float | None = None, **options: Any) -> Rule:
    """Build the rule ``name`` with lenience ``alpha`` and rule-specific options.

    ``target``, ``draft`` and ``specdecode`` take no alpha. Every other rule needs one (no default; see
    :data:`ALPHA_MEANING`): ``lossy`` in [0, 1), with ``beta`` (default 1); ``ensemble`` takes ``weight``
    instead or ``alpha = 1 - weight``; ``learned`` takes ``head``. +-inf are allowed and give the limits
    (``-inf``: SpecDecode; ``+inf``: draft-only); an alpha that makes a rule always or never defer warns.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown rule {name!r}; choose one of: {', '.join(_REGISTRY)}")
    factory = _REGISTRY[name]
    if name in _NO_ALPHA:
        if alpha is not None or options:
            raise ValueError(f"rule {name!r} takes no alpha or options, got alpha={alpha!r}, {options}")
        return factory()
    if name == "ensemble":
        return factory(alpha=alpha, **options)
    try:
        return factory(alpha=alpha, **options)
    except TypeError as err:
        raise ValueError(f"bad options for rule {name!r}: {err}") from None
