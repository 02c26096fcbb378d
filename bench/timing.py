"""Timing helpers: device synchronisation, left-padded batches, and the device's measured memory bandwidth."""

from __future__ import annotations

import math
import time
from typing import Any

from bench.lazy import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def left_pad(prompts: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    w = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (w - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (w - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def measure_bandwidth(device: str, smoke: bool) -> dict[str, Any]:
    """Device memory bandwidth from a large copy: (bytes read + bytes written) / time, best of several."""
    n = (32 if smoke else 1024) * 2**20  # bytes per buffer
    a = torch.empty(n // 2, dtype=torch.bfloat16, device=device).fill_(1.0)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync(device)
    best = math.inf
    for _ in range(3 if smoke else 10):
        if device.startswith("cuda"):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            b.copy_(a)
            e1.record()
            e1.synchronize()
            dt = e0.elapsed_time(e1) / 1000
        else:
            t0 = time.perf_counter()
            b.copy_(a)
            dt = time.perf_counter() - t0
        best = min(best, dt)
    del a, b
    return {"bytes_per_copy": 2 * n, "seconds": best, "gb_per_s": 2 * n / best / 1e9}
