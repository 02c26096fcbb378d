"""``specref generate`` (specref.cli.generate).

On the zoo: zoo names give exactly the tokens of --pair, a mismatched pair is refused, the task's prompt
template is applied (and said), engines agree, bad input is one line with nothing printed. On tiny models
saved to disk (causal and T5): text and JSON output, reproducibility, and errors.
"""

from __future__ import annotations

import json
import shutil

import pytest

from specref import zoo
from specref.cli import main
from specref.decode.testing import tiny_pair, tiny_tokenizer
from specref.tasks import get_task

VERSE = "In the beginning God created the heavens and the earth."


def run_json(capsys, *argv):
    code = main(["generate", *argv, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out), out.err


def run_error(capsys, *argv):
    code = main(["generate", *argv])
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2 and out.out == "" and len(lines) == 1 and "Traceback" not in out.err, out
    return lines[0]


@pytest.mark.parametrize("pair,prompt", [("bible-en-es-t5", VERSE), ("arith-llama", "Ann has 3 apples. How many?")])
def test_zoo_names_give_the_tokens_of_pair(capsys, pair, prompt):
    common = ["--prompt", prompt, "--prompt", "A second one.", "--max-new-tokens", "12", "--seed", "3"]
    by_pair, _ = run_json(capsys, "--pair", pair, *common)
    by_names, _ = run_json(capsys, "--draft", f"{pair}:draft", "--target", f"{pair}:target", *common)
    folders = [str(zoo.pair_dir(pair) / r) for r in ("draft", "target")]
    by_folders, _ = run_json(capsys, "--draft", folders[0], "--target", folders[1], *common)
    assert by_pair["tokens"] == by_names["tokens"] == by_folders["tokens"]
    assert by_pair["texts"] == by_names["texts"] and all(t.strip() for t in by_pair["texts"])


def test_translation_by_zoo_names_is_not_empty(capsys):
    out, _ = run_json(capsys, "--draft", "bible-en-es-t5:draft", "--target", "bible-en-es-t5:target",
                      "--prompt", VERSE, "--temperature", "0")
    assert "principio" in out["texts"][0] and "Dios" in out["texts"][0]


def test_mismatched_vocabularies_are_refused(capsys):
    line = run_error(capsys, "--draft", "stdlib-doc-t5:draft", "--target", "bible-en-es-t5:target",
                     "--prompt", VERSE)
    assert line.startswith("specref generate: error: draft and target vocabularies differ (4096 vs 4096 tokens)")


def test_reasoning_prompt_template_is_applied_and_said(capsys):
    example = get_task("reasoning").load("test", limit=1)[0]
    out, err = run_json(capsys, "--pair", "arith-llama", "--prompt", example.source, "--temperature", "0")
    assert "applied the reasoning task's prompt template" in err and "--raw-prompt" in err
    assert out["texts"][0].strip() == example.reference  # the card's 94.8% target answers the templated prompt
    assert out["stats"]["prompt_template"] is True
    raw, err = run_json(capsys, "--pair", "arith-llama", "--prompt", example.source, "--temperature", "0",
                        "--raw-prompt")
    assert "template" not in err and raw["stats"]["prompt_template"] is False
    templated = get_task("reasoning").format_prompt(example)
    by_hand, _ = run_json(capsys, "--pair", "arith-llama", "--prompt", templated, "--temperature", "0",
                          "--raw-prompt")
    assert by_hand["tokens"] == out["tokens"] != raw["tokens"]


def test_identity_template_says_nothing(capsys):
    _, err = run_json(capsys, "--pair", "bible-en-es-t5", "--prompt", VERSE, "--max-new-tokens", "3")
    assert "template" not in err


def test_engines_agree(capsys):
    args = ["--pair", "arith-llama", "--rule", "token_v3", "--alpha", "0.3", "--prompt", "Ann has 3 apples.",
            "--max-new-tokens", "10", "--seed", "1"]
    plain, _ = run_json(capsys, *args)
    fast, _ = run_json(capsys, *args, "--engine", "fast")
    assert plain["tokens"] == fast["tokens"] and fast["stats"]["engine"] == "fast"


def test_adaptive_gamma_policy_is_reported_and_refused_where_it_cannot_apply(capsys):
    args = ["--pair", "arith-llama", "--prompt", "Ann has 3 apples.", "--max-new-tokens", "10", "--gamma", "4"]
    out, _ = run_json(capsys, *args, "--gamma-policy", "adaptive", "--cost-ratio", "0.1")
    rounds = out["stats"]["gamma_rounds"]
    assert rounds and all(1 <= int(g) <= 4 for g in rounds) and out["stats"]["gamma_policy"].startswith("Adaptive")
    assert "gamma_rounds" not in run_json(capsys, *args)[0]["stats"]
    assert "--gamma-policy only applies" in run_error(capsys, *args, "--rule", "target", "--gamma-policy", "adaptive")
    static, _ = run_json(capsys, *args, "--gamma-policy", "adaptive", "--cost-ratio", "0.1", "--engine", "static")
    assert static["tokens"] == out["tokens"] and static["stats"]["gamma_rounds"] == rounds


def test_draft_confidence_threshold_is_reported_and_refused_where_it_cannot_apply(capsys):
    args = ["--pair", "arith-llama", "--prompt", "Ann has 3 apples.", "--max-new-tokens", "16", "--gamma", "20"]
    out, _ = run_json(capsys, *args, "--draft-confidence-threshold", "0.4")
    stats = out["stats"]
    assert stats["draft_confidence_threshold"] == 0.4 and stats["gamma"] == 20
    assert sum(stats["gamma_rounds"].values()) == stats["rounds"] and 0 < stats["mean_drafts"] <= 20
    assert 0 <= stats["stop_share"] <= 1 and "confidence_stops" in stats
    static, _ = run_json(capsys, *args, "--draft-confidence-threshold", "0.4", "--engine", "static")
    assert static["tokens"] == out["tokens"] and static["stats"]["gamma_rounds"] == stats["gamma_rounds"]
    assert "draft_confidence_threshold" not in run_json(capsys, *args)[0]["stats"]
    line = run_error(capsys, *args, "--rule", "target", "--draft-confidence-threshold", "0.4")
    assert "--draft-confidence-threshold only applies to the speculative rules, not to 'target'" in line


def test_cost_ratio_and_its_hidden_alias(capsys):
    args = ["--pair", "arith-llama", "--prompt", "Ann has 3 apples.", "--max-new-tokens", "4"]
    default, _ = run_json(capsys, *args)
    assert default["stats"]["c_source"] == "params" and default["stats"]["c"] > 0
    given, _ = run_json(capsys, *args, "--cost-ratio", "0.25")
    alias, _ = run_json(capsys, *args, "--c", "0.25")
    assert given["stats"]["c"] == alias["stats"]["c"] == 0.25 and given["stats"]["c_source"] == "given"


def test_folder_without_tokenizer_is_refused(capsys, tmp_path):
    folder = tmp_path / "target"
    shutil.copytree(zoo.pair_dir("bible-en-es-t5") / "target", folder)
    line = run_error(capsys, "--draft", "bible-en-es-t5:draft", "--target", str(folder), "--prompt", VERSE)
    assert f"target {str(folder)!r}: the folder has no tokenizer files" in line
    out, _ = run_json(capsys, "--draft", "bible-en-es-t5:draft", "--target", str(folder), "--tokenizer",
                      "bible-en-es-t5", "--prompt", VERSE, "--temperature", "0")
    assert "principio" in out["texts"][0]


# ---- tiny models saved to disk ---------------------------------------------------------------------------------------


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
    (["--draft-confidence-threshold", "0"], "--draft-confidence-threshold: must be in (0, 1), got '0'"),
    (["--draft-confidence-threshold", "1"], "--draft-confidence-threshold: must be in (0, 1), got '1'"),
    (["--draft-confidence-threshold", "-0.5"], "--draft-confidence-threshold: must be in (0, 1), got '-0.5'"),
    (["--draft-confidence-threshold", "nan"], "--draft-confidence-threshold: expected a finite number"),
    (["--draft-confidence-threshold", "high"], "--draft-confidence-threshold: expected a number, got 'high'"),
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
