"""Experiment setups: the zoo pairs, the paper's real setups from YAML, and tiny random-init stand-ins.

A :class:`Setup` says which models, which data and which decoding settings a reproduction uses. Three ways
to get one:

* :func:`zoo_setup` - an embedded zoo pair and its task (the default of ``specref reproduce``);
* :func:`load_setup` - a YAML file of ``configs/paper/`` describing one of the paper's setups (T5 v1.1 on
  WMT / XSum / CNN-DM, Gemma 2 on GSM8K and QA) with user-provided model and data paths;
* either of them with ``standin=True``: the same pipeline with tiny random-init models built from
  Hugging Face configs (the YAML's ``standin`` section, or a built-in tiny T5 / Llama for zoo pairs) and
  the zoo's tokenizer and data, so a test can run every setup end to end without weights.

:func:`select_setups` picks the setups of one run from a task, a pair or a YAML file (the choices of
``specref reproduce`` and its data-parallel twin), and :func:`check_built` refuses zoo pairs without weights.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "JsonlTask",
    "check_built",
    "check_setup_name",
    "Setup",
    "STANDIN_ARCH",
    "exact_match",
    "load_setup",
    "select_setups",
    "zoo_setup",
]

#: Tiny architectures for stand-ins of zoo pairs (draft smaller than target, same vocabulary).
STANDIN_ARCH: dict[str, dict[str, dict[str, Any]]] = {
    "seq2seq": {
        "draft": {"model_type": "t5", "d_model": 16, "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1,
                  "num_heads": 2, "d_kv": 8, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
        "target": {"model_type": "t5", "d_model": 32, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2,
                   "num_heads": 2, "d_kv": 16, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
    },
    "causal": {
        "draft": {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                  "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512},
        "target": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512},
    },
}


@dataclass
class Setup:
    """Everything a reproduction needs besides the sweep grid.

    ``draft`` / ``target`` are model paths, hub ids or zoo names, or dicts (a Hugging Face config for a
    random-init stand-in). ``defaults`` holds the setup's decoding defaults (gamma, temperature, top_p,
    max_new_tokens, batch_size, seeds, max_examples, split, axis, cost_ratio, methods) for full runs;
    ``quick`` overrides them in quick mode; command-line options override both.
    """

    name: str
    task: Any
    pair: str
    draft: str | dict[str, Any]
    target: str | dict[str, Any]
    tokenizer: str
    family: str  # "seq2seq" or "causal"
    dtype: str = "float32"
    description: str = ""
    card: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)
    standin_seed: int = 0
    #: output sub-folder: the zoo pair, or the YAML setup's name (one pair may serve several tasks)
    folder: str = ""

    def __post_init__(self) -> None:
        if not self.folder:
            self.folder = self.pair

    @property
    def is_standin(self) -> bool:
        return isinstance(self.draft, dict)


# ---- tasks over user-provided JSON-lines ---------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """An example of a :class:`JsonlTask` (``references``: every acceptable answer, for QA)."""

    id: str
    source: str
    reference: str
    answer: str | None = None
    references: tuple[str, ...] = ()


def _normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """SQuAD-style exact match (0-100): a prediction's FIRST line, normalized, equals any normalized answer.

    Why the first line: a model sampled for QA keeps writing after its answer; the paper's QA evaluations
    score the short answer.
    """
    if len(predictions) != len(references) or not predictions:
        raise ValueError("exact_match needs one list of answers per prediction, and at least one prediction")
    hits = 0
    for pred, refs in zip(predictions, references):
        first = pred.strip().split("\n", 1)[0]
        hits += any(_normalize_answer(first) == _normalize_answer(r) for r in refs)
    return 100.0 * hits / len(predictions)


class JsonlTask:
    """A task over a JSON-lines file with ``source`` and ``reference`` (or ``answer`` / ``answers``) fields.

    ``path`` may contain ``{split}``. Metrics: ``bleu``, ``rouge2``, ``accuracy`` (final number, GSM8K) and
    ``exact_match`` (QA). Example ids are the ``id`` field or the line number.
    """

    def __init__(self, name: str, path: str, metric: str, prompt_template: str = "{source}",
                 model_family: str = "seq2seq") -> None:
        if metric not in ("bleu", "rouge2", "accuracy", "exact_match"):
            raise ValueError(f"unknown metric {metric!r}; choose bleu, rouge2, accuracy or exact_match")
        self.name, self.path, self.metric_name = name, path, metric
        self.prompt_template, self.model_family = prompt_template, model_family

    def load(self, split: str = "test", limit: int | None = None) -> list[Record]:
        file = Path(self.path.format(split=split)).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"task {self.name!r}: data file {file} not found (set data.path in the config)")
        out = []
        with open(file, encoding="utf-8") as handle:
            for i, line in enumerate(handle):
                if not line.strip():
                    continue
                d = json.loads(line)
                answers = d.get("answers") or ([d["answer"]] if "answer" in d else [])
                ref = d.get("reference", answers[0] if answers else "")
                out.append(Record(str(d.get("id", i)), d["source"], str(ref),
                                  None if "answer" not in d else str(d["answer"]), tuple(str(a) for a in answers)))
        return out[:limit]

    def format_prompt(self, example: Any) -> str:
        return self.prompt_template.format(source=example.source)

    def score(self, predictions: Sequence[str], examples: Sequence[Any]) -> dict[str, float]:
        from specref.tasks import metrics

        preds = [p.strip() for p in predictions]
        if self.metric_name == "bleu":
            value = metrics.bleu(preds, [e.reference for e in examples])
        elif self.metric_name == "rouge2":
            value = metrics.rouge2(preds, [e.reference for e in examples])
        elif self.metric_name == "accuracy":
            value = metrics.accuracy(preds, [e.answer for e in examples])
        else:
            value = exact_match(preds, [e.references or (e.reference,) for e in examples])
        return {self.metric_name: value, **metrics.degeneracy(preds), "n": float(len(preds))}


# ---- builders -----------------------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_setup_name(name: Any, where: str = "setup") -> str:
    """A setup's ``name`` is its output sub-folder: it must stay inside the output folder, so only a plain
    folder name is allowed (no ``/``, ``..`` or absolute path)."""
    text = str(name) if name is not None else ""
    if not _NAME.match(text) or text in (".", "..") or ".." in text:
        raise ValueError(f"{where}: name {text!r} must be a plain folder name (letters, digits, '.', '_', '-'; "
                         "no '/', '..' or absolute path): it names the output sub-folder")
    return text



def zoo_setup(pair: str, standin: bool = False, task: str | None = None) -> Setup:
    """The setup of a zoo pair (weights are loaded later, by the backend)."""
    from specref import zoo
    from specref.tasks import get_task

    spec = zoo.get_spec(pair)
    if task is not None and task != spec.task:
        raise ValueError(f"zoo pair {pair!r} is for task {spec.task!r}, not {task!r}")
    card = zoo.get_card(pair)
    if standin:
        arch = STANDIN_ARCH[spec.family]
        return Setup(name=f"{pair} (stand-in)", task=get_task(spec.task), pair=f"{pair}-standin",
                     draft=dict(arch["draft"]), target=dict(arch["target"]), tokenizer=pair, family=spec.family,
                     description="tiny random-init stand-in with the zoo tokenizer and data", card={})
    return Setup(name=pair, task=get_task(spec.task), pair=pair, draft=f"{pair}:draft", target=f"{pair}:target",
                 tokenizer=pair, family=spec.family, description=spec.description, card=card)


def load_setup(path: str | Path, standin: bool = False) -> Setup:
    """A setup from a ``configs/paper`` YAML file (see ``configs/paper/README.md`` for the schema)."""
    try:
        import yaml
    except ImportError as err:  # pragma: no cover - pyyaml comes with the train/dev extras
        raise ImportError("reading setup files needs PyYAML: pip install pyyaml") from err
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"setup file {file} not found")
    cfg = yaml.safe_load(file.read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{file}: a setup file is a mapping with sections name, models, data, ...")
    for key in ("name", "models", "data"):
        if key not in cfg:
            raise ValueError(f"{file}: missing section {key!r}")
    check_setup_name(cfg["name"], str(file))
    models, data = cfg["models"], cfg["data"]
    if not isinstance(models, dict) or not isinstance(data, dict):
        raise ValueError(f"{file}: 'models' and 'data' must be sections (mappings)")
    for key in ("draft", "target"):
        if not models.get(key):
            raise ValueError(f"{file}: models.{key} is missing (a model folder, .gguf file, zoo name or hub id)")
    from specref.defaults import DTYPES

    if models.get("dtype", "float32") not in DTYPES:
        raise ValueError(f"{file}: models.dtype must be one of {', '.join(DTYPES)}, got {models.get('dtype')!r}")
    family = models.get("family", "seq2seq")
    if family not in ("seq2seq", "causal"):
        raise ValueError(f"{file}: models.family must be seq2seq or causal, got {family!r}")
    defaults = {**cfg.get("decode", {}), **cfg.get("cost", {})}
    if "methods" in cfg:
        defaults["methods"] = list(cfg["methods"])
    task = JsonlTask(cfg["name"], str(data.get("path", "")), data.get("metric", "bleu"),
                     data.get("prompt_template", "{source}"), family)
    setup = Setup(name=cfg["name"], task=task, pair=cfg.get("pair", cfg["name"]), draft=str(models["draft"]),
                  target=str(models["target"]), tokenizer=str(models.get("tokenizer") or models["target"]),
                  family=family, dtype=models.get("dtype", "float32"), description=cfg.get("description", ""),
                  defaults=defaults, quick=dict(cfg.get("quick") or {}), folder=cfg["name"])
    if not standin:
        return setup
    sub = cfg.get("standin")
    if not sub:
        raise ValueError(f"{file}: no 'standin' section")
    from specref.tasks import get_task

    task = get_task(sub["task"])
    if task.model_family != family:
        raise ValueError(f"{file}: standin task {sub['task']!r} is {task.model_family}, the setup is {family}")
    overrides = {k: v for k, v in sub.items() if k not in ("task", "tokenizer", "draft", "target", "seed")}
    return replace(setup, name=f"{setup.name} (stand-in)", pair=f"{setup.pair}-standin", task=task,
                   draft=dict(sub["draft"]), target=dict(sub["target"]), tokenizer=str(sub["tokenizer"]),
                   dtype="float32", standin_seed=int(sub.get("seed", 0)),
                   defaults={**defaults, **overrides}, quick={**setup.quick, **overrides},
                   folder=f"{setup.folder}-standin")


def select_setups(task: str | None = None, pair: str | None = None, config: str | Path | None = None,
                  standin: bool = False) -> list[Setup]:
    """The setups of one run: the YAML setup ``config``; every zoo pair (``task="all"``); the zoo ``pair``
    (checked against ``task`` when both are given); else the zoo pair of ``task`` (default translation)."""
    from specref import zoo

    if config:
        if task or pair:
            raise ValueError("--config names its own models and data; drop --task / --pair")
        return [load_setup(config, standin=standin)]
    if task == "all":
        if pair:
            raise ValueError("--task all runs every zoo pair; drop --pair")
        return [zoo_setup(name, standin=standin) for name in zoo.list_pairs()]
    if pair:
        return [zoo_setup(pair, standin=standin, task=task)]
    task = task or "translation"
    pairs = [n for n in zoo.list_pairs() if zoo.get_spec(n).task == task]
    if not pairs:
        raise ValueError(f"no zoo pair for task {task!r}; tasks with pairs: "
                         f"{sorted({zoo.get_spec(n).task for n in zoo.list_pairs()})}")
    return [zoo_setup(pairs[0], standin=standin)]


def check_built(setups: Sequence[Setup], standin: bool) -> None:
    """Refuse, before any decoding, a zoo pair whose weights are not in this installation (stand-ins and
    setups of other models need none)."""
    from specref import zoo

    for setup in setups:
        if standin or setup.pair not in zoo.list_pairs() or zoo.is_built(setup.pair):
            continue
        raise FileNotFoundError(
            f"zoo pair {setup.pair!r} has no trained weights in this installation ({zoo.BUILD_HINT}); "
            "add --standin to check the pipeline with tiny random-init models instead"
        )
