"""training/deferral/online_summary: a sweep split over run folders (as online-full/commands.sh splits it over
processes) is summarised exactly as the same sweep run in one folder, learned rules compared with the best
fixed rule."""

from __future__ import annotations

import csv
from pathlib import Path

from specref.cli import main
from training.deferral import online_summary

REPO = Path(__file__).resolve().parents[1]
HEAD = REPO / "results" / "learned" / "arith-llama" / "heads" / "token"
BASE = ["reproduce", "--pair", "arith-llama", "--max-examples", "3", "--max-new-tokens", "6", "--seed", "0,1",
        "--no-plot", "--no-progress", "--device", "cpu", "--head", f"tok={HEAD}"]


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_split_runs_summarise_as_one(tmp_path, capsys):
    one, fixed, learned = tmp_path / "one", tmp_path / "fixed", tmp_path / "learned"
    alphas = ["--alphas", "opt=0,0.5;learned_tok=0,0.3"]
    assert main([*BASE, "--methods", "specdecode,opt", *alphas, "--out", str(one)]) == 0
    assert main([*BASE, "--methods", "specdecode,opt", "--alphas", "opt=0,0.5", "--out", str(fixed)]) == 0
    # the fixed rules' folder has no learned rows; the learned folder has its own target and draft rows
    assert main([*BASE[:-2], "--methods", "specdecode", "--head", f"tok={HEAD}", "--alphas", "learned_tok=0,0.3",
                 "--out", str(learned)]) == 0
    capsys.readouterr()
    assert online_summary.main([str(one), "--out", str(tmp_path / "one.csv")]) == 0
    assert online_summary.main([str(fixed), str(learned), "--out", str(tmp_path / "split.csv")]) == 0
    a, b = _read(tmp_path / "one.csv"), _read(tmp_path / "split.csv")
    assert [r["rule"] for r in a] == ["specdecode", "opt", "learned_tok"]
    assert sorted(map(sorted, (r.items() for r in a))) == sorted(map(sorted, (r.items() for r in b)))
    tok = next(r for r in b if r["rule"] == "learned_tok")
    assert tok["seeds"] == "2" and tok["label"] == "SpecCascade [Learned tok]"
    assert tok["speedup_verdict"] or tok["quality_verdict"]  # the learned rule is judged against a fixed one
    assert (tmp_path / "split.md").read_text().count("\n") == len(b) + 2


def test_no_points_is_an_error(tmp_path, capsys):
    assert online_summary.main([str(tmp_path), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no */points.csv" in capsys.readouterr().err
