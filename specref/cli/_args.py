"""Argument types and the flags shared by the subcommands: one name, one default, one help text each.

Nothing here imports torch or transformers: ``specref CMD --help`` must answer at once. Every flag's help
ends with its default, so a user can predict a command without reading its code.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from specref.defaults import (
    DEFAULT_ENGINE,
    DEFAULT_GAMMA,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    DTYPES,
    ENGINES,
)

__all__ = [
    "add_cost_ratio",
    "add_device",
    "add_dtype",
    "add_engine",
    "add_plugins",
    "add_progress",
    "float_tuple",
    "fraction",
    "int_tuple",
    "nonneg_float",
    "out_dir",
    "positive_int",
    "probability",
    "finite_float",
    "nonneg_int",
    "top_p",
]


def _num(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
            from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """Any finite number (the rule checks its own range)."""
    return float(_num(text, float))


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _num(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    value = _num(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    value = _num(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1]."""
    value = _num(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in the open interval (0, 1)."""
    value = _num(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text!r}")
    return value


def top_p(text: str) -> float | None:
    """Top-p in (0, 1]; ``none`` (or 1) turns it off."""
    if text.strip().lower() in ("none", "off", "1", "1.0"):
        return None
    value = _num(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"top-p must be in (0, 1] (or 'none'), got {text!r}")
    return value


def float_tuple(text: str) -> tuple[float, ...]:
    """``"0,0.5,1"`` -> ``(0.0, 0.5, 1.0)``, with an argparse error naming the bad text."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def int_tuple(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def out_dir(text: str) -> Path:
    """An output folder: created if missing; an existing file (or anything not a folder) is refused."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder; give a folder for the output")
    return path


# ---- the shared flags ------------------------------------------------------------------------------------


def add_device(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:1, mps, ... (default: auto = cuda if available, else cpu)")


def add_dtype(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="model dtype (default: auto = bfloat16 on a GPU, float32 elsewhere)")


def add_engine(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--engine", default=DEFAULT_ENGINE, choices=ENGINES,
                   help="decoding engine, identical outputs at different speeds; 'graph' is the fastest on a GPU, "
                        f"'fast' on a CPU (docs/performance.md) (default: {DEFAULT_ENGINE})")


def add_cost_ratio(p: argparse.ArgumentParser | argparse._ArgumentGroup, default_help: str) -> None:
    p.add_argument("--cost-ratio", type=nonneg_float, default=None, metavar="C",
                   help=f"draft/target step cost c of the modeled latency (default: {default_help})")


def add_plugins(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, to register rules of your own (repeatable; also SPECREF_PLUGINS "
                        "and entry points of group specref.rules; docs/architecture.md) (default: none)")


def add_progress(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown on a terminal)")


#: Shared defaults a subcommand's help text quotes (the values live in specref.defaults).
DEFAULTS = {
    "gamma": DEFAULT_GAMMA,
    "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
    "temperature": DEFAULT_TEMPERATURE,
    "seed": DEFAULT_SEED,
}
