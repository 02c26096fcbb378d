"""Toy language models and a vectorised block sampler over them.

:class:`TableLM` is a finite-context LM stored as a table, usable both as a :data:`specref.exact.ToyLM`
(one prefix at a time) and in batch (many ragged prefixes at once). :func:`sample_block_algorithm` runs the
block algorithm of THEORY.md section 7 over many independent rows with the real batched verifier, so its
samples can be held against the exact distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from specref.dists import check_distribution, sample_categorical
from specref.exact import Sampling
from specref.rules import Rule
from specref.verify import PAD, VerifyResult, verify_block

__all__ = ["BlockSamples", "TableLM", "sample_block_algorithm"]


class TableLM:
    """Next-token distribution that depends on the last ``order`` tokens (fewer at the start).

    ``table`` is ``[sum_{l=0..order} V**l, V]``: rows for every context of length 0..order.
    """

    def __init__(self, table: Tensor, vocab: int, order: int) -> None:
        rows = sum(vocab**length for length in range(order + 1))
        if table.shape != (rows, vocab):
            raise ValueError(f"table must be [{rows}, {vocab}] for V={vocab}, order={order}; got {tuple(table.shape)}")
        self.table = check_distribution(table, "table")
        self.vocab, self.order = vocab, order
        self._offset = [sum(vocab**j for j in range(length)) for length in range(order + 2)]

    @classmethod
    def random(
        cls,
        vocab: int,
        order: int,
        generator: torch.Generator,
        concentration: float = 1.0,
        zero_prob: float = 0.0,
        one_hot_prob: float = 0.0,
        dtype: torch.dtype = torch.float64,
    ) -> TableLM:
        """Random rows: weights ``E ** (1 / concentration)`` with ``E ~ Exp(1)`` (Dirichlet(1) at 1; peakier
        below 1); each entry zeroed with ``zero_prob``; each row one-hot with ``one_hot_prob``.

        Drawn from ``generator`` only, so a seed fixes the LM.
        """
        rows = sum(vocab**length for length in range(order + 1))
        u = torch.rand((rows, vocab), generator=generator, dtype=torch.float64).clamp_min(1e-300)
        raw = (-torch.log(u)) ** (1.0 / max(concentration, 1e-3))
        zero = torch.rand((rows, vocab), generator=generator, dtype=torch.float64) < zero_prob
        raw = torch.where(zero, torch.zeros_like(raw), raw)
        empty = raw.sum(-1) == 0
        raw[empty, 0] = 1.0
        hot = torch.rand(rows, generator=generator, dtype=torch.float64) < one_hot_prob
        pick = torch.randint(vocab, (rows,), generator=generator)
        onehots = torch.nn.functional.one_hot(pick, vocab).to(raw.dtype)
        raw = torch.where(hot.unsqueeze(-1), onehots, raw)
        return cls((raw / raw.sum(-1, keepdim=True)).to(dtype), vocab, order)

    def index(self, prefix: tuple[int, ...]) -> int:
        ctx = prefix[-self.order :] if self.order else ()
        code = 0
        for tok in ctx:
            if not 0 <= tok < self.vocab:
                raise ValueError(f"token {tok} out of range for vocabulary {self.vocab}")
            code = code * self.vocab + tok
        return self._offset[len(ctx)] + code

    def __call__(self, prefix: tuple[int, ...]) -> Tensor:  # -> [V]
        return self.table[self.index(tuple(prefix))]

    def batch(
        self,
        tokens: Tensor,  # [N, L] long, valid entries left-aligned
        lengths: Tensor,  # [N] long, number of valid entries per row
    ) -> Tensor:  # -> [N, V]
        """Distributions after each row's ragged prefix, vectorised."""
        n = tokens.shape[0]
        ctx_len = lengths.clamp(max=self.order)
        code = torch.zeros(n, dtype=torch.long, device=tokens.device)
        for j in range(self.order):
            # j-th token of the context window (oldest first) exists iff j < ctx_len.
            idx = (lengths - ctx_len + j).clamp(min=0, max=tokens.shape[1] - 1)
            tok = tokens.gather(1, idx.unsqueeze(1)).squeeze(1).clamp(min=0)
            code = torch.where(j < ctx_len, code * self.vocab + tok, code)
        offsets = torch.tensor(self._offset, device=tokens.device)[ctx_len]
        return self.table.to(tokens.device)[offsets + code]


@dataclass(frozen=True)
class BlockSamples:
    """Samples from :func:`sample_block_algorithm`.

    Attributes:
        tokens: ``[N, n]`` the first n emitted tokens of each row.
        target_calls: ``[N]`` rounds (target calls) each row needed to emit at least n tokens.
        accepted_first_round: ``[N]`` drafts accepted in each row's first round.
    """

    tokens: Tensor
    target_calls: Tensor
    accepted_first_round: Tensor


VerifyFn = Callable[..., VerifyResult]


def sample_block_algorithm(
    draft_lm: TableLM,
    target_lm: TableLM,
    rule: Rule,
    gamma: int,
    n: int,
    num_samples: int,
    generator: torch.Generator,
    bonus: str = "pi",
    sampling: Sampling | None = None,
    rule_on_tempered: bool = False,
    verify_fn: VerifyFn = verify_block,
) -> BlockSamples:
    """Run the block algorithm on ``num_samples`` independent rows until each has ``n`` tokens.

    ``rule_on_tempered`` and ``verify_fn`` exist so tests can build deliberately wrong variants.
    """
    if gamma < 1 or n < 1 or num_samples < 1:
        raise ValueError("gamma, n and num_samples must be >= 1")
    sampling = Sampling() if sampling is None else sampling
    width = n + 2 * (gamma + 1)
    out = torch.full((num_samples, width), PAD, dtype=torch.long)
    length = torch.zeros(num_samples, dtype=torch.long)
    calls = torch.zeros(num_samples, dtype=torch.long)
    first_accepted = torch.full((num_samples,), -1, dtype=torch.long)
    rows = torch.arange(num_samples)
    while bool((length < n).any()):
        active = length < n
        buf, cur = out.clone(), length.clone()
        q_raw, p_raw, drafts = [], [], []
        for j in range(gamma + 1):
            qr, pr = draft_lm.batch(buf, cur), target_lm.batch(buf, cur)
            q_raw.append(qr)
            p_raw.append(pr)
            if j < gamma:
                u = torch.rand(num_samples, generator=generator, dtype=qr.dtype)
                d = sample_categorical(sampling.apply(qr), u)
                drafts.append(d)
                buf[rows, cur] = d
                cur = cur + 1
        q_rule, p_rule = torch.stack(q_raw, 1), torch.stack(p_raw, 1)
        q, p = sampling.apply(q_rule), sampling.apply(p_rule)
        if rule_on_tempered:
            q_rule, p_rule = q, p
        res = verify_fn(
            torch.stack(drafts, 1), q, p, rule, q_rule=q_rule, p_rule=p_rule, bonus=bonus,
            generator=generator, validate=False,
        )
        for j in range(gamma + 1):
            write = active & (j < res.num_emitted)
            pos = (length + j).clamp(max=width - 1)
            out[rows[write], pos[write]] = res.tokens[write, j]
        first_accepted = torch.where(active & (first_accepted < 0), res.accepted, first_accepted)
        length = torch.where(active, length + res.num_emitted, length)
        calls = calls + active.long()
    return BlockSamples(out[:, :n], calls, first_accepted)
