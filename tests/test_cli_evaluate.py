"""``specref evaluate`` refuses what would give a wrong or empty table: unknown methods, bad alphas and holdout
fractions, heads named like baselines, examples counted twice, corrupt or truncated logs; each with a
one-line error, exit 2, and the output folder left as it was."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from specref import heads
from specref.cli import main
from specref.heads import CascadeHead, FeatureSpec
from specref.logs.synthetic import synthetic_logs, write_summary

SENTINEL = "an earlier result\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Logs of examples 0..9 (A), a second log sharing examples 6..9 with A (B), one disjoint from A (C)."""
    root = tmp_path_factory.mktemp("eval")
    s, layout = synthetic_logs(16, positions=4, vocab=16, top_k=8, seed=5)

    def part(lo, hi, name):
        idx = ((s["example_index"] >= lo) & (s["example_index"] < hi)).nonzero().squeeze(-1)
        sub = {k: ([v[i] for i in idx.tolist()] if isinstance(v, list) else v[idx]) for k, v in s.items()}
        return write_summary(root / name, sub, layout, examples_per_shard=3)

    head = CascadeHead(FeatureSpec("cascade", k=3))
    with torch.no_grad():
        for prm in head.parameters():
            prm.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    return {"A": part(0, 10, "A"), "B": part(6, 16, "B"), "C": part(10, 16, "C"),
            "head": heads.save(head, root / "myhead"), "root": root}


