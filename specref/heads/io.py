"""Export and import of heads: safetensors weights + a JSON config, no pickle.

A saved head is a directory::

    head.json          {"format": "specref-head", "version": 1, "config": {...}, "weights": {file, sha256, bytes}}
    head.safetensors   the module's state dict (parameters and buffers)

Loading checks the JSON, that the weights file named there is a file inside the head's folder, its size and
sha256 (a truncated or modified file is caught before it is parsed), the safetensors header, that the
tensors match the config exactly (names, shapes, dtypes) and that every one is finite (a NaN weight would
make every estimate NaN, and a NaN comparison never defers: the head would decode as the draft alone).
Every failure is a :class:`HeadFormatError` naming the file (and the tensor).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from specref.atomic import write_atomic
from specref.heads.modules import Head, build_head

__all__ = ["FORMAT", "VERSION", "HeadFormatError", "load", "save"]

FORMAT = "specref-head"
VERSION = 1
CONFIG_FILE = "head.json"
WEIGHTS_FILE = "head.safetensors"


class HeadFormatError(ValueError):
    """A saved head that is missing, corrupt, truncated or does not match its config."""


def save(head: Head, path: str | os.PathLike[str]) -> Path:
    """Write ``head`` to the directory ``path`` (created if needed); returns the directory."""
    from safetensors.torch import save as st_save

    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise HeadFormatError(f"cannot save a head to {directory}: it exists and is not a folder")
    state = {name: t.detach().cpu().contiguous() for name, t in head.state_dict().items()}
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            # A diverged training run: refuse here rather than export a head that load() would refuse.
            raise HeadFormatError(f"cannot save the head to {directory}: {name} holds non-finite values (NaN/inf)")
    directory.mkdir(parents=True, exist_ok=True)
    config = head.config()
    blob = st_save(state, metadata={"format": FORMAT, "version": str(VERSION)})
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)},
    }
    # Weights first: a crash in between leaves an old config whose checksum rejects the new weights.
    write_atomic(directory / WEIGHTS_FILE, blob)
    write_atomic(directory / CONFIG_FILE, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    return directory


def _resolve(path: Path) -> Path:
    if path.is_dir():
        return path
    if path.name in (CONFIG_FILE, WEIGHTS_FILE):
        return path.parent
    raise HeadFormatError(f"{path} is not a saved head (expected a directory with {CONFIG_FILE} and {WEIGHTS_FILE})")


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    directory = _resolve(Path(path))
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise HeadFormatError(f"{directory} has no {CONFIG_FILE}; not a saved head")
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HeadFormatError(f"{cfg_path} is corrupt (not valid JSON): {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise HeadFormatError(f"{cfg_path} is not a {FORMAT} file")
    if doc.get("version") != VERSION:
        raise HeadFormatError(f"{cfg_path} has version {doc.get('version')!r}; this reader reads {VERSION}")
    return doc


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Head:
    """Load a head saved by :func:`save`, ready for ``rules.get("learned", head=..., alpha=...)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    directory = _resolve(Path(path))
    doc = read_config(directory)
    try:
        weights = doc["weights"]
        w_path = _weights_path(directory, weights["file"])
        expected_sha, expected_bytes = str(weights["sha256"]), int(weights["bytes"])
        head = build_head(doc["config"])
    except HeadFormatError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise HeadFormatError(f"{directory / CONFIG_FILE} has a malformed config: {err}") from None
    if not w_path.is_file():
        raise HeadFormatError(f"weights file {w_path} is missing")
    blob = w_path.read_bytes()
    if len(blob) != expected_bytes:
        raise HeadFormatError(f"weights file {w_path} is truncated or was replaced: {len(blob)} bytes, "
                              f"the config says {expected_bytes}")
    if hashlib.sha256(blob).hexdigest() != expected_sha:
        raise HeadFormatError(f"weights file {w_path} is corrupt: its sha256 does not match {CONFIG_FILE}")
    try:
        state = st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise HeadFormatError(f"weights file {w_path} is not valid safetensors: {err}") from None
    own = head.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise HeadFormatError(
            f"weights in {w_path} do not match the config: missing {missing}, unexpected {unexpected}"
        )
    for name, tensor in own.items():
        if state[name].shape != tensor.shape or state[name].dtype != tensor.dtype:
            raise HeadFormatError(
                f"weights in {w_path}: {name} is {tuple(state[name].shape)} {state[name].dtype}, the config needs "
                f"{tuple(tensor.shape)} {tensor.dtype}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(state[name]).all()):
            bad = int((~torch.isfinite(state[name])).sum())
            raise HeadFormatError(f"weights in {w_path}: {name} holds {bad} non-finite values (NaN/inf); "
                                  "a head with them cannot estimate anything")
    scale = state.get("scaler.scale")
    if scale is not None and bool((scale == 0).any()):
        raise HeadFormatError(f"weights in {w_path}: scaler.scale has zeros (the standardiser would divide by 0)")
    head.load_state_dict(state, strict=True)
    # which weights these are: a sweep that resumes must not mix rows of two heads under one method name
    head.weights_sha256 = expected_sha
    return head.to(map_location).eval()


def _weights_path(directory: Path, name: Any) -> Path:
    """The weights file named in head.json: a plain file inside the head's folder, never a path out of it."""
    if not isinstance(name, str) or not name:
        raise HeadFormatError(f"{directory / CONFIG_FILE}: weights file must be a file name, got {name!r}")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise HeadFormatError(f"{directory / CONFIG_FILE}: weights file {name!r} is outside the head's folder; "
                              "it must be a file name inside it (like head.safetensors)")
    path = directory / rel
    # A symlink could still lead out of the folder: compare the resolved locations.
    if not path.resolve().is_relative_to(directory.resolve()):
        raise HeadFormatError(f"{directory / CONFIG_FILE}: weights file {name!r} resolves outside the head's "
                              f"folder ({path.resolve()})")
    return path
