"""The session protocol: one model's KV state during one ``generate`` call, as the decoders use it.

Two implementations: the dynamic :class:`specref.decode.adapters.Session` (a cache that grows, ``plain`` and
``fast`` engines, causal and seq2seq models) and :class:`specref.decode.static.StaticSession` (every shape
fixed for the call, the static engines). The decoders only call what :class:`KVSession` lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

__all__ = ["ForwardOut", "KVSession"]


@dataclass
class ForwardOut:
    """Logits ``[B, n, V]`` (vocabulary already cut to the shared size) and optional last hidden states."""

    logits: Tensor
    hidden: Tensor | None = None


class KVSession(Protocol):
    """What a decoder may ask of a session (rows may leave the batch as they finish)."""

    role: str
    forwards: int
    compactions: int
    #: optional :class:`~specref.decode.profile.RoundProfiler`
    profiler: Any

    @property
    def contiguous(self) -> bool:
        """Whether each row's live slots must stay contiguous (then the decoder calls :meth:`realign`)."""

    @property
    def batch(self) -> int:
        """Rows still in the batch."""

    def forward(
        self,
        tokens: Tensor,  # [B, n]
        positions: Tensor,  # [B, n] logical positions
        real: Tensor | None = None,  # [B, n] bool: live slots (default all)
        *,
        hidden: bool = False,
        logits: bool = True,
    ) -> ForwardOut:
        """Append a block of ``n`` tokens for every row; return their logits (and last hidden states)."""

    def keep_last(self, n: int, keep: Tensor) -> None:
        """Of the last forward's ``n`` slots keep only ``keep`` ``[B, n]``."""

    def truncate(self, lengths: Tensor, rows: Tensor | None = None) -> None:
        """Roll back rows (where ``rows`` ``[B]``) to positions ``< lengths`` ``[B]``."""

    def summary(self) -> Tensor:
        """``[3]`` long device tensor for the round's one host sync (:func:`specref.decode.kvcache.slot_summary`)."""

    def maintain(self, summary: list[int], rows: Tensor | None = None) -> None:
        """Tidy the cache with the host copy of :meth:`summary`; optionally keep only batch ``rows``."""

    def realign(self) -> None:
        """Right-align live slots without a host sync (contiguous sessions)."""
