"""The run's clock: progress lines stamped with the seconds since the run started."""

from __future__ import annotations

import time

_T0 = time.perf_counter()


def restart() -> None:
    """Start the clock again (at the start of a run)."""
    global _T0
    _T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def elapsed() -> float:
    return time.perf_counter() - _T0
