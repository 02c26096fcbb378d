"""Deferral heads: identical features from logs and from live distributions, the DeferralHead protocol,
scikit-learn baselines and their exact export, and safetensors + JSON export / import with clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from specref import heads, rules
from specref.heads import CascadeHead, FeatureSpec, HeadFormatError, TokenHead
from specref.heads.features import context_features, live_summary, token_features
from specref.logs import LogLayout, read_logs, summarize
from specref.logs.evaluate import head_estimates
from specref.logs.synthetic import synthetic_logs, write_summary

ROOT = Path(__file__).resolve().parents[1]
V = 30


def _dists(n=40, vocab=V, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(torch.randn(2, n // 2, vocab, generator=g) * 3, -1)
    p = torch.softmax(torch.randn(2, n // 2, vocab, generator=g) * 3, -1)
    q[0, 0] = p[0, 0]  # a TV = 0 position
    return q, p


def _mlp(head_cls, spec, seed, hidden=(8,)):
    torch.manual_seed(seed)
    head = head_cls(spec, body={"type": "mlp", "in_dim": spec.dim, "out_dim": head_cls.out_dim,
                                "hidden": list(hidden)})
    with torch.no_grad():
        head.scaler.mean.normal_(0, 0.1)
        head.scaler.scale.uniform_(0.5, 2.0)
        for prm in head.body.parameters():
            prm.normal_(0, 0.7)
    return head.eval()


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """Live distributions and the same positions after a round trip through the log files."""
    q, p = _dists()
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 20, 6, generator=g)
    ref = torch.randint(V, (2, 20), generator=g)
    s = summarize(q.reshape(-1, V), p.reshape(-1, V), top_k=8, reference=ref.reshape(-1), alphas=(0.0,))
    s["draft_hidden"] = hidden.reshape(-1, 6)
    s["example_index"] = torch.arange(40) // 10
    s["example_id"] = [f"e{i // 10}" for i in range(40)]
    s["position"] = torch.arange(40) % 10
    layout = LogLayout(top_k=8, vocab_size=V, tail_points=33, alphas=(0.0,), hidden={"draft_hidden": 6})
    d = tmp_path_factory.mktemp("logs") / "logs"
    write_summary(d, s, layout)
    return q, p, hidden, read_logs(d)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_features_from_logs_equal_live_features(logged, k):
    q, p, hidden, log = logged
    spec = FeatureSpec("cascade", k=k, hidden=("draft_hidden",), hidden_dims=(6,))
    live = context_features(live_summary(spec, q, p), spec, {"draft_hidden": hidden})
    offline = context_features(log, spec)
    assert torch.equal(live.reshape(-1, spec.dim), offline)
    tspec = FeatureSpec("token", k=k, candidates=min(k, 5))
    ids_l, x_l, valid_l = token_features(live_summary(tspec, q, p), tspec)
    ids_o, x_o, valid_o = token_features(log, tspec)
    assert torch.equal(ids_l.reshape(ids_o.shape), ids_o) and torch.equal(valid_l.reshape(valid_o.shape), valid_o)
    assert torch.equal(x_l.reshape(x_o.shape), x_o)


def test_heads_give_the_same_estimates_offline_and_live(logged):
    q, p, hidden, log = logged
    spec = FeatureSpec("cascade", k=4, hidden=("draft_hidden",), hidden_dims=(6,))
    head = _mlp(CascadeHead, spec, 0)
    assert head.wants_hidden
    live = head.estimate(q, p, q, p, features={"draft_hidden": hidden})
    assert live.shape == (2, 20, 2)
    assert torch.allclose(live.reshape(-1, 2), head_estimates(head, log), atol=1e-6)
    with pytest.raises(ValueError, match="draft_hidden"):
        head.estimate(q, p)
    tspec = FeatureSpec("token", k=4, candidates=5)
    thead = _mlp(TokenHead, tspec, 1)
    est = thead.estimate(q, p)
    assert est.shape == q.shape
    # Offline scores on the log's (wider) candidate set, scattered back onto the vocabulary.
    scores = head_estimates(thead, log)
    ids = torch.cat([log["q_topk_ids"], log["p_topk_ids"]], -1)
    dense = torch.zeros(40, V).scatter_reduce(-1, ids, scores, reduce="amax")
    assert torch.allclose(est.reshape(-1, V), dense, atol=1e-6)
    # Outside the candidate set a token head scores 0 (never the best guess).
    outside = est.reshape(-1, V) == 0
    assert int(outside.sum(-1).min()) >= V - 10


@pytest.mark.parametrize("kind", ["cascade", "token"])
def test_learned_rule_accepts_heads_and_plain_modules(kind):
    q, p = _dists()
    spec = FeatureSpec(kind, k=4, candidates=4 if kind == "token" else 0)
    head = _mlp(CascadeHead if kind == "cascade" else TokenHead, spec, 2)
    rule = rules.get("learned", head=head, alpha=0.2)
    out = rule(q, p)
    assert rule.token_level == (kind == "token")
    assert out.defer.shape == (q.shape if kind == "token" else q.shape[:-1])
    assert torch.allclose(out.pi.sum(-1), torch.ones(2, 20), atol=1e-5)
    assert isinstance(head, torch.nn.Module)


def test_heads_import_without_lightning_or_sklearn():
    code = ("import sys; import specref.heads, specref.logs.offline; "
            "bad = [m for m in ('lightning', 'pytorch_lightning', 'sklearn', 'pyarrow') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---- export / import --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,hidden", [("cascade", (8, 8)), ("cascade", ()), ("token", (4,))])
def test_save_load_round_trip(tmp_path, kind, hidden):
    q, p = _dists()
    spec = FeatureSpec(kind, k=3, candidates=6 if kind == "token" else 0)
    head = _mlp(CascadeHead if kind == "cascade" else TokenHead, spec, 3, hidden)
    heads.save(head, tmp_path / "h")
    back = heads.load(tmp_path / "h")
    assert type(back) is type(head) and back.config() == head.config()
    assert torch.equal(back.estimate(q, p), head.estimate(q, p))
    for a in (0.0, 0.3):
        r1 = rules.get("learned", head=heads.load(tmp_path / "h" / "head.json"), alpha=a)(q, p)
        r2 = rules.get("learned", head=head, alpha=a)(q, p)
        assert torch.equal(r1.defer, r2.defer)


def test_corrupt_or_mismatched_heads_are_clear_errors(tmp_path):
    head = _mlp(CascadeHead, FeatureSpec("cascade", k=3), 0)
    good = heads.save(head, tmp_path / "good")

    def copy(name):
        import shutil

        return Path(shutil.copytree(good, tmp_path / name))

    d = copy("truncated")
    blob = (d / "head.safetensors").read_bytes()
    (d / "head.safetensors").write_bytes(blob[:-7])
    with pytest.raises(HeadFormatError, match="truncated"):
        heads.load(d)
    d = copy("flipped")
    blob = bytearray(blob)
    blob[-3] ^= 0x40
    (d / "head.safetensors").write_bytes(bytes(blob))
    with pytest.raises(HeadFormatError, match="corrupt"):
        heads.load(d)
    d = copy("badjson")
    (d / "head.json").write_text("{not json")
    with pytest.raises(HeadFormatError, match="not valid JSON"):
        heads.load(d)
    d = copy("noweights")
    (d / "head.safetensors").unlink()
    with pytest.raises(HeadFormatError, match="missing"):
        heads.load(d)
    d = copy("mismatch")  # config says a wider MLP than the weights hold
    doc = json.loads((d / "head.json").read_text())
    doc["config"]["body"]["hidden"] = [9]
    (d / "head.json").write_text(json.dumps(doc))
    with pytest.raises(HeadFormatError, match="config"):
        heads.load(d)
    d = copy("garbage")  # checksum matches but the bytes are not safetensors
    junk = b"\x00" * 64
    (d / "head.safetensors").write_bytes(junk)
    doc = json.loads((d / "head.json").read_text())
    import hashlib

    doc["weights"].update(sha256=hashlib.sha256(junk).hexdigest(), bytes=len(junk))
    (d / "head.json").write_text(json.dumps(doc))
    with pytest.raises(HeadFormatError, match="not valid safetensors"):
        heads.load(d)
    with pytest.raises(HeadFormatError, match="not a saved head"):
        heads.load(tmp_path / "nothing.bin")


# ---- scikit-learn baselines -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth():
    s, _ = synthetic_logs(60, positions=10, vocab=16, top_k=8, seed=7, alphas=())
    return s


@pytest.mark.parametrize("model", ["logreg", "gbt"])
@pytest.mark.parametrize("kind,loss", [("cascade", "argmax"), ("cascade", "sampled"), ("token", "argmax")])
def test_sklearn_heads_export_exactly(tmp_path, synth, model, kind, loss):
    spec = FeatureSpec(kind, k=4, candidates=4 if kind == "token" else 0)
    params = {"n_estimators": 15, "max_depth": 3} if model == "gbt" else {}
    fitted = heads.fit_sklearn_head(synth, spec, model, loss=loss, max_rows=3000, **params)
    x, _ = heads.training_arrays(synth, spec, loss)
    want = torch.from_numpy(fitted.predict_proba(x.numpy())).float()
    exported = heads.load(heads.save(fitted.to_torch(), tmp_path / "h"))
    with torch.no_grad():
        got = exported.predict(x) if kind == "cascade" else exported.predict(x.unsqueeze(-2))
    assert torch.allclose(got.reshape(want.shape), want, atol=2e-6 if model == "gbt" else 2e-5)
    # The live adapter is itself a DeferralHead and decides like its export.
    q, p = _dists(vocab=16)
    for a in (0.05, 0.3):
        live = rules.get("learned", head=fitted, alpha=a).decide(q, p, q, p)
        torch_rule = rules.get("learned", head=exported, alpha=a).decide(q, p, q, p)
        assert float((live != torch_rule).float().mean()) < 0.01


def test_gradient_boosting_tree_layout_matches_sklearn_exactly(synth):
    spec = FeatureSpec("cascade", k=4)
    fitted = heads.fit_sklearn_head(synth, spec, "gbt", n_estimators=30, max_depth=4, learning_rate=0.2)
    x, _ = heads.training_arrays(synth, spec)
    head = fitted.to_torch()
    raw = torch.stack([torch.from_numpy(e.decision_function(x.numpy())) for e in fitted.estimators], -1)
    with torch.no_grad():
        assert torch.allclose(head.logits(x).double(), raw, atol=1e-5)


def test_constant_target_gives_a_constant_head(synth):
    s = dict(synth)
    s["p_argmax"] = s["reference"]  # the target is always right: its loss never varies
    fitted = heads.fit_sklearn_head(s, FeatureSpec("cascade", k=4), "logreg")
    x, _ = heads.training_arrays(s, FeatureSpec("cascade", k=4))
    with torch.no_grad():
        probs = fitted.to_torch().predict(x)
    assert float(probs[:, 1].max()) < 1e-5
    assert np.allclose(fitted.predict_proba(x.numpy())[:, 1], 0.0)
