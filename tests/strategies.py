"""Hypothesis strategies and small fixtures shared by the issue-2 test suite.

Distributions are float64 tensors ``[V]`` (or ``[B, V]``) over a small vocabulary, drawn from a mix of kinds
so that the edge cases the theory cares about come up often:

* ``counts``: small integer counts normalised (many exact ties and zeros);
* ``dyadic``: multiples of ``1/32`` (every sum, difference and product with a dyadic alpha is EXACT in
  float64, so threshold decisions can be compared across algebraically equal formulas);
* ``one_hot`` and ``uniform`` (the extreme cases);
* ``generic``: arbitrary floats normalised, with zeros.

Ties between entries are exact in every kind: equal counts divided by the same total give equal floats.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st
from torch import Tensor

from specref import rules
from specref.dists import tv

DTYPE = torch.float64
INF = math.inf

#: Every method name of ``rules.get`` plus the two kinds of learned head.
PAPER_LENIENCE_RULES = ("chow", "diff", "opt", "token_v1", "token_v2", "token_v3")
LEARNED_RULES = ("learned_cascade", "learned_token", "learned_linear_cascade", "learned_linear_token")
LENIENCE_RULES = PAPER_LENIENCE_RULES + LEARNED_RULES
ALL_RULES = ("target", "draft", "specdecode", "lossy", "ensemble") + LENIENCE_RULES
#: Rules whose pi is (1 - r) q + r p for a whole-position r (Lemma 3 applies).
CASCADE_RULES = (
    "target", "draft", "specdecode", "ensemble", "chow", "diff", "opt", "learned_cascade", "learned_linear_cascade",
)
TOKEN_RULES = ("token_v1", "token_v2", "token_v3", "learned_token", "learned_linear_token")


# ---- distributions ------------------------------------------------------------------------------------

vocab_sizes = st.integers(min_value=2, max_value=5)


def _from_weights(weights: list[float]) -> Tensor:
    x = torch.tensor(weights, dtype=DTYPE)
    return x / x.sum()


@st.composite
def counts_dist(draw, vocab: int) -> Tensor:
    c = draw(st.lists(st.integers(0, 4), min_size=vocab, max_size=vocab).filter(lambda c: sum(c) > 0))
    return _from_weights([float(x) for x in c])


@st.composite
def dyadic_dist(draw, vocab: int, bits: int = 5) -> Tensor:
    """Multiples of 2**-bits: sorted cut points of [0, 1] on that grid (zeros where cuts coincide)."""
    total = 2**bits
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=vocab - 1, max_size=vocab - 1)))
    edges = [0, *cuts, total]
    parts = [edges[i + 1] - edges[i] for i in range(vocab)]
    parts = draw(st.permutations(parts))
    return torch.tensor(parts, dtype=DTYPE) / total


@st.composite
def one_hot_dist(draw, vocab: int) -> Tensor:
    return torch.nn.functional.one_hot(torch.tensor(draw(st.integers(0, vocab - 1))), vocab).to(DTYPE)


@st.composite
def generic_dist(draw, vocab: int) -> Tensor:
    w = draw(
        st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 1.0)), min_size=vocab, max_size=vocab).filter(
            lambda w: sum(w) > 0
        )
    )
    return _from_weights(w)


def dists(vocab: int, exact: bool = False) -> st.SearchStrategy[Tensor]:
    """A distribution over ``vocab`` tokens; ``exact=True`` gives only dyadic ones (exact arithmetic)."""
    if exact:
        return dyadic_dist(vocab)
    return st.one_of(
        counts_dist(vocab),
        dyadic_dist(vocab),
        one_hot_dist(vocab),
        st.just(torch.full((vocab,), 1.0 / vocab, dtype=DTYPE)),
        generic_dist(vocab),
    )


@st.composite
def dist_batches(draw, vocab: int, rows: int, exact: bool = False) -> Tensor:
    return torch.stack([draw(dists(vocab, exact)) for _ in range(rows)])


@st.composite
def pairs(draw, exact: bool = False, max_rows: int = 3) -> tuple[Tensor, Tensor]:
    """(q, p), each ``[B, V]`` with B in 1..max_rows: batched so every property also exercises batching."""
    vocab = draw(vocab_sizes)
    rows = draw(st.integers(1, max_rows))
    q = draw(dist_batches(vocab, rows, exact))
    # Sometimes p = q exactly (TV = 0), the degenerate case of every rule.
    p = q.clone() if draw(st.integers(0, 9)) == 0 else draw(dist_batches(vocab, rows, exact))
    return q, p


@st.composite
def triples(draw, exact: bool = False, max_rows: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    """(truth, q, p), each ``[B, V]``."""
    q, p = draw(pairs(exact=exact, max_rows=max_rows))
    truth = draw(dist_batches(q.shape[-1], q.shape[0], exact))
    return truth, q, p


# ---- scalars ------------------------------------------------------------------------------------------

#: Lenience values including the limits; dyadic ones are exact in float64.
alphas = st.one_of(
    st.sampled_from([-INF, INF, 0.0, 0.5, 1.0, -0.5, -1.0, 0.25]),
    st.floats(-2.0, 2.0, allow_nan=False),
    st.integers(-64, 64).map(lambda k: k / 32),
)
dyadic_alphas = st.integers(-48, 48).map(lambda k: k / 32)
finite_alphas = st.floats(-2.0, 2.0, allow_nan=False)
temperatures = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 2.0]), st.floats(0.05, 4.0))
unit_interval = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0))
lossy_alphas = st.one_of(st.sampled_from([0.0, 0.5, 0.9]), st.floats(0.0, 0.99))


# ---- fake deferral heads ------------------------------------------------------------------------------


def _fixed_init(module: torch.nn.Module, seed: int) -> None:
    """Deterministic weights from a private generator (never touches the global torch seed)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(2 * torch.randn(param.shape, generator=gen, dtype=param.dtype))


