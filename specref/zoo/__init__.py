"""The embedded model zoo: small draft/target pairs trained by the project on the shipped task data.

Pairs live as package data under ``specref/zoo/pairs/<pair>/{draft,target,tokenizer}/`` and load offline
with the standard ``from_pretrained(path, local_files_only=True)``; ``trust_remote_code`` is never set.
Zoo names (``bible-en-es-t5:draft``) work wherever a model path does: every command loads models through
:mod:`specref.loading`, which gives a zoo name its folder (:func:`resolve_model`) and its pair's tokenizer
(``specref.loading.load_pair("bible-en-es-t5")`` loads a whole pair). This module is only data about the
pairs and imports no loader, so :mod:`specref.loading` can build on it. Weights are built by
``training/zoo`` (see ``training/zoo/README.md``); until then loading a pair says how (:data:`BUILD_HINT`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ZOO_DIR", "ROLES", "BUILD_HINT", "PairSpec", "list_pairs", "get_spec", "get_card", "pair_dir", "is_built",
    "resolve_model",
]

ZOO_DIR = Path(__file__).resolve().parent / "pairs"
ROLES = ("draft", "target")
BUILD_HINT = (
    "build it on a GPU machine with `python -m training.zoo.train_all --out OUT --minutes 7 --devices 0`, "
    "then here `python -m training.zoo.finalize --from OUT` (see training/zoo/README.md)"
)


@dataclass(frozen=True)
class PairSpec:
    """What a pair is for, independent of whether its weights exist yet."""

    name: str
    task: str
    family: str  # "seq2seq" or "causal"
    architecture: str
    description: str


_SPECS = {
    spec.name: spec
    for spec in (
        PairSpec("bible-en-es-t5", "translation", "seq2seq", "T5ForConditionalGeneration",
                 "T5 pair for English -> Spanish Bible verse translation (stands in for WMT)"),
        PairSpec("stdlib-doc-t5", "summarization", "seq2seq", "T5ForConditionalGeneration",
                 "T5 pair writing the first docstring sentence of a Python function (stands in for XSum)"),
        PairSpec("arith-llama", "reasoning", "causal", "LlamaForCausalLM",
                 "Llama decoder-only pair solving arithmetic word problems (stands in for GSM8K)"),
    )
}


def list_pairs() -> list[str]:
    """Names of the zoo pairs (built or not)."""
    return list(_SPECS)


def get_spec(name: str) -> PairSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown zoo pair {name!r}; the zoo has {list_pairs()}") from None


def pair_dir(name: str) -> Path:
    return ZOO_DIR / get_spec(name).name


def is_built(name: str) -> bool:
    """True when both models of the pair have a config and weights on disk."""
    folder = pair_dir(name)
    return all((folder / role / f).is_file() for role in ROLES for f in ("config.json", "model.safetensors"))


def get_card(name: str) -> dict:
    """The pair's card: its spec, ``built``, and, once trained, everything in ``card.json``."""
    spec = get_spec(name)
    card: dict = {
        "name": spec.name, "task": spec.task, "family": spec.family, "architecture": spec.architecture,
        "description": spec.description,
    }
    file = pair_dir(name) / "card.json"
    if file.is_file():
        card.update(json.loads(file.read_text()))
    card["built"] = is_built(name)
    return card


def _split_zoo_name(spec: str) -> tuple[str, str] | None:
    for sep in (":", "/"):
        if sep in spec:
            pair, role = spec.split(sep, 1)
            if pair in _SPECS:
                return pair, role
    return None


def resolve_model(name_or_path: str | Path, role: str | None = None) -> str:
    """A path usable by ``from_pretrained`` for a zoo name; anything else is returned unchanged.

    Zoo names are ``<pair>:<role>`` (or ``<pair>/<role>``) with role ``draft``, ``target`` or
    ``tokenizer``, or a bare pair name together with ``role``. An existing local path always wins, and a
    hub id or path that is not a zoo name passes through, so callers can use this everywhere.
    """
    text = str(name_or_path)
    if Path(text).exists():
        return text
    parsed = _split_zoo_name(text)
    if parsed is None and text in _SPECS:
        if role is None:
            raise ValueError(f"{text!r} is a zoo pair: say which model, e.g. '{text}:draft' or '{text}:target'")
        parsed = (text, role)
    if parsed is None:
        return text
    pair, which = parsed
    if which not in (*ROLES, "tokenizer"):
        raise ValueError(f"unknown role {which!r} in {text!r}; use draft, target or tokenizer")
    folder = pair_dir(pair) / which
    if which != "tokenizer" and not is_built(pair):
        raise FileNotFoundError(f"zoo pair {pair!r} is not built yet (no weights in {folder}); {BUILD_HINT}")
    if not folder.is_dir():
        raise FileNotFoundError(f"zoo pair {pair!r} has no {which} folder at {folder}; {BUILD_HINT}")
    return str(folder)

