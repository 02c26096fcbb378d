"""Synthetic logs whose optimal deferral rule is known, for testing heads, training and evaluation.

Each position has random draft/target distributions ``q, p`` over a small vocabulary with different argmaxes
``a_q != a_p``. The reference token is drawn from a KNOWN model of the features:
``y = a_q`` with probability ``pi_q``, ``y = a_p`` with ``pi_p``, else another token, where
``(pi_q, pi_p, 1 - pi_q - pi_p) = softmax(u_q, u_p, 0)`` and ``u_q, u_p`` are fixed linear functions of
``(q_max, p_max)`` (scenario ``"logistic"``). So the expected argmax losses are ``E[l(q)] = 1 - pi_q`` and
``E[l(p)] = 1 - pi_p``, and the Bayes-optimal rule given the features is Lemma 4's with those: defer iff
``pi_p - pi_q > alpha * TV(p, q)``. The plug-in OPT (``1 - max q`` vs ``1 - max p``) is deliberately
miscalibrated against it. Scenario ``"separable"``: ``y = a_q`` iff ``q_max - p_max > 0`` (else ``a_p``),
with a margin: both realized losses are linearly separable in the features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from specref.logs.schema import LogLayout
from specref.position_summary import DEFAULT_ALPHAS, DEFAULT_TAIL_POINTS, summarize

__all__ = ["SCENARIOS", "expected_losses", "synthetic_logs", "write_summary"]

SCENARIOS = ("logistic", "separable")


def _pair(n: int, vocab: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random ``[n, V]`` pairs with a spread of peakedness and distinct argmaxes."""
    scale_q = 0.5 + 3.5 * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    scale_p = 0.5 + 3.5 * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    zq = torch.randn(n, vocab, generator=gen, dtype=torch.float64) * scale_q
    zp = 0.5 * zq + torch.randn(n, vocab, generator=gen, dtype=torch.float64) * scale_p
    aq, ap = zq.argmax(-1), zp.argmax(-1)
    same = aq == ap
    # Where the argmaxes coincide, swap the target's top logit with a random other token's.
    other = (aq + 1 + torch.randint(vocab - 1, (n,), generator=gen)) % vocab
    rows = same.nonzero().squeeze(-1)
    top = zp[rows, ap[rows]].clone()
    zp[rows, ap[rows]] = zp[rows, other[rows]]
    zp[rows, other[rows]] = top + 1e-3
    return torch.softmax(zq, -1).float(), torch.softmax(zp, -1).float()


def _choice_logits(q_max: Tensor, p_max: Tensor) -> tuple[Tensor, Tensor]:
    """The known model: logits of y = a_q and y = a_p against 'another token' (which has logit 0)."""
    u_q = 5.0 * q_max - 2.0 * p_max - 1.0
    u_p = 4.0 * p_max - 1.0 * q_max - 0.5
    return u_q.double(), u_p.double()


def expected_losses(summary: dict[str, Tensor]) -> Tensor:
    """``[N, 2]`` true expected argmax losses (E[l(q)], E[l(p)]) of the ``logistic`` scenario."""
    u_q, u_p = _choice_logits(summary["q_max"], summary["p_max"])
    probs = torch.softmax(torch.stack([u_q, u_p, torch.zeros_like(u_q)], -1), -1)
    return torch.stack([1 - probs[:, 0], 1 - probs[:, 1]], -1)


def synthetic_logs(
    n_examples: int,
    positions: int = 20,
    vocab: int = 16,
    top_k: int = 8,
    scenario: str = "logistic",
    seed: int = 0,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    margin: float = 0.05,
) -> tuple[dict[str, Any], LogLayout]:
    """A summary dict with every log column (``example_index``, ``example_id``, ``position`` included)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    gen = torch.Generator().manual_seed(seed)
    n = n_examples * positions
    q, p = _pair(n, vocab, gen)
    base = summarize(q, p, top_k=top_k, tail_points=None)
    a_q, a_p = base["q_argmax"], base["p_argmax"]
    other = (a_q + 1 + torch.randint(vocab - 1, (n,), generator=gen)) % vocab
    other = torch.where(other == a_p, (other + 1) % vocab, other)
    other = torch.where(other == a_q, (other + 1) % vocab, other)
    if scenario == "logistic":
        u_q, u_p = _choice_logits(base["q_max"], base["p_max"])
        probs = torch.softmax(torch.stack([u_q, u_p, torch.zeros_like(u_q)], -1), -1)
        pick = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        ref = torch.where(pick == 0, a_q, torch.where(pick == 1, a_p, other))
    else:
        z = base["q_max"] - base["p_max"]
        # Push every position out of the margin band so the classes are separated.
        ref = torch.where(z > 0, a_q, a_p)
        keep = z.abs() >= margin
        q, p, ref = q[keep], p[keep], ref[keep]
        n = int(keep.sum())
    summary: dict[str, Any] = summarize(q, p, top_k=top_k, reference=ref, tail_points=DEFAULT_TAIL_POINTS,
                                        alphas=alphas)
    index = torch.arange(n) // positions
    summary["example_index"] = index
    summary["example_id"] = [f"syn{int(i)}" for i in index]
    summary["position"] = torch.arange(n) % positions
    layout = LogLayout(top_k=top_k, vocab_size=vocab, tail_points=DEFAULT_TAIL_POINTS, alphas=tuple(alphas))
    return summary, layout


def write_summary(directory: Any, summary: dict[str, Any], layout: LogLayout, examples_per_shard: int = 16,
                  source: dict[str, Any] | None = None) -> Any:
    """Write a summary dict (rows grouped by ``example_index``, in order) as logs; returns the directory."""
    from specref.logs.schema import columns
    from specref.logs.store import LogWriter

    names = [c.name for c in columns(layout) if c.name not in ("example_index", "example_id")]
    index = summary["example_index"]
    with LogWriter(directory, layout, source=source or {"mode": "synthetic"},
                   examples_per_shard=examples_per_shard) as writer:
        for ex in torch.unique(index).tolist():
            sel = (index == ex).nonzero().squeeze(-1)
            rows = {name: summary[name][sel] for name in names}
            writer.add_example(int(ex), summary["example_id"][int(sel[0])], rows)
        writer.finish()
    return directory
