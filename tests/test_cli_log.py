"""``specref log`` through the loading path: zoo names write the very logs --pair writes, a mismatched pair,
a folder without a tokenizer and bad numbers are one-line errors that write nothing."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from specref import zoo
from specref.cli import main

BASE = ["--split", "test", "--max-examples", "2", "--no-progress"]


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _error(capsys, argv):
    rc = main(["log", *argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_zoo_names_write_the_logs_of_pair(tmp_path, capsys):
    assert main(["log", "--pair", "bible-en-es-t5", *BASE, "--out", str(tmp_path / "pair")]) == 0
    assert main(["log", "--draft", "bible-en-es-t5:draft", "--target", "bible-en-es-t5:target", *BASE,
                 "--out", str(tmp_path / "names")]) == 0
    assert "logged" in capsys.readouterr().out
    a, b = _digest(tmp_path / "pair"), _digest(tmp_path / "names")
    assert a and a == b  # byte for byte: same tokens, same references, same provenance


def test_mismatched_pair_is_refused_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "logs"
    line = _error(capsys, ["--draft", "stdlib-doc-t5:draft", "--target", "bible-en-es-t5:target",
                           "--task", "translation", *BASE, "--out", str(out)])
    assert "draft and target vocabularies differ" in line
    assert not out.exists()


def test_folder_without_tokenizer_is_refused(tmp_path, capsys):
    folder = tmp_path / "draft"
    shutil.copytree(zoo.pair_dir("bible-en-es-t5") / "draft", folder)
    out = tmp_path / "logs"
    line = _error(capsys, ["--draft", str(folder), "--target", "bible-en-es-t5:target", "--task", "translation",
                           *BASE, "--out", str(out)])
    assert "the folder has no tokenizer files" in line
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["--max-examples", "0"], "--max-examples: must be an integer >= 1, got '0'"),
    (["--batch-size", "0"], "--batch-size: must be an integer >= 1"),
    (["--top-k", "-1"], "--top-k: must be an integer >= 1"),
    (["--split", "dev"], "invalid choice: 'dev'"),
    (["--dtype", "int4"], "invalid choice: 'int4'"),
    (["--alphas", "0,x"], "expected comma-separated numbers"),
])
def test_bad_numbers_are_refused_before_anything_runs(tmp_path, capsys, argv, message):
    out = tmp_path / "logs"
    with pytest.raises(SystemExit) as e:
        main(["log", "--pair", "bible-en-es-t5", "--out", str(out), *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["--pair", "bible-en-es-t5", "--alpha", "0.3"], "--alpha only applies to --on-policy"),
    (["--pair", "bible-en-es-t5", "--task", "reasoning"], "task 'reasoning' is for causal models"),
    (["--draft", "bible-en-es-t5:draft", "--target", "arith-llama:target"], "--task is required"),
    (["--pair", "bible-en-es-t5", "--draft", "bible-en-es-t5:draft"], "not both"),
])
def test_inconsistent_options_are_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "logs"
    assert message in _error(capsys, [*argv, *BASE, "--out", str(out)])
    assert not out.exists()
