"""Logged probabilities: summaries against full-vocabulary math, the offline objective against the exact one,
atomic sharded storage (round trip, resume, crash injection, corruption), and teacher-forced / on-policy
logging of tiny Hugging Face pairs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from specref import rules
from specref.heads import CascadeHead, FeatureSpec, TokenHead
from specref.heads.features import candidate_set
from specref.logs import LogFormatError, LogLayout, LogWriter, open_logs, read_logs, summarize
from specref.logs.evaluate import evaluate, head_estimates
from specref.logs.offline import (
    cascade_decisions,
    cascade_outcome,
    interpolate_tail,
    learned_token_decisions,
    token_outcome_candidates,
    token_outcome_exact,
)
from specref.logs.store import LogBusyError
from specref.logs.synthetic import synthetic_logs, write_summary
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


# ---- storage -----------------------------------------------------------------------------------------------


def _synthetic(n_examples=12, seed=3):
    return synthetic_logs(n_examples, positions=5, vocab=12, top_k=4, seed=seed, alphas=(0.0, 0.5))


def test_round_trip_is_bit_exact(tmp_path):
    s, layout = _synthetic()
    write_summary(tmp_path / "logs", s, layout, examples_per_shard=5)
    logs = open_logs(tmp_path / "logs")
    assert logs.finished and logs.layout == layout and logs.num_rows == 60
    back = logs.to_torch()
    for name, value in s.items():
        if name == "example_id":
            assert back[name] == value
        else:
            assert torch.equal(back[name].to(value.dtype), value), name
    manifest = json.loads((tmp_path / "logs" / "manifest.json").read_text())
    assert [sh["examples"] for sh in manifest["shards"]] == [[[0, 5]], [[5, 10]], [[10, 12]]]
    assert sum(sh["rows"] for sh in manifest["shards"]) == 60


def test_writer_skips_completed_examples_and_refuses_other_jobs(tmp_path):
    s, layout = _synthetic()
    d = tmp_path / "logs"
    with LogWriter(d, layout, source={"job": 1}, examples_per_shard=4) as w:
        w.add_example(0, "a", _rows(s, 0))
        w.add_example(1, "b", _rows(s, 1))
    with LogWriter(d, layout, source={"job": 1}, examples_per_shard=4) as w:
        assert w.pending(range(4)) == [2, 3]
        with pytest.raises(ValueError, match="already logged"):
            w.add_example(1, "b", _rows(s, 1))
        with pytest.raises(LogBusyError, match="another process"):
            LogWriter(d, layout, source={"job": 1})
    with pytest.raises(ValueError, match="different job"):
        LogWriter(d, layout, source={"job": 2})
    other = LogLayout(top_k=3, vocab_size=12, tail_points=33)
    with pytest.raises(ValueError, match="different job"):
        LogWriter(d, other, source={"job": 1})
    with pytest.raises(ValueError, match="missing column"):
        with LogWriter(d, layout, source={"job": 1}) as w:
            w.add_example(5, "x", {"position": np.zeros(2)})
    assert open_logs(d).num_rows == 10


def _rows(s, ex):
    from specref.logs.schema import columns

    sel = (s["example_index"] == ex).nonzero().squeeze(-1)
    return {c.name: s[c.name][sel] for c in columns(_synthetic()[1]) if c.name not in ("example_index", "example_id")}


# A writer job the crash tests run in a subprocess (numpy + pyarrow only, so it starts fast). ``MODE`` picks
# where it SIGKILLs itself; "slow" is killed by the test from outside at an arbitrary point.
_JOB = textwrap.dedent(
    """
    import os, signal, sys, tempfile, time
    import numpy as np
    sys.path.insert(0, {root!r})
    from specref.logs import store
    from specref.logs.schema import LogLayout

    mode, out, data = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
    layout = LogLayout(top_k=4, vocab_size=12, tail_points=33, alphas=(0.0, 0.5))
    names = [n for n in data.files if n != "example_index"]
    calls = {{"shard": 0}}
    real_commit, real_write = store._commit, store._write_file

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def commit(tmp, path):
        is_shard = path.name.startswith("shard-")
        calls["shard"] += is_shard
        if mode == "before_rename" and is_shard and calls["shard"] == 2:
            die()
        if mode == "before_manifest" and not is_shard and calls["shard"] == 2:
            die()
        real_commit(tmp, path)
        if mode == "after_rename" and is_shard and calls["shard"] == 2:
            die()

    def write(path, data):
        if mode == "partial" and path.name.startswith("shard-") and calls["shard"] == 1:
            fd, _ = tempfile.mkstemp(prefix=f".{{path.name}}.tmp-", dir=path.parent)
            with open(fd, "wb") as h:
                h.write(data[: len(data) // 2])
                h.flush()
                os.fsync(h.fileno())
            die()
        real_write(path, data)

    store._commit, store._write_file = commit, write
    with store.LogWriter(out, layout, source={{"job": "crash"}}, examples_per_shard=4) as w:
        for ex in w.pending(range(12)):
            sel = data["example_index"] == ex
            w.add_example(ex, f"syn{{ex}}", {{n: data[n][sel] for n in names}})
            if mode == "slow":
                print(ex, flush=True)
                time.sleep(0.05)
        w.finish()
    """
)


@pytest.fixture(scope="module")
def job_rows(tmp_path_factory):
    s, layout = _synthetic()
    path = tmp_path_factory.mktemp("rows") / "rows.npz"
    arrays = {name: v.numpy() for name, v in s.items() if name != "example_id"}
    np.savez(path, **arrays)
    return path


def _resume(d):
    s, layout = _synthetic()
    with LogWriter(d, layout, source={"job": "crash"}, examples_per_shard=4) as w:
        for ex in w.pending(range(12)):
            w.add_example(ex, f"syn{ex}", _rows(s, ex))
        w.finish()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("clean") / "logs"
    _resume(d)
    return d


@pytest.mark.parametrize("mode", ["before_rename", "after_rename", "before_manifest", "partial", "slow"])
def test_killed_writer_resumes_without_lost_or_duplicated_rows(tmp_path, mode, uninterrupted, job_rows):
    script = tmp_path / "job.py"
    script.write_text(_JOB.format(root=str(ROOT)))
    d = tmp_path / "logs"
    proc = subprocess.Popen([sys.executable, str(script), mode, str(d), str(job_rows)], stdout=subprocess.PIPE,
                            text=True)
    if mode == "slow":  # kill from outside at an arbitrary point after the first shard
        for line in proc.stdout:
            if int(line) >= 6:
                break
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        partial = open_logs(d)  # a crashed job's logs stay readable: the listed shards only
    assert not partial.finished and 0 < partial.num_rows < 60
    _resume(d)
    assert not [p for p in d.iterdir() if ".tmp-" in p.name]
    got, want = read_logs(d), read_logs(uninterrupted)
    for name in want:
        assert (got[name] == want[name]) if name == "example_id" else torch.equal(got[name], want[name]), name
    shards = lambda x: json.loads((x / "manifest.json").read_text())["shards"]  # noqa: E731
    assert shards(d) == shards(uninterrupted)  # same shard files, byte for byte


def _corrupt_copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupt_logs_are_clear_errors(tmp_path, uninterrupted):
    first = "shard-000000.parquet"
    d = _corrupt_copy(uninterrupted, tmp_path / "truncated")
    data = (d / first).read_bytes()
    (d / first).write_bytes(data[: len(data) - 100])
    with pytest.raises(LogFormatError, match="truncated"):
        open_logs(d)
    d = _corrupt_copy(uninterrupted, tmp_path / "flipped")
    blob = bytearray((d / first).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (d / first).write_bytes(bytes(blob))
    with pytest.raises(LogFormatError, match="corrupt"):
        open_logs(d)
    d = _corrupt_copy(uninterrupted, tmp_path / "missing")
    (d / first).unlink()
    with pytest.raises(LogFormatError, match="missing"):
        open_logs(d)
    d = _corrupt_copy(uninterrupted, tmp_path / "manifest")
    (d / "manifest.json").write_text('{"format": "specref-logs", "version": 1, "shards": [')
    with pytest.raises(LogFormatError, match="not valid JSON"):
        open_logs(d)
    with pytest.raises(LogFormatError, match="no manifest"):
        open_logs(tmp_path)
    # A shard that checksums fine but disagrees with the manifest (rewritten by something else).
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    for case in ("rows", "schema"):
        d = _corrupt_copy(uninterrupted, tmp_path / case)
        table = pq.read_table(d / first)
        table = table.slice(0, 3) if case == "rows" else table.drop_columns(["tv"])
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        blob = sink.getvalue().to_pybytes()
        (d / first).write_bytes(blob)
        manifest = json.loads((d / "manifest.json").read_text())
        manifest["shards"][0].update(sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob))
        (d / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(LogFormatError, match="rows" if case == "rows" else "schema"):
            open_logs(d)


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
