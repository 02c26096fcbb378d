"""Optional timing hooks: how much of a decoding round is spent inside the models' forwards.

Pass a :class:`RoundProfiler` to ``generate(..., profiler=prof)``. The decoder then marks the start and end
of every round and every model forward (the Hugging Face call itself, or the replay of its CUDA graph);
without a profiler nothing is recorded and the hooks cost one ``is None`` test each.

On a GPU the marks are CUDA events (recorded on the current stream, read once at the end), so times are
device times and the host is not synchronised during decoding; on a CPU they are ``perf_counter`` stamps.
``outside_share`` = 1 - (time inside forwards) / (round time): rules, verification, sampling, bookkeeping,
the round's host sync, and on a GPU any idle gap where the device waited for the host to launch work.
"""

from __future__ import annotations

import time
from typing import Any

import torch

__all__ = ["RoundProfiler"]


class RoundProfiler:
    """Collects round and forward intervals; :meth:`summary` turns them into totals and shares.

    One profiler may be reused over several ``generate`` calls: intervals accumulate until :meth:`reset`.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.reset()

    def reset(self) -> None:
        self._rounds: list[tuple[Any, Any]] = []
        self._forwards: dict[str, list[tuple[Any, Any]]] = {}
        self._open_round: Any = None
        self._open_fwd: dict[str, Any] = {}

    # ---- marks (called by the decoder) -------------------------------------------------------------
    def bind(self, device: torch.device) -> None:
        """Called by ``generate``: the device whose clock the marks use."""
        if self.device is None or self.device.type != device.type:
            self.device = device

    def _mark(self) -> Any:
        if self.device is not None and self.device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def round_begin(self) -> None:
        self._open_round = self._mark()

    def round_end(self) -> None:
        if self._open_round is not None:
            self._rounds.append((self._open_round, self._mark()))
            self._open_round = None

    def forward_begin(self, role: str) -> None:
        if self._open_round is not None:  # prefill (before the first round) is not a round's forward
            self._open_fwd[role] = self._mark()

    def forward_end(self, role: str) -> None:
        start = self._open_fwd.pop(role, None)
        if start is not None:
            self._forwards.setdefault(role, []).append((start, self._mark()))

    # ---- results ------------------------------------------------------------------------------------
    @staticmethod
    def _seconds(pair: tuple[Any, Any]) -> float:
        a, b = pair
        if isinstance(a, float):
            return b - a
        b.synchronize()
        return a.elapsed_time(b) / 1000.0

    def summary(self) -> dict[str, Any]:
        """Totals in seconds, per-round means in microseconds, and the share of round time outside forwards.

        Forwards outside rounds (prefill) are excluded: only forwards that start inside a round count.
        """
        rounds = [self._seconds(r) for r in self._rounds]
        total = sum(rounds)
        per_role = {}
        inside = 0.0
        for role, pairs in self._forwards.items():
            secs = [self._seconds(p) for p in pairs]
            per_role[role] = {"calls": len(secs), "seconds": sum(secs)}
            inside += sum(secs)
        n = len(rounds)
        out = {
            "rounds": n,
            "round_seconds": total,
            "forward_seconds": inside,
            "per_role": per_role,
            "round_us": 1e6 * total / n if n else float("nan"),
            "outside_us_per_round": 1e6 * (total - inside) / n if n else float("nan"),
            "outside_share": (total - inside) / total if total > 0 else float("nan"),
        }
        return out
