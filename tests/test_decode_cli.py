"""``specref generate`` on tiny models saved to disk (causal and T5), text and JSON output, and errors."""

from __future__ import annotations

import json

import pytest

from specref.cli import main
from specref.decode.testing import tiny_pair, tiny_tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = tiny_tokenizer()
    paths = {}
    for family, kw in (("llama", {"init": 0.3}), ("t5", {"init": 0.02, "peak": 0.3})):
        draft, target = tiny_pair(family, vocab=8, draft_noise=0.3, **kw)
        for name, model in (("draft", draft), ("target", target)):
            path = root / f"{family}-{name}"
            model.save_pretrained(path)
            tok.save_pretrained(path)
            paths[family, name] = str(path)
    return paths


def run_cli(capsys, *argv):
    code = main(["generate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_generate_prints_text_and_statistics(saved, capsys, family):
    code, out, _ = run_cli(
        capsys,
        "--draft",
        saved[family, "draft"],
        "--target",
        saved[family, "target"],
        "--rule",
        "token_v3",
        "--alpha",
        "0.3",
        "--gamma",
        "3",
        "--prompt",
        "a b c",
        "--prompt",
        "d",
        "--max-new-tokens",
        "6",
        "--seed",
        "1",
        "--c",
        "0.1",
        "--per-row",
    )
    assert code == 0
    assert "[0] a b c" in out and "[1] d" in out and "->" in out
    assert "tokens_per_target_call" in out and "modeled_relative_latency" in out and "row 1:" in out


@pytest.mark.parametrize(
    "rule,extra",
    [
        ("specdecode", ["--bonus", "target"]),
        ("bild", ["--fallback", "0.6"]),
        ("seq_cascade", ["--alpha", "0.3", "--aggregate", "quantile", "--quantile", "0.2"]),
        ("target", []),
        ("token_cascade", ["--alpha", "0.3"]),
    ],
)
def test_generate_json(saved, capsys, rule, extra):
    code, out, _ = run_cli(
        capsys,
        "--draft",
        saved["llama", "draft"],
        "--target",
        saved["llama", "target"],
        "--rule",
        rule,
        *extra,
        "--prompt",
        "a b",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0.8",
        "--top-k",
        "4",
        "--top-p",
        "0.9",
        "--json",
        "--per-row",
    )
    assert code == 0
    obj = json.loads(out)
    assert obj["stats"]["method"] == rule and len(obj["texts"]) == 1 and len(obj["rows"]) == 1
    assert 1 <= len(obj["tokens"][0]) <= 5


def test_generate_is_reproducible(saved, capsys):
    args = [
        "--draft",
        saved["llama", "draft"],
        "--target",
        saved["llama", "target"],
        "--rule",
        "token_v3",
        "--alpha",
        "0.3",
        "--prompt",
        "c d",
        "--max-new-tokens",
        "8",
        "--seed",
        "7",
        "--json",
    ]
    first = json.loads(run_cli(capsys, *args)[1])["tokens"]
    second = json.loads(run_cli(capsys, *args)[1])["tokens"]
    assert first == second


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--draft", "/nonexistent/model", "--target", "/nonexistent/model", "--prompt", "a"],
         "draft '/nonexistent/model': no such file or folder"),
        (["--rule", "learned", "--prompt", "a"], "needs --head"),
        (["--rule", "target", "--bonus", "target", "--prompt", "a"], "--bonus only applies"),
        (["--pair", "no-such-pair", "--prompt", "a"], "unknown zoo pair 'no-such-pair'"),
        (["--pair", "bible-en-es-t5", "--draft", "bible-en-es-t5:draft", "--prompt", "a"], "not both"),
        (["--draft", "bible-en-es-t5:tokenizer", "--target", "bible-en-es-t5:target", "--prompt", "a"],
         "names the zoo pair's tokenizer, not a model"),
        ([], "--prompt"),
    ],
)
def test_generate_errors(saved, capsys, argv, match):
    base = (
        []
        if ("--draft" in argv or "--pair" in argv)
        else ["--draft", saved["llama", "draft"], "--target", saved["llama", "target"]]
    )
    code, out, err = run_cli(capsys, *base, *argv)
    assert code == 2 and out == ""
    assert match in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv,match", [
    (["--gamma", "0"], "--gamma: must be an integer >= 1, got '0'"),
    (["--max-new-tokens", "-1"], "--max-new-tokens: must be an integer >= 1"),
    (["--temperature", "nan"], "--temperature: expected a finite number"),
    (["--top-p", "1.5"], "top-p must be in (0, 1]"),
    (["--top-k", "-2"], "--top-k: must be an integer >= 0"),
    (["--cost-ratio", "-1"], "--cost-ratio: must be a finite number >= 0"),
    (["--c", "-1"], "--c: must be a finite number >= 0"),
    (["--engine", "turbo"], "invalid choice: 'turbo'"),
    (["--dtype", "int8"], "invalid choice: 'int8'"),
])
def test_generate_refuses_bad_numbers_before_loading(capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--pair", "bible-en-es-t5", "--prompt", "a", *argv])
    assert e.value.code == 2
    assert match in capsys.readouterr().err
