"""Per-position summaries of a draft/target pair of FULL next-token distributions (pure tensor math).

One function, :func:`summarize`, turns the untempered pair ``(q, p)`` ``[..., V]`` into the fixed-size
quantities that the logs store (docs/logs.md) and that deferral heads read. The logger calls it on
teacher-forced distributions and a head calls it on the live distributions at decode time, so features
computed from logs and from live distributions go through the same code: identical by construction.
Both :mod:`specref.logs` and :mod:`specref.heads` import it, so it stands below both and imports neither.

Sums over the vocabulary run in float64 (tail masses of 1e-6 matter); every float output is then rounded
to float32, the dtype stored in the logs, so the live path sees exactly the values a log would hold.

Why these fields (THEORY.md sections 3, 4, 6): the cascade rules and the Lemma 4 oracle need max q, max p,
the argmaxes, TV(p, q) and q/p at the reference token: all exact here. The token rules' objective
``1 - pi(y) + alpha * TV(pi, q)`` with ``pi = q (1 - r) + p * q(D)`` needs sums over the deferred set ``D``,
which for the baseline token rules spans most of the vocabulary. A top-k sketch cannot make those sums
exact, so for the fixed rules they are computed here, from the full distributions, on an alpha grid
(``token_v*`` fields). Learned token heads only score the union of both top-k sets and treat every other
token alike (all deferred or none), so their objective is exact from the union's probabilities plus the
tail masses, except the tail's share of the rejection, ``f(eta) = sum_tail max(0, q - eta p)``, which is
stored on a grid of eta (``tail_excess``) and interpolated with a certified bound (specref.logs.offline).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from specref import rules
from specref.defaults import DEFAULT_ALPHAS, DEFAULT_TAIL_POINTS, DEFAULT_TOP_K, TOKEN_RULES
from specref.dists import stable_top_k, tv

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_TAIL_POINTS",
    "DEFAULT_TOP_K",
    "TOKEN_RULES",
    "sorted_top_k",
    "summarize",
    "tail_grid",
]


# Clamp before logs so that a probability that underflowed to 0 gives a finite feature.
_TINY = 1e-30


def tail_grid(points: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Tensor:
    """The eta grid ``[G]`` of the stored tail excess: ``j / (G - 1)`` for ``j = 0..G-1``."""
    if points < 2:
        raise ValueError(f"tail grid needs at least 2 points, got {points}")
    return torch.linspace(0.0, 1.0, points, dtype=dtype, device=device)


def sorted_top_k(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of ``x`` ``[..., V]``: (ids ``[..., k]`` long, values ``[..., k]``).

    Descending; ties go to the lower token index (a stable sort), so ``ids[..., 0]`` is torch.argmax's
    answer and the result never depends on the device's top-k kernel.
    """
    return stable_top_k(x, k)


# Entries per float64 scratch block on a CPU: about 1 MiB at a time stays in cache, where fresh [..., V]
# float64 temporaries (page faults and memory traffic) were most of a head's live-summary time.
_BLOCK_ELEMENTS = 1 << 17