class PluginCascadeHead:
    """Cascade head returning the max-probability plug-in losses: the learned rule must then equal OPT."""

    kind = "cascade"

    def estimate(self, q_rule, p_rule, q, p, features=None):
        return torch.stack([1 - q_rule.max(-1).values, 1 - p_rule.max(-1).values], dim=-1)


class PluginTokenHead:
    """Token head scoring each candidate by the target's probability: the learned rule must equal TokenV2."""

    kind = "token"

    def estimate(self, q_rule, p_rule, q, p, features=None):
        return p_rule


class LinearCascadeHead(torch.nn.Module):
    """A tiny trained-looking cascade head: Linear(3 -> 2) over (max q, max p, TV) with fixed weights."""

    kind = "cascade"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2, dtype=DTYPE)
        _fixed_init(self, seed)

    def estimate(self, q_rule, p_rule, q, p, features=None):
        x = torch.stack([q_rule.max(-1).values, p_rule.max(-1).values, tv(p_rule, q_rule)], dim=-1)
        with torch.no_grad():
            return torch.sigmoid(self.lin(x.to(DTYPE)))


class LinearTokenHead(torch.nn.Module):
    """A tiny token head: Linear(2 -> 1) over (q(v), p(v)) per candidate with fixed weights."""

    kind = "token"

    def __init__(self, seed: int = 1) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1, dtype=DTYPE)
        _fixed_init(self, seed)

    def estimate(self, q_rule, p_rule, q, p, features=None):
        x = torch.stack([q_rule, p_rule], dim=-1).to(DTYPE)
        with torch.no_grad():
            return torch.sigmoid(self.lin(x)).squeeze(-1)


_HEADS = {
    "learned_cascade": PluginCascadeHead,
    "learned_token": PluginTokenHead,
    "learned_linear_cascade": LinearCascadeHead,
    "learned_linear_token": LinearTokenHead,
}


def make_rule(name: str, alpha: float = 0.0, **options) -> rules.Rule:
    """Build any rule of :data:`ALL_RULES`; alpha is mapped into each rule's legal range where it has one."""
    if name in ("target", "draft", "specdecode"):
        return rules.get(name)
    if name == "lossy":
        a = alpha if 0.0 <= alpha < 1.0 else 0.5
        return rules.get("lossy", alpha=a, **options)
    if name == "ensemble":
        return rules.get("ensemble", weight=options.get("weight", 0.5))
    if name in _HEADS:
        return rules.get("learned", alpha=alpha, head=_HEADS[name]())
    return rules.get(name, alpha=alpha)


@st.composite
def rule_builds(draw, names=ALL_RULES, alpha_strategy=alphas) -> tuple[str, rules.Rule]:
    """(name, rule) with a drawn alpha and, for lossy / ensemble, drawn beta / weight."""
    name = draw(st.sampled_from(names))
    if name == "lossy":
        return name, rules.get("lossy", alpha=draw(lossy_alphas), beta=draw(unit_interval))
    if name == "ensemble":
        return name, rules.get("ensemble", weight=draw(unit_interval))
    return name, make_rule(name, draw(alpha_strategy))


@st.composite
def verify_blocks(draw, max_vocab: int = 4):
    """(drafts [B, g], q [B, g+1, V], p [B, g+1, V], q_rule, p_rule, BlockUniforms) with drafts in q's support."""
    from specref.dists import temper
    from specref.verify import BlockUniforms

    b, g, v = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(2, max_vocab))
    shape = (b, g + 1, v)
    q_rule = draw(dist_batches(v, b * (g + 1))).reshape(shape)
    p_rule = draw(dist_batches(v, b * (g + 1))).reshape(shape)
    t = draw(st.sampled_from([1.0, 0.5, 0.0]))
    q, p = temper(q_rule, t), temper(p_rule, t)
    drafts = torch.empty((b, g), dtype=torch.long)
    for i in range(b):
        for j in range(g):
            support = torch.nonzero(q[i, j] > 0).flatten().tolist()
            drafts[i, j] = draw(st.sampled_from(support))
    unif = st.floats(0.0, 1.0, exclude_max=True)
    u_acc = torch.tensor(draw(st.lists(unif, min_size=b * g, max_size=b * g)), dtype=DTYPE).reshape(b, g)
    u_smp = torch.tensor(draw(st.lists(unif, min_size=b * (g + 1), max_size=b * (g + 1))), dtype=DTYPE)
    return drafts, q, p, q_rule, p_rule, BlockUniforms(u_acc, u_smp.reshape(b, g + 1))
