"""Saved heads that must be refused: non-finite weights, a weights file outside the head's folder; a head
whose estimates turn non-finite at decode time; atomic saves with unique temporary names."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from specref import heads, rules
from specref.cli import main
from specref.heads import CascadeHead, FeatureSpec, HeadFormatError, TokenHead
from specref.logs.synthetic import synthetic_logs, write_summary


def _head(kind: str = "cascade"):
    spec = FeatureSpec(kind, k=3, candidates=4 if kind == "token" else 0)
    head = (CascadeHead if kind == "cascade" else TokenHead)(spec)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for prm in head.parameters():
            prm.copy_(0.3 * torch.randn(prm.shape, generator=gen))
    return head


def _dists(n: int = 5, vocab: int = 12):
    gen = torch.Generator().manual_seed(1)
    q = torch.softmax(2 * torch.randn(n, vocab, generator=gen), -1)
    p = torch.softmax(2 * torch.randn(n, vocab, generator=gen), -1)
    return q, p


def _rewrite_weights(directory: Path, state: dict[str, torch.Tensor], file: str = "head.safetensors") -> None:
    """Write ``state`` as the head's weights with a matching checksum (a consistent but bad head)."""
    blob = st_save(state)
    (directory / file).write_bytes(blob)
    doc = json.loads((directory / "head.json").read_text())
    doc["weights"].update(file=file, sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob))
    (directory / "head.json").write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    s, layout = synthetic_logs(6, positions=5, vocab=16, top_k=8, seed=3)
    return write_summary(tmp_path_factory.mktemp("logs") / "logs", s, layout, examples_per_shard=3)


@pytest.mark.parametrize("kind", ["cascade", "token"])
@pytest.mark.parametrize("value,tensor", [(float("nan"), "body.net.0.weight"), (float("inf"), "scaler.mean")])
def test_non_finite_weights_are_refused_on_load_and_by_evaluate(tmp_path, capsys, logs, kind, value, tensor):
    d = heads.save(_head(kind), tmp_path / "bad")
    state = {k: v.clone() for k, v in _head(kind).state_dict().items()}
    state[tensor].view(-1)[0] = value
    _rewrite_weights(d, state)
    with pytest.raises(HeadFormatError, match=rf"{tensor} holds 1 non-finite"):
        heads.load(d)
    out = tmp_path / "eval"
    rc = main(["evaluate", "--logs", str(logs), "--head", f"h={d}", "--alphas", "0,0.5", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and tensor in err and "non-finite" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_zero_scale_is_refused(tmp_path):
    d = heads.save(_head(), tmp_path / "h")
    state = {k: v.clone() for k, v in _head().state_dict().items()}
    state["scaler.scale"][1] = 0.0
    _rewrite_weights(d, state)
    with pytest.raises(HeadFormatError, match="scaler.scale has zeros"):
        heads.load(d)


@pytest.mark.parametrize("name", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/../../x", ""])
def test_weights_file_must_stay_inside_the_head_folder(tmp_path, capsys, logs, name):
    head = _head()
    d = heads.save(head, tmp_path / "h")
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((d / "head.safetensors").read_bytes())  # a valid file, so only the path is wrong
    doc = json.loads((d / "head.json").read_text())
    doc["weights"]["file"] = name
    (d / "head.json").write_text(json.dumps(doc))
    with pytest.raises(HeadFormatError, match="weights file"):
        heads.load(d)
    out = tmp_path / "eval"
    rc = main(["evaluate", "--logs", str(logs), "--head", f"h={d}", "--alphas", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "weights file" in err and "Traceback" not in err
    assert not out.exists()


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
    d = heads.save(_head(), tmp_path / "h")
    real = tmp_path / "elsewhere.safetensors"
    os.replace(d / "head.safetensors", real)
    (d / "head.safetensors").symlink_to(real)
    with pytest.raises(HeadFormatError, match="resolves outside"):
        heads.load(d)


@pytest.mark.parametrize("kind", ["cascade", "token"])
def test_non_finite_estimates_at_decode_time_raise(kind):
    head = _head(kind)
    q, p = _dists()
    rule = rules.get("learned", head=head, alpha=0.2)
    rule(q, p)  # finite: decides
    with torch.no_grad():
        head.body.net[0].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match=f"the {kind} deferral head produced .* non-finite"):
        rule(q, p)


def test_sklearn_head_checks_its_estimates_too():
    from specref.heads import SklearnHead

    class NaNModel:
        def predict_proba(self, x):
            import numpy as np

            return np.full((len(x), 2), np.nan)

    spec = FeatureSpec("cascade", k=3)
    head = SklearnHead(spec, [NaNModel(), NaNModel()], model="logreg")
    q, p = _dists()
    with pytest.raises(ValueError, match="non-finite"):
        rules.get("learned", head=head, alpha=0.1)(q, p)


def test_saves_are_atomic_with_unique_temp_names(tmp_path, monkeypatch):
    d = heads.save(_head(), tmp_path / "h")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    names = []
    real_replace = os.replace

    def failing_replace(src, dst):
        names.append(Path(src).name)
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    for _ in range(2):
        with pytest.raises(OSError, match="disk full"):
            heads.save(_head(), d)
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(set(names)) == 2 and all(n.startswith(".head.safetensors.tmp-") for n in names)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # no temp left, the old head intact
    assert heads.load(d) is not None


def test_saving_onto_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    with pytest.raises(HeadFormatError, match="not a folder"):
        heads.save(_head(), f)
    assert f.read_text() == "keep me"


def test_saving_a_head_with_non_finite_weights_is_refused(tmp_path):
    head = _head()
    with torch.no_grad():
        head.body.net[0].weight[0, 1] = float("nan")
    with pytest.raises(HeadFormatError, match="body.net.0.weight holds non-finite"):
        heads.save(head, tmp_path / "h")
    assert not (tmp_path / "h").exists()
