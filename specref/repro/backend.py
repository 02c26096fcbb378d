"""The one seam between the sweep machinery and the models: decode a list of examples for one method config.

Everything in :mod:`specref.repro` (planning, resuming, summaries, plots) talks to a :class:`Backend`, so it
can be built and tested without models; :mod:`specref.repro.hf` implements it over :mod:`specref.decode`
and a Hugging Face draft/target pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Backend", "DecodeOutput", "DecodeRequest"]


@dataclass(frozen=True)
class DecodeRequest:
    """One method configuration to decode a list of examples with.

    ``seed`` is the trial's seed; a backend derives each example's random stream from it and the example's
    id, so an output never depends on the batch it was decoded in or on which other examples were chosen.
    """

    method: str
    alpha: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    gamma: int = 5
    temperature: float = 1.0
    top_p: float | None = None
    seed: int = 0
    max_new_tokens: int = 64
    batch_size: int = 16


@dataclass(frozen=True)
class DecodeOutput:
    """Predictions and cost statistics of one decode, summed over the examples.

    Call counts use batch-1 accounting: a batched forward counts once for every row still decoding in it,
    so counts are deterministic and match the paper's batch-1 latency model whatever the batch size.

    Attributes:
        predictions: decoded completions (text), one per example, in input order.
        tokens: emitted tokens.
        target_calls: target forward calls (per-row accounting).
        draft_calls: draft forward steps (per-row accounting).
        drafted: draft tokens proposed for verification (0 for target-only and sequential baselines).
        rejected: drafted tokens rejected by the verifier.
        deferrals: positions at which the method deferred to the target (or the target was consulted).
        positions: positions at which a deferral decision was taken (denominator of the deferral rate).
        wall_s: seconds spent decoding (tokenization excluded; the device synchronised).
    """

    predictions: list[str]
    tokens: int
    target_calls: float
    draft_calls: float
    drafted: float
    rejected: float
    deferrals: float
    positions: float
    wall_s: float


class Backend(Protocol):
    """A draft/target pair ready to decode a task's examples."""

    #: Human-readable device ("cpu", "cuda:0 (NVIDIA H100)"), stored with every row.
    device: str

    def decode(self, request: DecodeRequest, examples: list[Any]) -> DecodeOutput:
        """Decode ``examples`` (task examples) with the configuration in ``request``."""
        ...

    def cost_ratio(self) -> tuple[float, str]:
        """Default draft/target step cost ratio ``c`` and where it comes from ("card", "params", ...)."""
        ...

    def warmup(self) -> None:
        """Run a tiny decode so one-time costs (allocation, kernels) do not land in the first timed point."""
        ...
