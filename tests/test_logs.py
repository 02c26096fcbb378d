"""Logged probabilities: summaries against full-vocabulary math, the offline objective against the exact one,
and teacher-forced / on-policy logging of tiny Hugging Face pairs (storage: test_logs_store.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specref import rules
from specref.heads import CascadeHead, FeatureSpec, TokenHead
from specref.heads.features import candidate_set
from specref.logs import open_logs, read_logs, summarize
from specref.logs.evaluate import evaluate, head_estimates
from specref.logs.offline import (
    cascade_decisions,
    cascade_outcome,
    interpolate_tail,
    learned_token_decisions,
    token_outcome_candidates,
    token_outcome_exact,
)
from specref.logs.synthetic import synthetic_logs
from specref.optimal import token_objective

ROOT = Path(__file__).resolve().parents[1]
ALPHAS = (0.0, 0.05, 0.2, 0.5, 0.9, 1.0)


def _pair(n: int, vocab: int, seed: int, sharp: float = 2.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(torch.randn(n, vocab, generator=g) * sharp, -1)
    p = torch.softmax(torch.randn(n, vocab, generator=g) * sharp, -1)
    ref = torch.multinomial(p, 1, generator=g).squeeze(-1)
    return q, p, ref


# ---- summaries and the offline objective -----------------------------------------------------------


def test_summary_matches_full_vocabulary_math():
    q, p, ref = _pair(64, 30, 0)
    s = summarize(q, p, top_k=5, reference=ref)
    q64, p64 = q.double(), p.double()
    assert torch.allclose(s["tv"].double(), (p64 - q64).clamp_min(0).sum(-1), atol=1e-6)
    assert torch.allclose(s["q_entropy"].double(), -(q64 * q64.log()).sum(-1), atol=1e-5)
    assert torch.equal(s["q_argmax"], q.argmax(-1)) and torch.equal(s["p_argmax"], p.argmax(-1))
    assert torch.equal(s["q_ref"], q.gather(-1, ref[:, None]).squeeze(-1))
    assert torch.allclose(s["qp_dot"].double(), (q64 * p64).sum(-1), atol=1e-6)
    # Tail = outside the union of both top-5 sets; the tail excess at eta is sum_tail max(0, q - eta p).
    union = torch.zeros_like(q, dtype=torch.bool)
    union.scatter_(-1, s["q_topk_ids"], True).scatter_(-1, s["p_topk_ids"], True)
    assert torch.allclose(s["q_tail"].double(), (q64 * ~union).sum(-1), atol=1e-6)
    for j, eta in enumerate(torch.linspace(0, 1, s["tail_excess"].shape[-1]).tolist()):
        want = ((q64 - eta * p64).clamp_min(0) * ~union).sum(-1)
        assert torch.allclose(s["tail_excess"][:, j].double(), want, atol=1e-6)


def test_top_k_ties_go_to_the_lower_id():
    q = torch.tensor([[0.1, 0.3, 0.3, 0.2, 0.1]])
    s = summarize(q, q.flip(-1), top_k=3)
    assert s["q_topk_ids"].tolist() == [[1, 2, 3]]
    assert s["p_topk_ids"].tolist() == [[2, 3, 1]]
    assert int(s["q_argmax"]) == int(q.argmax())


@pytest.mark.parametrize("rule", ["token_v1", "token_v2", "token_v3"])
def test_exact_token_columns_equal_the_full_objective(rule):
    q, p, ref = _pair(200, 40, 1)
    q[:5] = p[:5]  # TV = 0 rows
    s = summarize(q, p, top_k=4, reference=ref, alphas=ALPHAS)
    truth = torch.nn.functional.one_hot(ref, 40).float()
    for j, a in enumerate(ALPHAS):
        out = rules.get(rule, alpha=a)(q, p)
        o = token_outcome_exact(s, rule, j)
        full = token_objective(truth, q, p, out.defer, a).double()
        assert torch.allclose(o.l_spec(a, "sampled"), full, atol=1e-5)
        assert torch.allclose(o.rejection, out.rejection_rate(q).double(), atol=1e-5)
        assert torch.allclose(o.defer, (q * out.defer).sum(-1).double(), atol=1e-5)
        assert torch.equal(o.loss_argmax.bool(), out.pi.argmax(-1) != ref)


def _random_token_head(spec: FeatureSpec, seed: int) -> TokenHead:
    torch.manual_seed(seed)
    head = TokenHead(spec, body={"type": "mlp", "in_dim": spec.dim, "out_dim": 1, "hidden": [8]})
    with torch.no_grad():
        for prm in head.parameters():
            prm.normal_(0, 1)
    return head.eval()


@pytest.mark.parametrize("top_k,vocab", [(6, 50), (3, 3 * 12), (12, 12)])
def test_candidate_objective_is_exact_up_to_the_certified_tail_bound(top_k, vocab):
    q, p, ref = _pair(300, vocab, 2)
    s = summarize(q, p, top_k=top_k, reference=ref)
    head = _random_token_head(FeatureSpec("token", k=2, candidates=min(4, top_k)), 3)
    scores = head_estimates(head, s)
    valid = candidate_set(s, top_k)[3]
    for a in (-0.1, 0.0, 0.05, 0.2, 0.5, 2.0):
        defer, tail = learned_token_decisions(scores, valid, a)
        o = token_outcome_candidates(s, defer, tail, vocab)
        live = rules.get("learned", head=head, alpha=a)(q, p)
        pi = live.pi.double()
        assert torch.allclose(o.defer, (q * live.defer).sum(-1).double(), atol=1e-6)
        assert torch.allclose(o.loss_sampled, 1 - pi.gather(-1, ref[:, None]).squeeze(-1), atol=1e-6)
        err = (o.rejection - live.rejection_rate(q).double()).abs()
        assert bool((err <= o.rejection_bound + 2e-6).all()), float((err - o.rejection_bound).max())
        wrong = (o.loss_argmax.bool() != (pi.argmax(-1) != ref)) & ~o.argmax_uncertain
        assert not bool(wrong.any())
        if top_k == vocab:  # no tail: everything exact
            assert float(o.rejection_bound.max()) == 0.0 and not bool(o.argmax_uncertain.any())


def test_tail_interpolation_bounds_a_convex_function():
    g = torch.Generator().manual_seed(4)
    qt = torch.rand(50, 7, generator=g, dtype=torch.float64) * 0.01
    pt = torch.rand(50, 7, generator=g, dtype=torch.float64) * 0.01
    grid = torch.linspace(0, 1, 9, dtype=torch.float64)
    f = (qt.unsqueeze(-1) - grid * pt.unsqueeze(-1)).clamp_min(0).sum(1)
    eta = torch.rand(50, generator=g, dtype=torch.float64)
    est, half = interpolate_tail(f, eta, qt.sum(-1), pt.sum(-1))
    true = (qt - eta[:, None] * pt).clamp_min(0).sum(-1)
    assert bool(((est - true).abs() <= half + 1e-12).all())
    assert bool((half <= pt.sum(-1) / (8 * (9 - 1)) + 1e-15).all())  # the documented worst case
    _, half0 = interpolate_tail(f, grid[torch.arange(50) % 9], qt.sum(-1), pt.sum(-1))
    assert float(half0.max()) < 1e-12  # exact at grid points


def test_cascade_decisions_match_the_rules():
    q, p, ref = _pair(300, 20, 5)
    q[:10] = p[:10]
    s = summarize(q, p, top_k=4, reference=ref)
    head = CascadeHead(FeatureSpec("cascade", k=4))
    est = head_estimates(head, s)
    for a in (-1.0, 0.0, 0.3, 1.0, 5.0, float("inf")):
        for name in ("chow", "diff", "opt"):
            assert torch.equal(cascade_decisions(name, s, a), rules.get(name, alpha=a).decide(q, p, q, p).bool())
        learned = rules.get("learned", head=head, alpha=a).decide(q, p, q, p).bool()
        assert torch.equal(cascade_decisions("learned", s, a, estimates=est), learned)
    # The oracle minimises L_spec row by row.
    for loss in ("argmax", "sampled"):
        for a in (0.0, 0.5, 2.0):
            best = cascade_outcome(cascade_decisions("oracle", s, a, loss=loss), s).l_spec(a, loss)
            for name in ("chow", "diff", "opt", "draft", "specdecode"):
                other = cascade_outcome(cascade_decisions(name, s, a), s).l_spec(a, loss)
                assert bool((best <= other + 1e-12).all())


def test_evaluate_table_has_every_method():
    s, layout = synthetic_logs(20, positions=10, vocab=12, top_k=4, seed=0, alphas=(0.0, 0.5))
    heads = {"c": CascadeHead(FeatureSpec("cascade", k=4)), "t": _random_token_head(FeatureSpec("token", 2, 3), 0)}
    rows = evaluate(s, [0.0, 0.5, 0.7], heads=heads, log_alphas=layout.alphas, vocab_size=12)
    methods = {r["method"] for r in rows}
    assert methods == {"draft", "specdecode", "chow", "diff", "opt", "oracle", "token_v1", "token_v2", "token_v3",
                       "c", "t"}
    assert not [r for r in rows if r["method"].startswith("token_v") and r["alpha"] == 0.7]  # off the log grid
    oracle = {(r["alpha"], r["loss"]): r["l_spec"] for r in rows if r["method"] == "oracle"}
    for r in rows:
        if r["kind"] == "cascade":
            assert r["l_spec"] >= oracle[(r["alpha"], r["loss"])] - 1e-12


# ---- logging tiny Hugging Face pairs ----------------------------------------------------------------------


def _examples(n, vocab, seed, prompt_len=(2, 6), completion_len=(0, 7)):
    from specref.logs.teacher import LogExample

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        lp = int(torch.randint(*prompt_len, (1,), generator=g))
        lc = int(torch.randint(*completion_len, (1,), generator=g))
        out.append(LogExample(i, f"ex{i}", tuple(torch.randint(2, vocab, (lp,), generator=g).tolist()),
                              tuple(torch.randint(2, vocab, (lc,), generator=g).tolist())))
    return out


@pytest.fixture(scope="module", params=["llama", "t5"])
def tiny(request):
    from specref.decode.testing import tiny_pair

    draft, target = tiny_pair(request.param, vocab=24, seed=0, draft_noise=0.5)
    return request.param, draft, target


def test_teacher_forced_logs_match_unbatched_forwards_and_resume(tiny, tmp_path):
    from specref.logs.teacher import _teacher_forward, log_teacher_forced

    family, draft, target = tiny
    exs = _examples(8, 24, 1)
    kw = dict(top_k=6, batch_size=2, examples_per_shard=2, hidden=("draft", "target"), progress=False,
              alphas=(0.0, 0.3))
    log_teacher_forced(draft, target, exs[:4], tmp_path / "part", **kw)
    log_teacher_forced(draft, target, exs, tmp_path / "part", **kw)  # resumes: only examples 4..7 are new
    log_teacher_forced(draft, target, exs, tmp_path / "full", **kw)
    got, want = read_logs(tmp_path / "part"), read_logs(tmp_path / "full")
    assert got["example_index"].shape[0] == sum(len(e.completion) for e in exs)
    for name in want:
        assert (got[name] == want[name]) if name == "example_id" else torch.equal(got[name], want[name]), name
    # Each example's rows equal those of an unbatched forward over that example alone.
    for e in exs:
        if not e.completion:
            continue
        q, hq = _teacher_forward(draft, [e], 24, True)
        p, _ = _teacher_forward(target, [e], 24, False)
        ref = summarize(q[0], p[0], top_k=6, reference=torch.tensor(e.completion))
        sel = got["example_index"] == e.index
        assert torch.equal(got["reference"][sel], torch.tensor(e.completion))
        assert torch.equal(got["position"][sel], torch.arange(len(e.completion)))
        for name in ("q_max", "p_max", "tv", "q_entropy", "p_ref", "q_tail"):
            assert torch.allclose(got[name][sel], ref[name], atol=2e-5), name
        assert torch.allclose(got["draft_hidden"][sel], hq[0], atol=1e-5)


def test_on_policy_logs_follow_the_decoded_path(tiny, tmp_path):
    """On-policy rows are the decoder's own distributions: teacher-forcing the decoded tokens reproduces them."""
    from specref.decode import SpecCascadeDecoder
    from specref.logs.teacher import LogExample, log_on_policy, log_teacher_forced

    family, draft, target = tiny
    prompts = [e for e in _examples(5, 24, 2, prompt_len=(2, 5)) if e.prompt]
    log_on_policy(draft, target, prompts, tmp_path / "onp", rule="token_v3", alpha=0.3, gamma=3, max_new_tokens=7,
                  top_k=6, batch_size=3, examples_per_shard=2, seed=11, progress=False, hidden=("draft", "target"))
    logs = open_logs(tmp_path / "onp")
    assert logs.layout.on_policy and not logs.layout.reference
    onp = logs.to_torch()
    # Decode the same rows alone (the decoder's output depends only on each row's prompt and seed).
    dec = SpecCascadeDecoder(draft, target, rules.get("token_v3", alpha=0.3), 3)
    completions = []
    for e in prompts:
        out = dec.generate(torch.tensor([e.prompt]), max_new_tokens=7, seed=[11 + e.index])
        completions.append(LogExample(e.index, e.id, e.prompt, tuple(out.token_lists()[0])))
    log_teacher_forced(draft, target, completions, tmp_path / "tf", top_k=6, batch_size=1, progress=False,
                       alphas=(), hidden=("draft", "target"))
    tf = read_logs(tmp_path / "tf")
    assert torch.equal(onp["example_index"], tf["example_index"]) and torch.equal(onp["position"], tf["position"])
    for name in ("q_max", "p_max", "tv", "q_entropy", "p_entropy", "draft_hidden", "target_hidden"):
        assert torch.allclose(onp[name], tf[name], atol=1e-4), name
    assert torch.equal(onp["q_topk_ids"][:, 0], tf["q_topk_ids"][:, 0])
    drafted = onp["drafted"]
    assert bool(((drafted >= -1) & (drafted < 24)).all()) and bool((drafted >= 0).any())


