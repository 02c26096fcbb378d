"""The task registry and the shipped splits: fields, sizes, prompts, scoring, and no leakage."""

import pytest

from specref.tasks import SPLITS, Example, get_task, list_tasks


def test_registry():
    assert list_tasks() == ["translation", "summarization", "reasoning"]
    expected = {"translation": ("bleu", "seq2seq"), "summarization": ("rouge2", "seq2seq"),
                "reasoning": ("accuracy", "causal")}
    for name, (metric, family) in expected.items():
        task = get_task(name)
        assert (task.metric_name, task.model_family) == (metric, family)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("wmt")
    with pytest.raises(ValueError, match="unknown split"):
        get_task("translation").load("dev")


@pytest.mark.parametrize("name", ["translation", "summarization", "reasoning"])
def test_splits_load_with_fields(name):
    task = get_task(name)
    sizes = {split: len(task.load(split)) for split in SPLITS}
    assert sizes["train"] > 5000 and 300 <= sizes["test"] <= 1000 and sizes["validation"] >= 300
    for split in SPLITS:
        examples = task.load(split)
        assert len({e.id for e in examples}) == len(examples), "ids must be unique"
        for e in examples[:50]:
            assert isinstance(e, Example) and e.source.strip() and e.reference.strip()
            assert (e.answer is not None) == (name == "reasoning")
    assert len(task.load("test", limit=5)) == 5


def _sources(task, split):
    return {e.source for e in task.load(split)}


@pytest.mark.parametrize("name", ["translation", "summarization", "reasoning"])
def test_no_input_shared_between_splits(name):
    task = get_task(name)
    train, val, test = (_sources(task, s) for s in SPLITS)
    if name == "translation":  # a few short verses ("Amen.") legitimately recur across books
        assert len(test & train) <= 5 and len(val & train) <= 5
    else:
        assert not (test & train) and not (val & train) and not (test & val)


def test_translation_split_by_book():
    task = get_task("translation")
    books = {split: {e.id.rsplit(" ", 1)[0] for e in task.load(split)} for split in SPLITS}
    assert not (books["train"] & books["test"]) and not (books["train"] & books["validation"])
    assert not (books["validation"] & books["test"])
    assert len(books["train"] | books["validation"] | books["test"]) == 66


def test_summarization_split_by_module():
    task = get_task("summarization")
    modules = {split: {e.id.split(":")[0] for e in task.load(split)} for split in SPLITS}
    assert not (modules["train"] & modules["test"]) and not (modules["train"] & modules["validation"])
    for e in task.load("test")[:100]:
        assert e.reference not in e.source or len(e.reference) < 20  # the docstring itself was removed
        assert e.source.lstrip().startswith(("def ", "async def ", "@"))


def test_reasoning_answers_match_solutions():
    task = get_task("reasoning")
    for e in task.load("test"):
        assert e.reference.endswith(f"The answer is {e.answer}.")


def test_prompts():
    tr, rs = get_task("translation"), get_task("reasoning")
    ex = tr.load("test")[0]
    assert tr.format_prompt(ex) == ex.source and tr.format_completion(ex) == ex.reference
    ex = rs.load("test")[0]
    assert rs.format_prompt(ex) == f"Question: {ex.source}\nAnswer:"
    assert rs.format_completion(ex) == " " + ex.reference


def test_score_references_are_perfect():
    for name, metric in [("translation", "bleu"), ("summarization", "rouge2"), ("reasoning", "accuracy")]:
        task = get_task(name)
        examples = task.load("test", limit=40)
        result = task.score([e.reference for e in examples], examples)
        assert result[metric] == pytest.approx(100.0)
        assert result["empty_rate"] == 0.0 and result["n"] == 40


def test_score_wrong_answers():
    task = get_task("reasoning")
    examples = task.load("test", limit=10)
    assert task.score(["The answer is -1."] * 10, examples)["accuracy"] == 0.0
