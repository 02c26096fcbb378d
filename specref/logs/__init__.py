"""Logged probabilities of a draft/target pair: schema, atomic sharded storage, logging, offline evaluation.

See docs/logs.md for the schema. Submodules load on first use: the per-position summary
(:func:`summarize`, pure tensor math in :mod:`specref.position_summary`, below both the logs and the heads)
needs only torch, so heads use it at decode time without pyarrow; the storage needs pyarrow and numpy but
not torch.
"""

from __future__ import annotations

from typing import Any

from specref.logs.schema import (
    DEFAULT_ALPHAS,
    DEFAULT_TAIL_POINTS,
    DEFAULT_TOP_K,
    FORMAT,
    VERSION,
    Column,
    LogFormatError,
    LogLayout,
    columns,
)

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_TAIL_POINTS",
    "DEFAULT_TOP_K",
    "FORMAT",
    "VERSION",
    "Column",
    "LogFormatError",
    "LogLayout",
    "LogWriter",
    "Logs",
    "columns",
    "open_logs",
    "read_logs",
    "read_summary",
    "summarize",
]

_LAZY = {
    "LogWriter": "specref.logs.store", "Logs": "specref.logs.store", "open_logs": "specref.logs.store",
    "read_logs": "specref.logs.store", "read_summary": "specref.logs.store",
    "summarize": "specref.position_summary",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'specref.logs' has no attribute {name!r}")
