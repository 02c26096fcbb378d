"""Decoding measurements: tokens/s and latency of a specref decoder and of transformers' ``generate``."""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.lazy import RoundProfiler, torch
from bench.timing import left_pad, sync


def groups(prompts: list[list[int]], batch: int, requests: int) -> list[list[list[int]]]:
    """The batches one timed pass decodes: ``requests`` prompts one after the other at batch 1, else one batch."""
    return [[p] for p in prompts[:requests]] if batch == 1 else [prompts[:batch]]


def assisted(draft: Any, gamma: int) -> dict[str, Any]:
    """``generate`` keywords of transformers' assisted generation with a constant ``gamma`` draft tokens."""
    gc = draft.generation_config
    gc.num_assistant_tokens = gamma
    gc.num_assistant_tokens_schedule = "constant"
    gc.assistant_confidence_threshold = 0.0
    return {"assistant_model": draft}


def run_ours(dec: Any, prompts: list[list[int]], batch: int, args: argparse.Namespace, device: str,
             profile: bool = False) -> dict[str, Any]:
    """specref decoder: tokens/s and per-request latency (best of ``repeats`` after one identical warm-up)."""
    grps = groups(prompts, batch, args.requests)

    def once(seed: int, prof: Any = None) -> tuple[float, int, list[float], list[Any]]:
        wall, tokens, lat, stats = 0.0, 0, [], []
        for k, grp in enumerate(grps):
            ids, mask = left_pad(grp)
            ids, mask = ids.to(device), mask.to(device)
            sync(device)
            t0 = time.perf_counter()
            out = dec.generate(ids, mask, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               seed=seed + 100 * k, profiler=prof)
            sync(device)
            dt = time.perf_counter() - t0
            wall += dt
            lat.append(dt)
            tokens += int(out.lengths.sum())
            stats.append(out.stats)
        return wall, tokens, lat, stats

    once(0)  # warm-up with the timed shapes (static engines capture their graphs here)
    if profile:
        prof = RoundProfiler(device)
        once(7, prof)
        return {"profile": prof.summary()}
    best, each = None, []
    for r in range(args.repeats):
        res = once(1000 * (r + 1))
        each.append(res[1] / res[0])
        if best is None or res[0] < best[0]:
            best = res
    wall, tokens, lat, stats = best
    drafted = sum(int(s.drafted.sum()) for s in stats)
    accepted = sum(int(s.accepted.sum()) for s in stats)
    tcalls = sum(int(s.target_calls.sum()) for s in stats)
    row = {
        "tokens_per_s": tokens / wall, "tokens": tokens, "wall_s": wall,
        "tokens_per_s_each": each,  # every timed pass (other seeds): the run-to-run spread
        "latency_ms": 1000 * sum(lat) / len(lat),
        "acceptance_rate": accepted / drafted if drafted else None,
        "tokens_per_target_call": tokens / tcalls if tcalls else None,
        "target_forwards": sum(s.target_forwards for s in stats),
        "draft_forwards": sum(s.draft_forwards for s in stats),
        "rounds": sum(s.num_rounds for s in stats),
    }
    gamma_rounds: dict[int, int] = {}
    for s in stats:  # a block-size policy's rounds per block size, over the timed pass's batches
        for g, n in s.gamma_rounds.items():
            gamma_rounds[int(g)] = gamma_rounds.get(int(g), 0) + int(n)
    if gamma_rounds:
        total = sum(gamma_rounds.values())
        row.update(gamma_rounds={str(g): n for g, n in sorted(gamma_rounds.items())},
                   mean_gamma=sum(g * n for g, n in gamma_rounds.items()) / total,
                   zero_share=gamma_rounds.get(0, 0) / total)
    return row


def run_hf(target: Any, draft: Any | None, prompts: list[list[int]], batch: int, args: argparse.Namespace,
           device: str) -> dict[str, Any]:
    """transformers' generate: target-only (batched, left-padded) or assisted (batch 1)."""
    kw: dict[str, Any] = {"do_sample": args.temperature > 0, "max_new_tokens": args.max_new_tokens,
                          "min_new_tokens": args.max_new_tokens, "pad_token_id": 0, "eos_token_id": None}
    if args.temperature > 0:
        kw.update(temperature=args.temperature, top_k=0, top_p=1.0)
    if draft is not None:
        kw.update(assisted(draft, args.gamma))
    grps = groups(prompts, batch, args.requests)

    def once(seed: int) -> tuple[float, int, list[float]]:
        wall, tokens, lat = 0.0, 0, []
        for k, grp in enumerate(grps):
            ids, mask = left_pad(grp)
            ids, mask = ids.to(device), mask.to(device)
            torch.manual_seed(seed + k)
            sync(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = target.generate(ids, attention_mask=mask, **kw)
            sync(device)
            dt = time.perf_counter() - t0
            wall += dt
            lat.append(dt)
            tokens += (out.shape[1] - ids.shape[1]) * ids.shape[0]
        return wall, tokens, lat

    once(0)
    best = min((once(1000 * (r + 1)) for r in range(args.repeats)), key=lambda x: x[0])
    return {"tokens_per_s": best[1] / best[0], "tokens": best[1], "wall_s": best[0],
            "latency_ms": 1000 * sum(best[2]) / len(best[2])}