def _out(tmp_path: Path) -> Path:
    """An output folder holding an earlier result that a refused run must not touch."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "offline_eval.csv").write_text(SENTINEL)
    return out


def _refused(capsys, out: Path, argv: list[str], *needles: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("specref evaluate: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert sorted(p.name for p in out.iterdir()) == ["offline_eval.csv"]  # nothing written ...
    assert (out / "offline_eval.csv").read_text() == SENTINEL  # ... and nothing lost
    return lines[0]


def test_a_valid_run_writes_the_table(tmp_path, data, capsys):
    out = tmp_path / "ok"
    assert main(["evaluate", "--logs", str(data["A"]), str(data["C"]), "--head", f"mine={data['head']}",
                 "--alphas", "0,0.5,1", "--out", str(out)]) == 0
    with open(out / "offline_eval.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["method"] for r in rows} == {"draft", "specdecode", "chow", "diff", "opt", "token_v1", "token_v2",
                                          "token_v3", "oracle", "mine"}
    assert {int(r["rows"]) for r in rows} == {64}  # 16 examples x 4 positions, each once
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_cli_names_equal_the_library_names():
    from specref.cli.evaluate import BASELINES
    from specref.logs import evaluate as ev

    assert BASELINES == ev.BASELINES


@pytest.mark.parametrize("methods,bad", [("foo", "'foo'"), ("chow,Opt", "'Opt'"), ("chow,,opt", "''")])
def test_unknown_methods_are_refused(tmp_path, data, capsys, methods, bad):
    out = _out(tmp_path)
    _refused(capsys, out, ["evaluate", "--logs", str(data["A"]), "--methods", methods, "--out", str(out)],
             f"unknown method {bad}", "choose from draft, specdecode, chow, diff, opt, token_v1")


@pytest.mark.parametrize("alphas,bad", [("-0.5", "-0.5"), ("0,-1e-3", "-0.001")])
def test_negative_alphas_are_refused(tmp_path, data, capsys, alphas, bad):
    out = _out(tmp_path)
    _refused(capsys, out, ["evaluate", "--logs", str(data["A"]), "--alphas", alphas, "--out", str(out)],
             f"alpha {bad} is out of range", "finite number >= 0")


@pytest.mark.parametrize("alphas", ["nan", "0,inf", "x", ""])
def test_non_numbers_as_alphas_are_argument_errors(tmp_path, data, capsys, alphas):
    out = _out(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--logs", str(data["A"]), "--alphas", alphas, "--out", str(out)])
    assert exc.value.code == 2 and "--alphas" in capsys.readouterr().err
    assert (out / "offline_eval.csv").read_text() == SENTINEL


def test_alphas_above_one_are_evaluated_with_a_note(tmp_path, data, capsys):
    out = tmp_path / "above"
    assert main(["evaluate", "--logs", str(data["A"]), "--alphas", "0.5,2", "--methods", "chow,oracle",
                 "--out", str(out)]) == 0
    assert "alpha > 1 (2)" in capsys.readouterr().err
    with open(out / "offline_eval.csv") as handle:
        chow2 = [r for r in csv.DictReader(handle) if r["method"] == "chow" and float(r["alpha"]) == 2]
    assert chow2 and all(float(r["deferral_rate"]) == 0 for r in chow2)


@pytest.mark.parametrize("holdout", ["0", "1", "1.5", "-0.1", "nan"])
def test_holdout_outside_the_open_unit_interval_is_refused(tmp_path, data, capsys, holdout):
    out = _out(tmp_path)
    _refused(capsys, out, ["evaluate", "--logs", str(data["A"]), "--holdout", holdout, "--out", str(out)],
             "--holdout must be a fraction in (0, 1)")


def test_unknown_plot_loss_is_an_argument_error(tmp_path, data, capsys):
    out = _out(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--logs", str(data["A"]), "--plot-loss", "hinge", "--out", str(out)])
    assert exc.value.code == 2 and "'hinge'" in capsys.readouterr().err
    assert (out / "offline_eval.csv").read_text() == SENTINEL


@pytest.mark.parametrize("name", ["chow", "oracle", "token_v3", "specdecode"])
def test_a_head_named_like_a_baseline_is_refused(tmp_path, data, capsys, name):
    out = _out(tmp_path)
    _refused(capsys, out, ["evaluate", "--logs", str(data["A"]), "--head", f"{name}={data['head']}",
                           "--out", str(out)], f"may not be named '{name}'", "replace that baseline")
    # The same through the folder name (NAME defaults to it).
    folder = tmp_path / name
    shutil.copytree(data["head"], folder)
    _refused(capsys, out, ["evaluate", "--logs", str(data["A"]), "--head", str(folder), "--out", str(out)],
             f"may not be named '{name}'")


def test_bad_head_specs_are_refused(tmp_path, data, capsys):
    out = _out(tmp_path)
    _refused(capsys, out, ["evaluate", "--logs", str(data["A"]), "--head", f"={data['head']}", "--out", str(out)],
             "non-empty NAME and PATH")
    _refused(capsys, out, ["evaluate", "--logs", str(data["A"]), "--head", f"h={data['head']}",
                           "--head", f"h={data['head']}", "--out", str(out)], "two heads are named 'h'")


def test_the_same_log_twice_is_refused(tmp_path, data, capsys):
    out = _out(tmp_path)
    a = str(data["A"])
    _refused(capsys, out, ["evaluate", "--logs", a, a, "--out", str(out)], "given twice")
    _refused(capsys, out, ["evaluate", "--logs", a, a + "/", "--out", str(out)], "given twice")


def test_logs_sharing_examples_are_refused(tmp_path, data, capsys):
    out = _out(tmp_path)
    line = _refused(capsys, out, ["evaluate", "--logs", str(data["A"]), str(data["B"]), "--out", str(out)],
                    "share 4 examples", str(data["A"]), str(data["B"]))
    assert all(f"'syn{i}'" in line for i in range(6, 10))


def test_a_token_rule_with_no_exact_alpha_is_refused(tmp_path, data, capsys):
    out = _out(tmp_path)
    _refused(capsys, out, ["evaluate", "--logs", str(data["A"]), "--methods", "token_v3", "--alphas", "0.33",
                           "--out", str(out)], "token_v3 is exact only at the logs' alpha grid", "0.33")


def test_an_existing_file_as_out_is_refused(tmp_path, data, capsys):
    f = tmp_path / "file.txt"
    f.write_text(SENTINEL)
    assert main(["evaluate", "--logs", str(data["A"]), "--out", str(f)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert f.read_text() == SENTINEL


# ---- corrupt logs ---------------------------------------------------------------------------------------


def _fix_manifest(d: Path, shard: str) -> None:
    """Make the manifest agree with a modified shard, so the damage is found by parsing, not by checksum."""
    blob = (d / shard).read_bytes()
    m = json.loads((d / "manifest.json").read_text())
    for s in m["shards"]:
        if s["file"] == shard:
            s.update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    (d / "manifest.json").write_text(json.dumps(m))


def _damage(d: Path, how: str) -> Path:
    shard = d / "shard-000001.parquet"
    blob = shard.read_bytes()
    if how == "truncated":
        shard.write_bytes(blob[: len(blob) // 2])
    elif how == "truncated, manifest updated":
        shard.write_bytes(blob[: len(blob) // 2])
        _fix_manifest(d, shard.name)
    elif how == "flipped":
        shard.write_bytes(blob[:100] + bytes([blob[100] ^ 0x10]) + blob[101:])
    elif how == "missing shard":
        shard.unlink()
    elif how == "no manifest":
        (d / "manifest.json").unlink()
    elif how == "manifest cut":
        text = (d / "manifest.json").read_text()
        (d / "manifest.json").write_text(text[: len(text) // 2])
    return shard


@pytest.mark.parametrize("how,needle", [
    ("truncated", "truncated"), ("truncated, manifest updated", "not a readable Parquet file"),
    ("flipped", "sha256 does not match"), ("missing shard", "is missing"),
    ("no manifest", "no manifest.json"), ("manifest cut", "not valid JSON"),
])
def test_corrupt_logs_are_one_clear_error_naming_the_file(tmp_path, data, capsys, how, needle):
    d = Path(shutil.copytree(data["A"], tmp_path / "logs"))
    shard = _damage(d, how)
    out = _out(tmp_path)
    named = shard if "shard" in how or "truncated" in how or how == "flipped" else d
    _refused(capsys, out, ["evaluate", "--logs", str(d), "--out", str(out)], needle, str(named))


def test_the_library_refuses_the_same(data):
    from specref.logs.evaluate import evaluate
    from specref.logs.store import read_summary

    summary, layout = read_summary(data["A"])
    head = heads.load(data["head"])
    kw = dict(log_alphas=layout.alphas, vocab_size=layout.vocab_size)
    with pytest.raises(ValueError, match="may not be named 'oracle'"):
        evaluate(summary, (0.0,), heads={"oracle": head}, **kw)
    with pytest.raises(ValueError, match="unknown method 'foo'"):
        evaluate(summary, (0.0,), methods=["foo"], **kw)
    with pytest.raises(ValueError, match=r"alpha -1\.0 is out of range"):
        evaluate(summary, (0.0, -1.0), **kw)
    rows = evaluate(summary, (0.5, 0.5), methods=["chow"], **kw)
    assert len(rows) == 2  # one alpha (deduplicated) x two losses
