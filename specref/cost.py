"""Cost accounting (THEORY.md section 8): expected tokens per target call and modeled wall time.

With i.i.d. per-position acceptance ``b`` and block size ``gamma`` (Leviathan et al. 2023, Eq. 1 and
Thm 3.8), a round emits ``(1 - b**(gamma+1)) / (1 - b)`` tokens in expectation and costs ``gamma c + 1``
target-step units, where ``c`` is the cost of a draft step relative to a target step. Exact values for a
given model pair come from :mod:`specref.exact`; measured values from the decoder's statistics.
"""

from __future__ import annotations

__all__ = ["expected_tokens_per_call", "modeled_relative_latency", "walltime_factor"]


def _check(b: float, gamma: int) -> None:
    if not (0.0 <= b <= 1.0):
        raise ValueError(f"acceptance rate must be in [0, 1], got {b!r}")
    if int(gamma) != gamma or gamma < 1:
        raise ValueError(f"gamma must be an integer >= 1, got {gamma!r}")


def expected_tokens_per_call(b: float, gamma: int) -> float:
    """``(1 - b^(gamma+1)) / (1 - b)``; equals ``gamma + 1`` at ``b = 1``."""
    _check(b, gamma)
    if b == 1.0:
        return float(gamma + 1)
    return (1 - b ** (gamma + 1)) / (1 - b)


def walltime_factor(b: float, gamma: int, c: float) -> float:
    """Speed-up over target-only decoding: ``(1 - b^(gamma+1)) / ((1 - b)(gamma c + 1))``."""
    if c < 0:
        raise ValueError(f"cost ratio c must be >= 0, got {c!r}")
    return expected_tokens_per_call(b, gamma) / (gamma * c + 1)


def modeled_relative_latency(target_calls: float, draft_calls: float, tokens: float, c: float) -> float:
    """Latency relative to target-only decoding of the same tokens: ``(target_calls + c draft_calls) / tokens``.

    Target-only decoding spends one target step per token, so 1.0 means "as slow as the target alone".
    """
    if tokens <= 0:
        raise ValueError("tokens must be > 0")
    if c < 0:
        raise ValueError(f"cost ratio c must be >= 0, got {c!r}")
    return (target_calls + c * draft_calls) / tokens