def _entropies_and_tv(q: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # [..., V] each -> [...] float64
    """``H(q)``, ``H(p)`` and ``TV(p, q)`` ``[...]`` in float64: ``-sum_v x log max(x, tiny)`` and
    ``sum_v max(0, p - q)`` of the float64 values.

    The same elementwise operations (in place, in scratch buffers) and the same per-row sums as the
    whole-tensor expressions ``-(x * log(x.clamp_min(tiny))).sum(-1)`` and ``(p - q).clamp_min(0).sum(-1)``,
    so the same values (tests hold them equal bit for bit). On a CPU, with a unit-stride last dimension, the
    rows go through reused buffers a block at a time: elementwise results do not depend on an entry's
    position and a row's sum over a unit-stride last dimension does not depend on the other rows; a block
    never holds one row of several (a one-row sum may be split across threads). Elsewhere (an accelerator's
    caching allocator reuses memory, and each block would cost kernel launches) whole tensors share one
    scratch buffer, each temporary keeping the memory layout that fixes the order of its sum.
    """
    v = q.shape[-1]
    lead = q.shape[:-1]
    if q.device.type != "cpu" or q.stride(-1) != 1 or p.stride(-1) != 1:
        q64, p64 = q.double(), p.double()
        same_layout = q64.stride() == p64.stride()
        work = torch.empty_like(q64)
        hq = _entropy(q64, work)
        hp = _entropy(p64, work if same_layout else torch.empty_like(p64))
        diff = torch.sub(p64, q64, out=work) if same_layout else p64 - q64
        return hq, hp, diff.clamp_min_(0).sum(-1)
    qf, pf = q.reshape(-1, v), p.reshape(-1, v)
    rows = qf.shape[0]
    step = max(2, _BLOCK_ELEMENTS // max(v, 1))
    out = torch.empty((3, rows), dtype=torch.float64, device=q.device)
    size = (min(step + 1, rows), v)
    q64, p64, work = (torch.empty(size, dtype=torch.float64, device=q.device) for _ in range(3))
    start = 0
    while start < rows:
        stop = min(start + step, rows)
        if rows - stop == 1:
            stop = rows  # fold a lone last row into this block
        n = stop - start
        qb, pb, wb = q64[:n].copy_(qf[start:stop]), p64[:n].copy_(pf[start:stop]), work[:n]
        torch.sum(_neg_plogp(qb, wb), dim=-1, out=out[0, start:stop])
        torch.sum(_neg_plogp(pb, wb), dim=-1, out=out[1, start:stop])
        torch.sum(torch.sub(pb, qb, out=wb).clamp_min_(0), dim=-1, out=out[2, start:stop])
        start = stop
    return -out[0].view(lead), -out[1].view(lead), out[2].view(lead)


def _neg_plogp(x64: Tensor, work: Tensor) -> Tensor:
    """``x log max(x, tiny)`` elementwise, written into ``work`` (same shape as float64 ``x64``)."""
    torch.clamp_min(x64, _TINY, out=work).log_()
    return work.mul_(x64)


def _entropy(x64: Tensor, work: Tensor) -> Tensor:
    """``-sum_v x log max(x, tiny)`` ``[...]`` of float64 ``x64`` ``[..., V]``, using ``work`` as scratch."""
    return -_neg_plogp(x64, work).sum(-1)


def summarize(
    q: Tensor,  # [..., V] untempered draft distribution
    p: Tensor,  # [..., V] untempered target distribution
    top_k: int = DEFAULT_TOP_K,
    reference: Tensor | None = None,  # [...] long reference (truth) token, or None
    tail_points: int | None = DEFAULT_TAIL_POINTS,
    alphas: Sequence[float] | None = None,
    head_fields_only: bool = False,
) -> dict[str, Tensor]:
    """Fixed-size summary of each position; keys are the log column names (docs/logs.md).

    ``tail_points=None`` skips the tail excess and ``alphas=None`` the exact token-rule fields, which a
    head at decode time does not need; ``head_fields_only`` also skips the tail masses and the inner products
    (every field a head's features read is still computed, by the same operations). ``top_k`` is capped
    at ``V``.
    Returns float32 tensors for probabilities and long tensors for token ids.
    """
    if q.shape != p.shape:
        raise ValueError(f"q and p must have the same shape, got {tuple(q.shape)} and {tuple(p.shape)}")
    vocab = q.shape[-1]
    k = min(int(top_k), vocab)
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    out: dict[str, Tensor] = {}

    q_ids, q_top = sorted_top_k(q, k)
    p_ids, p_top = sorted_top_k(p, k)
    out["q_topk_ids"], out["q_topk_probs"] = q_ids, q_top
    out["p_topk_ids"], out["p_topk_probs"] = p_ids, p_top
    out["p_at_q_topk"] = p.gather(-1, q_ids)
    out["q_at_p_topk"] = q.gather(-1, p_ids)
    out["q_max"], out["p_max"] = q_top[..., 0], p_top[..., 0]
    out["q_argmax"], out["p_argmax"] = q_ids[..., 0], p_ids[..., 0]

    out["q_entropy"], out["p_entropy"], out["tv"] = _entropies_and_tv(q, p)
    if not head_fields_only:
        q64, p64 = q.double(), p.double()
        # Inner products give the expected losses when the target itself is taken as the truth (on-policy logs).
        out["qp_dot"] = (q64 * p64).sum(-1)
        out["p_sqnorm"] = (p64 * p64).sum(-1)

        # Tail: every token outside the union of both top-k sets.
        in_union = torch.zeros(q.shape, dtype=torch.bool, device=q.device)
        in_union.scatter_(-1, q_ids, True).scatter_(-1, p_ids, True)
        q_tail64 = torch.where(in_union, 0.0, q64)
        p_tail64 = torch.where(in_union, 0.0, p64)
        out["q_tail"], out["p_tail"] = q_tail64.sum(-1), p_tail64.sum(-1)
        if tail_points is not None:
            grid = tail_grid(tail_points, device=q.device)
            out["tail_excess"] = torch.stack(
                [(q_tail64 - float(eta) * p_tail64).clamp_min(0).sum(-1) for eta in grid], dim=-1
            )

    if reference is not None:
        ref = reference.long()
        if ref.shape != q.shape[:-1]:
            raise ValueError(f"reference must be {tuple(q.shape[:-1])}, got {tuple(ref.shape)}")
        if ref.numel() and (int(ref.min()) < 0 or int(ref.max()) >= vocab):
            raise ValueError(f"reference token ids must lie in [0, {vocab})")
        out["reference"] = ref
        out["q_ref"] = q.gather(-1, ref.unsqueeze(-1)).squeeze(-1)
        out["p_ref"] = p.gather(-1, ref.unsqueeze(-1)).squeeze(-1)
        if alphas is not None:
            out.update(_token_rules_exact(q, p, ref, alphas))
    elif alphas is not None:
        raise ValueError("the exact token-rule fields need a reference token")

    return {
        name: value.long() if name.endswith(("_ids", "argmax")) or name == "reference" else value.float()
        for name, value in out.items()
    }


def _token_rules_exact(
    q: Tensor,  # [..., V]
    p: Tensor,  # [..., V]
    ref: Tensor,  # [...] long
    alphas: Sequence[float],
) -> dict[str, Tensor]:
    """Exact per-alpha quantities of the baseline token rules (THEORY.md section 4) from full distributions.

    For each rule and alpha: ``eta = q(D)`` (probability that a draft is deferred), ``pi(y)``, the
    GenSpecSample rejection rate ``TV(pi, q) = sum_{v in D} max(0, q(v) - eta p(v))`` and argmax pi.
    Decisions compare in the input dtype, as the rules do at decode time; sums run in float64.
    """
    q64, p64 = q.double(), p.double()
    q_ref = q64.gather(-1, ref.unsqueeze(-1)).squeeze(-1)
    p_ref = p64.gather(-1, ref.unsqueeze(-1)).squeeze(-1)
    fields: dict[str, list[Tensor]] = {}
    for rule in TOKEN_RULES:
        for alpha in alphas:
            r = rules.get_swept(rule, float(alpha))
            d = r.decide(q, p, q, p)  # [..., V] bool, compared in the input dtype
            eta = r.deferred_mass(d, q64)[..., 0]
            r_ref = d.gather(-1, ref.unsqueeze(-1)).squeeze(-1).double()
            pi = r.mix(d.double(), q64, p64)  # q (1 - r) + p eta
            rej = tv(q64, pi)  # TV(pi, q) = sum_D max(0, q - eta p): GenSpecSample's rejection rate (Lemma 3)
            fields.setdefault(f"{rule}_eta", []).append(eta)
            fields.setdefault(f"{rule}_pi_ref", []).append(q_ref * (1 - r_ref) + p_ref * eta)
            fields.setdefault(f"{rule}_rej", []).append(rej)
            fields.setdefault(f"{rule}_pi_argmax", []).append(pi.argmax(-1))
    return {name: torch.stack(values, dim=-1) for name, values in fields.items()}
