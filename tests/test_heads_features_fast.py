"""The learned rule's fast feature path gives exactly the values of the plain implementations it replaced.

The references below are the straightforward forms (a stable top-k by cumulative tie counts, whole-tensor
float64 entropies and TV, an out-of-place scatter, ``max(...).values``): every field, estimate and decision of
the fast path must equal them bit for bit, on inputs with ties (also across the top-k boundary and the
prefilter's block boundaries), zeros, one-hots, TV = 0, reduced precision, odd memory layouts, every block
split of the rows and one or two threads.
"""

from __future__ import annotations

import pytest
import torch
from test_heads import _mlp

from specref import dists, position_summary, rules
from specref.dists import stable_top_k, tv
from specref.heads import CascadeHead, FeatureSpec, MixtureHead, TokenHead
from specref.heads.features import context_features, token_features
from specref.position_summary import summarize

_TINY = 1e-30


# ---- references: the plain implementations ---------------------------------------------------------------


def _ref_stable_top_k(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    v = x.shape[-1]
    k = min(int(k), v)
    kth = torch.topk(x, k, dim=-1).values[..., k - 1 :]
    above = x > kth
    tied = x == kth
    room = k - above.sum(dim=-1, keepdim=True)
    chosen = above | (tied & (torch.cumsum(tied, dim=-1) <= room))
    index = torch.arange(v, device=x.device).expand(x.shape)
    ids = torch.topk(torch.where(chosen, index, v), k, dim=-1, largest=False).values
    values = x.gather(-1, ids)
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices
    return ids.gather(-1, order), values.gather(-1, order)


def _ref_head_summary(q: torch.Tensor, p: torch.Tensor, top_k: int) -> dict[str, torch.Tensor]:
    """The head fields of ``summarize`` as whole-tensor expressions."""
    k = min(top_k, q.shape[-1])
    q64, p64 = q.double(), p.double()
    q_ids, q_top = _ref_stable_top_k(q, k)
    p_ids, p_top = _ref_stable_top_k(p, k)
    out = {
        "q_topk_ids": q_ids, "q_topk_probs": q_top, "p_topk_ids": p_ids, "p_topk_probs": p_top,
        "p_at_q_topk": p.gather(-1, q_ids), "q_at_p_topk": q.gather(-1, p_ids),
        "q_max": q_top[..., 0], "p_max": p_top[..., 0], "q_argmax": q_ids[..., 0], "p_argmax": p_ids[..., 0],
        "q_entropy": -(q64 * torch.log(q64.clamp_min(_TINY))).sum(-1),
        "p_entropy": -(p64 * torch.log(p64.clamp_min(_TINY))).sum(-1),
        "tv": (p64 - q64).clamp_min(0).sum(-1),
    }
    return {n: v.long() if n.endswith(("_ids", "argmax")) else v.float() for n, v in out.items()}


def _ref_tv(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p - q).clamp_min(0).sum(dim=-1)


def _ref_estimate(head, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    summary = _ref_head_summary(q, p, head.spec.top_k)
    with torch.no_grad():
        if head.kind != "token":
            return head.predict(context_features(summary, head.spec))
        ids, x, valid = token_features(summary, head.spec)
        scores = head.predict(x)
        out = torch.zeros(q.shape, dtype=scores.dtype)
        return out.scatter_reduce(-1, ids, torch.where(valid, scores, 0.0), reduce="amax")


def _ref_decide(rule, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    est = _ref_estimate(rule.head, q, p)
    if rule.kind == "token":
        return est < (est.max(dim=-1).values - rule.alpha).unsqueeze(-1)
    if rule.kind == "mixture":
        return rules.mixture_weight(est, rule.alpha).to(q.dtype)
    return est[..., 0] > est[..., 1] + rules.cost_penalty(rule.alpha, _ref_tv(p, q))


# ---- inputs ----------------------------------------------------------------------------------------------


def _rows(kind: str, rows: int, v: int, g: torch.Generator) -> torch.Tensor:
    """``[rows, v]`` float32 distributions of one kind (most with ties)."""
    if kind == "dense":
        return torch.softmax(torch.randn(rows, v, generator=g) * 3, -1)
    if kind == "peaked":
        return torch.softmax(torch.randn(rows, v, generator=g) * 30, -1)
    if kind == "bf16_logits":  # equal logits give equal probabilities: ties near the top
        return torch.softmax((torch.randn(rows, v, generator=g) * 2).to(torch.bfloat16).float(), -1)
    if kind == "levels":  # a handful of probability levels: many-way ties everywhere
        x = torch.randint(0, 4, (rows, v), generator=g).float() + 1e-3
        return x / x.sum(-1, keepdim=True)
    if kind == "one_hot":
        return torch.nn.functional.one_hot(torch.randint(0, v, (rows,), generator=g), v).float()
    if kind == "uniform":
        return torch.full((rows, v), 1.0 / v)
    if kind == "sparse":  # zeros and a tie across many of them
        x = torch.zeros(rows, v)
        x[:, : min(3, v)] = torch.tensor([0.5, 0.25, 0.25][: min(3, v)])
        return x[:, torch.randperm(v, generator=g)]
    raise ValueError(kind)


KINDS = ("dense", "peaked", "bf16_logits", "levels", "one_hot", "uniform", "sparse")


def _pairs(v: int, seed: int = 0):
    """(q, p) ``[2, 6, v]`` pairs: every kind against every kind, a TV = 0 pair, mixed rows in one batch."""
    g = torch.Generator().manual_seed(seed)
    for a in KINDS:
        for b in KINDS:
            yield _rows(a, 12, v, g).view(2, 6, v), _rows(b, 12, v, g).view(2, 6, v)
    mixed_q = torch.cat([_rows(k, 2, v, g) for k in KINDS[:6]]).view(2, 6, v)
    mixed_p = torch.cat([_rows(k, 2, v, g) for k in reversed(KINDS[:6])]).view(2, 6, v)
    yield mixed_q, mixed_p
    yield mixed_q, mixed_q.clone()


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() >= b.keys()
    for name in b:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name
        if a[name].is_floating_point():
            assert torch.equal(torch.signbit(a[name]), torch.signbit(b[name])), name


# ---- stable top-k --------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [64, 1, 3])
@pytest.mark.parametrize("v", [1, 2, 7, 40, 257, 1024])
def test_stable_top_k_equals_the_reference(monkeypatch, block, v):
    """Every prefilter block size (small blocks put ties across block and top-k boundaries at small V)."""
    monkeypatch.setattr(dists, "_BLOCK", block)
    for q, p in _pairs(v):
        for x in (q, p, q[0, 0], q.transpose(0, 1), q.expand(3, -1, -1, -1), q.double(), q.to(torch.bfloat16)):
            for k in (1, 2, 4, 8, 9):
                ids, values = stable_top_k(x, k)
                ref_ids, ref_values = _ref_stable_top_k(x, k)
                assert torch.equal(ids, ref_ids) and torch.equal(values, ref_values), (k, x)
                kk = min(k, v)
                order = torch.sort(x, dim=-1, descending=True, stable=True)
                assert torch.equal(ids, order.indices[..., :kk]) and torch.equal(values, order.values[..., :kk])


@pytest.mark.parametrize("v", [1, 7, 300])
def test_tie_aware_selection_equals_the_reference(v):
    """The selection every row takes off a CPU (and a CPU row with a boundary tie): the reference's set."""
    for q, p in _pairs(v):
        for x in (q, p, q.double(), q.to(torch.bfloat16)):
            for k in range(1, min(v, 9) + 1):
                kth = torch.topk(x, k, dim=-1).values[..., k - 1 :]
                ids = dists._tie_aware_ids(x, k, kth)
                assert torch.equal(ids, _ref_stable_top_k(x, k)[0].sort(dim=-1).values)


def test_stable_top_k_boundary_ties_in_some_rows_only():
    """Rows with a tie across the top-k boundary take the tie-aware path; the others keep the fast one."""
    g = torch.Generator().manual_seed(3)
    x = torch.softmax(torch.randn(5, 4096, generator=g) * 3, -1)
    x[1, [10, 3000, 4095]] = 0.5  # a three-way tie at the top: k = 2 keeps the two lowest indices
    x[3] = 1.0 / 4096  # all tied
    x[4, :] = 0.0
    x[4, 4000] = 1.0  # one-hot: the boundary tie is among zeros
    for k in (2, 3, 8):
        ids, values = stable_top_k(x, k)
        ref_ids, ref_values = _ref_stable_top_k(x, k)
        assert torch.equal(ids, ref_ids) and torch.equal(values, ref_values)
    assert stable_top_k(x, 2)[0][1].tolist() == [10, 3000]
    assert stable_top_k(x, 3)[0][3].tolist() == [0, 1, 2]
    assert stable_top_k(x, 3)[0][4].tolist() == [4000, 0, 1]


def test_stable_top_k_prefilter_negative_control(monkeypatch):
    """A prefilter that keeps too few blocks misses a top entry, and the comparison with the reference fails."""
    x = torch.linspace(0.001, 0.01, 64)[torch.randperm(64, generator=torch.Generator().manual_seed(4))]
    x[[1, 20, 40]] = torch.tensor([0.5, 0.3, 0.2])  # the top three in three different blocks of 4
    x = x.unsqueeze(0)
    monkeypatch.setattr(dists, "_BLOCK", 4)
    assert torch.equal(stable_top_k(x, 3)[0], _ref_stable_top_k(x, 3)[0])
    real_topk = torch.topk

    def too_few_blocks(t, n, *args, **kwargs):  # the block maxima (16 of them) keep two blocks too few
        return real_topk(t, n - 2 if t.shape[-1] == 16 else n, *args, **kwargs)

    monkeypatch.setattr(torch, "topk", too_few_blocks)
    assert not torch.equal(stable_top_k(x, 3)[0], _ref_stable_top_k(x, 3)[0])


# ---- summaries ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_elements", [1 << 17, 1, 7, 24])
@pytest.mark.parametrize("threads", [1, 2])
def test_summary_equals_the_whole_tensor_expressions(monkeypatch, block_elements, threads):
    """Blocks of 2 rows up to the whole batch, a folded last row, one or two threads: the same fields."""
    monkeypatch.setattr(position_summary, "_BLOCK_ELEMENTS", block_elements)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for v in (5, 8, 300):
            for q, p in _pairs(v, seed=v):
                for qq, pp in ((q, p), (q[:, :5], p[:, :5]), (q[:1, :1], p[:1, :1]), (q[0, :3], p[0, :3])):
                    new = summarize(qq, pp, top_k=8, tail_points=None, head_fields_only=True)
                    _assert_same(new, _ref_head_summary(qq, pp, 8))
    finally:
        torch.set_num_threads(before)


def test_summary_equals_the_whole_tensor_expressions_on_odd_layouts_and_dtypes():
    g = torch.Generator().manual_seed(5)
    v = 50
    q = _rows("dense", 12, v, g).view(3, 4, v)
    p = _rows("levels", 12, v, g).view(3, 4, v)
    cases = [
        (q.transpose(0, 1), p.transpose(0, 1)),  # permuted rows, unit-stride last dimension
        (q.transpose(0, 1), p.transpose(0, 1).contiguous()),  # q and p laid out differently
        (q.mT.contiguous().mT, p.mT.contiguous().mT),  # last dimension not unit-stride
        (q.mT.contiguous().mT, p),
        (q.double(), p.double()),  # float64 input: no copy to write through
        (q.to(torch.bfloat16), p.to(torch.bfloat16)),
        (q.expand(2, -1, -1, -1), p.expand(2, -1, -1, -1)),
    ]
    for qq, pp in cases:
        q_in, p_in = qq.clone(), pp.clone()
        new = summarize(qq, pp, top_k=4, tail_points=None, head_fields_only=True)
        _assert_same(new, _ref_head_summary(qq, pp, 4))
        assert torch.equal(qq, q_in) and torch.equal(pp, p_in)  # the inputs are never written


def test_full_summary_keeps_the_whole_tensor_values():
    """The logger's summary (every field) has the same head fields as the references."""
    g = torch.Generator().manual_seed(6)
    q, p = _rows("bf16_logits", 9, 40, g), _rows("sparse", 9, 40, g)
    ref = torch.randint(0, 40, (9,), generator=g)
    full = summarize(q, p, top_k=6, reference=ref, alphas=(0.0, 0.3))
    _assert_same(full, _ref_head_summary(q, p, 6))


# ---- TV, heads and the learned rule's decisions ----------------------------------------------------------


def test_tv_equals_the_out_of_place_form_with_gradients():
    for q, p in _pairs(30):
        assert torch.equal(tv(p, q), _ref_tv(p, q))
    g = torch.Generator().manual_seed(7)
    p = torch.rand(4, 9, generator=g, requires_grad=True)
    q = torch.rand(4, 9, generator=g)
    tv(p, q).sum().backward()
    grad = p.grad.clone()
    p.grad = None
    _ref_tv(p, q).sum().backward()
    assert torch.equal(grad, p.grad)


def test_decide_scores_equals_the_max_form():
    g = torch.Generator().manual_seed(8)
    rule = rules.LearnedRule(_head_of("token"), alpha=0.1)
    scores = torch.rand(6, 40, generator=g)
    scores[0] = 0.0
    scores[1, :5] = 1.0
    scores[2] = torch.round(scores[2] * 4) / 4  # ties at the max
    scores[3, 7] = float("nan")
    for alpha in (0.0, 0.1, -0.2, 1.0, float("inf"), -float("inf")):
        rule.alpha = alpha
        assert torch.equal(rule.decide_scores(scores), scores < (scores.max(dim=-1).values - alpha).unsqueeze(-1))


def _head_of(kind: str, seed: int = 0):
    spec = FeatureSpec(kind, k=4, candidates=8 if kind == "token" else 0)
    cls = {"cascade": CascadeHead, "token": TokenHead, "mixture": MixtureHead}[kind]
    return _mlp(cls, spec, seed, hidden=(16,))


@pytest.mark.parametrize("kind", ["cascade", "token", "mixture"])
@pytest.mark.parametrize("v", [12, 300])
def test_learned_rule_decisions_equal_the_reference_path(monkeypatch, kind, v):
    """Estimates and decisions, and the round's drafted acceptance built on them, bit for bit."""
    monkeypatch.setattr(dists, "_BLOCK", 4)
    monkeypatch.setattr(position_summary, "_BLOCK_ELEMENTS", 3 * v)
    head = _head_of(kind, seed=v)
    g = torch.Generator().manual_seed(v)
    for alpha in (0.0, 0.05, 0.3):
        rule = rules.get("learned", head=head, alpha=alpha)
        for q, p in _pairs(v, seed=v):
            est = head.estimate(q, p, q, p)
            ref_est = _ref_estimate(head, q, p)
            assert torch.equal(est, ref_est)
            assert torch.equal(rule.decide(q, p, q, p), _ref_decide(rule, q, p))
            drafts = torch.randint(0, v, (2, 5), generator=g)
            defer_d, accept_d, _ = rule.drafted_acceptance(drafts, q, p, q, p)
            ref_defer = _ref_decide(rule, q, p)
            if rule.token_level:
                ref_defer_d = ref_defer[:, :5].gather(-1, drafts.unsqueeze(-1)).squeeze(-1).to(q.dtype)
            else:
                ref_defer_d = ref_defer.to(q.dtype)[:, :5]
            assert torch.equal(defer_d, ref_defer_d)
