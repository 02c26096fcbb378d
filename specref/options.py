"""Argument types and the flags shared by the subcommands: one name, one default, one help text each.

Nothing here imports torch or transformers: ``specref CMD --help`` must answer at once. Every flag's help
ends with its default, so a user can predict a command without reading its code. It stands below both the
command line (:mod:`specref.cli`) and the torchrun workers of :mod:`specref.repro.distributed`, which parse
``specref reproduce``'s options themselves, and imports neither.
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
    "add_tp_size",
    "add_reproduce_arguments",
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


def _numbers(text: str, cast: type, what: str) -> tuple:
    """Comma-separated ``cast`` values, with an argparse error naming the bad text."""
    try:
        values = tuple(cast(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}s, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one {what}, got {text!r}")
    return values


def float_tuple(text: str) -> tuple[float, ...]:
    """``"0,0.5,1"`` -> ``(0.0, 0.5, 1.0)``; NaN and inf are refused."""
    values = _numbers(text, float, "number")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def int_tuple(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``."""
    return _numbers(text, int, "integer")


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


def add_tp_size(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--tp-size", type=positive_int, default=1, metavar="N",
                   help="shard the target over N processes with transformers' tensor parallelism (one GPU each "
                        "with --device cuda, gloo processes on a CPU), re-launching through torchrun; the draft "
                        "runs whole on every rank, the tokens equal a one-process run's up to kernel rounding; "
                        "decoder-only targets, engines plain, fast and static (default: 1, not sharded)")


def add_cost_ratio(p: argparse.ArgumentParser | argparse._ArgumentGroup, default_help: str) -> None:
    p.add_argument("--cost-ratio", type=nonneg_float, default=None, metavar="C",
                   help=f"draft/target step cost c of the modeled latency (default: {default_help})")


def add_plugins(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, to register rules of your own (repeatable; also SPECREF_PLUGINS "
                        "and entry points of group specref.rules; docs/architecture.md) (default: none)")


def add_progress(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown on a terminal)")


# ---- the options of `specref reproduce` -----------------------------------------------------------------


def add_reproduce_arguments(p: argparse.ArgumentParser, default_sweep: str = "main") -> None:
    """The options of ``specref reproduce``, shared by ``specref sweep`` and the torchrun workers
    (:mod:`specref.repro.distributed`); :func:`specref.repro.reproduce.config_from_args` reads them."""
    g = p.add_argument_group("what to run")
    g.add_argument("--task", default=None,
                   help="zoo task: translation (default), summarization, reasoning, or 'all' (every zoo pair)")
    g.add_argument("--pair", default=None, help="zoo pair (default: the task's pair)")
    g.add_argument("--config", default=None, metavar="YAML",
                   help="a paper setup from configs/paper/*.yaml instead of a zoo pair (default: the zoo pair)")
    g.add_argument("--standin", action="store_true",
                   help="replace the models by tiny random-init ones (pipeline check; numbers are meaningless)")
    g.add_argument("--full", action="store_true",
                   help="whole test split, full alpha grids, 3 seeds (default: quick mode, a subset)")
    g.add_argument("--sweep", default=default_sweep,
                   choices=("main", "robustness", "temperature", "gamma", "top_p", "all"),
                   help=f"main setting, robustness sweeps (temperature, gamma, top-p), one factor, or all "
                        f"(default: {default_sweep})")
    g.add_argument("--methods", default=None,
                   help="comma-separated method keys, or rules registered by a --plugin; target and draft are "
                        "always included (default: the setup's list; every key: specref.repro.methods)")
    g.add_argument("--alphas", default=None,
                   help="alphas for every method ('0,0.5,1') or per method ('chow=0,0.5;token_v3=0.2,0.8') "
                        "(default: each method's grid)")
    g.add_argument("--head", action="append", default=[], metavar="[NAME=]PATH",
                   help="trained deferral head: PATH adds SpecCascade [Learned] (method learned), NAME=PATH adds "
                        "method learned_NAME; repeatable, to compare heads on the same rows (default: none)")
    add_plugins(g)
    s = p.add_argument_group("decoding")
    s.add_argument("--temperature", type=nonneg_float, default=None,
                   help="main setting's temperature, 0 = greedy (default: the setup's, 1 for the zoo)")
    s.add_argument("--gamma", type=positive_int, default=None,
                   help="main setting's block size (default: the setup's, 5 for the zoo)")
    s.add_argument("--top-p", type=top_p, default=None, help="main setting's top-p (default: none)")
    s.add_argument("--seed", type=int_tuple, default=None, metavar="N[,N...]",
                   help="trial seed(s), averaged in the summary (default 0; --full: 0,1,2)")
    s.add_argument("--max-examples", type=positive_int, default=None,
                   help="test examples, evenly spaced over the split (default: the mode's, all with --full)")
    s.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="new tokens per example (default: the task's)")
    s.add_argument("--batch-size", type=positive_int, default=None,
                   help="examples per decoder call (default: 16 quick; --full: 32 on a CPU, 256 on a GPU)")
    s.add_argument("--split", default=None, choices=("train", "validation", "test"),
                   help="data split (default: test)")
    add_device(s)
    add_engine(s)
    add_tp_size(s)
    s.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default on cpu: 1 - the zoo models are too small to gain from more, "
                        "and extra threads contend badly on a busy machine)")
    c = p.add_argument_group("cost and summary")
    add_cost_ratio(c, "the pair card's, else the per-step parameter ratio")
    c.add_argument("--axis", default=None,
                   choices=("latency_model", "latency_wall", "target_calls_per_token", "rejection_rate"),
                   help="cost axis the summary table leads with (default: latency_model, deterministic)")
    c.add_argument("--match-tol", type=nonneg_float, default=None,
                   help="a method 'matches' the target at quality >= target - TOL, replacing the noise band "
                        "(default: the target's noise band, 2 standard errors; see specref.repro.summary)")
    c.add_argument("--no-interpolate", action="store_true",
                   help="Table 2 from measured points only (default: interpolate between frontier points)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=out_dir, default=Path("specref-out"),
                   help="output folder, created if missing (default: ./specref-out)")
    add_progress(o)
    o.add_argument("--no-plot", action="store_true", help="skip the PNG plots (default: drawn)")


#: Shared defaults a subcommand's help text quotes (the values live in specref.defaults).
DEFAULTS = {
    "gamma": DEFAULT_GAMMA,
    "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
    "temperature": DEFAULT_TEMPERATURE,
    "seed": DEFAULT_SEED,
}
