"""Several learned heads in one sweep (specref.repro.heads): ``--head NAME=PATH`` is the method learned_NAME,
decoded beside the unnamed head and the fixed rules on the same rows; a resume with other weights under a name
is refused; malformed values are one-line errors before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specref import rules
from specref.cli import main
from specref.repro.heads import HeadSpecs, register_heads
from specref.repro.store import PointStore

REPO = Path(__file__).resolve().parents[1]
HEADS = REPO / "results" / "learned" / "arith-llama" / "heads"
ARGS = ["--pair", "arith-llama", "--max-examples", "4", "--max-new-tokens", "8", "--methods", "specdecode,learned",
        "--alphas", "learned=0;learned_tok=0,0.2", "--no-plot", "--no-progress", "--device", "cpu"]


def test_named_heads_are_decoded_beside_the_unnamed_one(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["reproduce", *ARGS, "--head", str(HEADS / "cascade_sampled"), "--head", f"tok={HEADS / 'token'}",
            "--out", str(out)]
    assert main(argv) == 0
    assert "SpecCascade [Learned tok]" in capsys.readouterr().out
    rows = PointStore(out / "arith-llama" / "points.csv").read()
    assert [(r["method"], r["alpha"]) for r in rows if r["method"].startswith("learned")] == [
        ("learned", 0.0), ("learned_tok", 0.0), ("learned_tok", 0.2)]
    tok = [r for r in rows if r["method"] == "learned_tok"]
    assert all(r["label"] == "SpecCascade [Learned tok]" for r in tok)
    meta = json.loads((out / "arith-llama" / "run.json").read_text())
    assert set(meta["heads_sha256"]) == {"learned_tok"} and meta["head_sha256"]
    claims = (out / "arith-llama" / "claims.md").read_text()
    assert "Learned" not in claims  # specref's own rules are never a contender in the paper's claims
    # the same name with other weights: refused, nothing decoded, one line
    again = ["reproduce", *ARGS, "--head", str(HEADS / "cascade_sampled"), "--head",
             f"tok={HEADS / 'cascade_argmax'}", "--out", str(out)]
    assert main(again) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(err) == 1 and "holds learned_tok rows of another head" in err[0], err
    assert len(PointStore(out / "arith-llama" / "points.csv").read()) == len(rows)
    # the same weights: a resume that decodes nothing new
    assert main(argv) == 0
    assert "0 new rows" in capsys.readouterr().out


@pytest.mark.parametrize("values, message", [
    (["a", "b"], "two unnamed --head values"),
    (["my-head=x"], "NAME a plain identifier"),
    (["tok="], "NAME a plain identifier"),
    (["tok=a", "tok=b"], "two heads are named 'tok'"),
])
def test_malformed_head_values_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        HeadSpecs(values)


def test_a_named_head_never_replaces_a_rule_registered_elsewhere():
    rules.register("learned_mine", rules.OptRule)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_heads([f"mine={HEADS / 'token'}"])
    finally:
        rules.unregister("learned_mine")


def test_cli_refuses_a_bad_head_before_decoding(tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["reproduce", *ARGS, "--head", f"tok={tmp_path / 'missing'}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0], err
    assert not out.exists()


def test_named_heads_in_a_data_parallel_sweep_give_the_one_process_rows(tmp_path, capsys):
    """The torchrun workers register the named heads from the same option: rows equal a one-process run's."""
    args = [*ARGS, "--head", f"tok={HEADS / 'token'}", "--methods", "specdecode", "--alphas", "learned_tok=0,0.2"]
    assert main(["reproduce", *args, "--out", str(tmp_path / "one")]) == 0
    assert main(["reproduce", "--procs", "2", *args, "--out", str(tmp_path / "two")]) == 0
    capsys.readouterr()
    wall = {"latency_wall", "wall_s", "baseline_wall_s", "cost_ratio_measured", "run_id", "time_utc", "row_crc32"}
    rows_1 = PointStore(tmp_path / "one" / "arith-llama" / "points.csv").read()
    rows_2 = PointStore(tmp_path / "two" / "arith-llama" / "points.csv").read()
    assert [r["method"] for r in rows_1] == ["target", "draft", "specdecode", "learned_tok", "learned_tok"]
    for a, b in zip(rows_1, rows_2, strict=True):
        assert {k: v for k, v in a.items() if k not in wall} == {k: v for k, v in b.items() if k not in wall}