def test_log_cli_on_a_task(tmp_path):
    """`specref log --draft --target --tokenizer` on real task data with tiny models and the zoo tokenizer."""
    from transformers import AutoTokenizer

    from specref.cli import main
    from specref.decode.testing import tiny_model

    tok_dir = ROOT / "specref" / "zoo" / "pairs" / "stdlib-doc-t5" / "tokenizer"
    if not tok_dir.is_dir():
        pytest.skip("zoo tokenizer not present")
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    for role, seed in (("draft", 1), ("target", 0)):
        tiny_model("t5", vocab=len(tok), hidden=8, layers=1, heads=2, seed=seed).save_pretrained(tmp_path / role)
    args = ["log", "--draft", str(tmp_path / "draft"), "--target", str(tmp_path / "target"), "--tokenizer",
            str(tok_dir), "--task", "summarization", "--split", "validation", "--max-examples", "3",
            "--top-k", "4", "--batch-size", "2", "--out", str(tmp_path / "logs"), "--no-progress"]
    assert main(args) == 0
    logs = open_logs(tmp_path / "logs")
    assert logs.finished and logs.layout.vocab_size == len(tok) and logs.num_rows > 0
    assert logs.source["task"] == "summarization" and logs.source["mode"] == "teacher_forced"
    assert main(["log", "--draft", str(tmp_path / "nowhere"), "--target", "x", "--task", "summarization",
                 "--out", str(tmp_path / "o")]) == 2  # a missing model is a one-line error, never a download
