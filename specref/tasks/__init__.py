"""The three task families of the paper, on data that ships with the package.

==============  =======================================  ===========  ========
task            data (see ``specref/tasks/data/README.md``)  metric   models
==============  =======================================  ===========  ========
translation     English -> Spanish Bible verses (WEB / RV1909)  BLEU      seq2seq
summarization   Python function -> first docstring sentence     ROUGE-2   seq2seq
reasoning       generated multi-step arithmetic word problems   accuracy  causal
==============  =======================================  ===========  ========

They stand in for WMT, XSum/CNN-DM and GSM8K, none of which can be fetched on our machines. Every split is
a gzip'd JSON-lines file under ``specref/tasks/data/<task>/``, rebuilt byte-exactly by
``python -m specref.tasks.builders.<task>``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from specref.tasks import metrics

__all__ = ["Example", "Task", "get_task", "list_tasks", "DATA_DIR", "SPLITS"]

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    """One example. ``answer`` is the gold final number (reasoning only), as a normalized string."""

    id: str
    source: str
    reference: str
    answer: str | None = None


@dataclass(frozen=True)
class Task:
    """A task: where its data lives, how a prompt is written, how predictions are scored."""

    name: str
    description: str
    metric_name: str
    model_family: str  # "seq2seq" or "causal"
    prompt_template: str = "{source}"

    @property
    def data_dir(self) -> Path:
        return DATA_DIR / self.name

    def split_path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} for task {self.name!r}; choose one of {SPLITS}")
        return self.data_dir / f"{split}.jsonl.gz"

    def load(self, split: str, limit: int | None = None) -> list[Example]:
        """The examples of ``split`` in file order (the first ``limit`` if given)."""
        return list(_load_cached(str(self.split_path(split)), self.name))[:limit]

    def format_prompt(self, example: Example) -> str:
        """The exact text fed to the models (encoder input for seq2seq, prefix for causal LMs).

        For causal models the completion is ``" " + reference`` (see :meth:`format_completion`), so the
        prompt deliberately ends without a space: the tokenizer then sees the same text at train and test.
        """
        return self.prompt_template.format(source=example.source)

    def format_completion(self, example: Example) -> str:
        """The text a model is trained to emit after the prompt."""
        return (" " if self.model_family == "causal" else "") + example.reference

    def score(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        """Metrics of ``predictions`` (decoded completions, one per example); the headline is ``metric_name``.

        Every task also reports the degeneracy fractions (empty outputs, repetition loops).
        """
        predictions = [p.strip() for p in predictions]
        if self.metric_name == "bleu":
            result = {"bleu": metrics.bleu(predictions, [e.reference for e in examples])}
        elif self.metric_name == "rouge2":
            result = {"rouge2": metrics.rouge2(predictions, [e.reference for e in examples])}
        elif self.metric_name == "accuracy":
            answers = [e.answer for e in examples]
            if any(a is None for a in answers):
                raise ValueError(f"task {self.name!r}: every example needs an answer to score accuracy")
            result = {"accuracy": metrics.accuracy(predictions, answers)}
        else:  # pragma: no cover - guarded by the registry
            raise ValueError(f"unknown metric {self.metric_name!r}")
        result.update(metrics.degeneracy(predictions))
        result["n"] = float(len(predictions))
        return result


@lru_cache(maxsize=16)
def _load_cached(path: str, task: str) -> tuple[Example, ...]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} is missing; rebuild it with `python -m specref.tasks.builders.{task}`"
        )
    with gzip.open(file, "rt", encoding="utf-8") as handle:
        return tuple(Example(**json.loads(line)) for line in handle if line.strip())


_TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="translation",
            description="English -> Spanish Bible verses (World English Bible -> Reina-Valera 1909), by book",
            metric_name="bleu",
            model_family="seq2seq",
        ),
        Task(
            name="summarization",
            description="Python function (docstring removed) -> first sentence of its docstring, CPython stdlib",
            metric_name="rouge2",
            model_family="seq2seq",
        ),
        Task(
            name="reasoning",
            description="Generated 2-4 step arithmetic word problems with worked solutions (GSM8K-style)",
            metric_name="accuracy",
            model_family="causal",
            prompt_template="Question: {source}\nAnswer:",
        ),
    )
}


def list_tasks() -> list[str]:
    """Names of the registered tasks."""
    return list(_TASKS)


def get_task(name: str) -> Task:
    """The task called ``name``."""
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {list_tasks()}") from None
