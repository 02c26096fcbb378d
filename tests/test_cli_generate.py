"""``specref generate`` on the zoo: zoo names give exactly the tokens of --pair, a mismatched pair is refused,
the task's prompt template is applied (and said), engines agree, bad input is one line with nothing printed."""

from __future__ import annotations

import json
import shutil

import pytest

from specref import zoo
from specref.cli import main
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
