"""Why is the eager ``fast`` engine slower than ``plain`` on a GPU? A side-by-side diagnosis in one run.

On the first H100 run (bench/results/nvidia-h100-partial-2026-11-25.*) SpecDecode at batch 1 ran at 53.7 tok/s
with ``fast`` and 105.2 tok/s with ``plain``, although ``fast`` launches fewer kernels per round and both
produce identical tokens. This script decodes the same prompts with the bench's pair shapes (random init:
the speed of a forward does not depend on the weights, and both engines replay the same draws) and reports,
per engine, side by side in one process:

- tokens/s and per-role forward times (``RoundProfiler``);
- a torch.profiler trace summary: CUDA kernel time, kernel launches, host-blocking calls
  (``cudaStreamSynchronize`` / ``cudaDeviceSynchronize`` / ``cudaEventSynchronize`` and device-to-host copies),
  and the ops that cost the most host time - i.e. whether a round is GPU-bound, launch-bound or sync-bound.

Variants besides the two engines isolate suspects (each also decodes identical tokens):

- ``fast+contig-mask``: the fast engine with its attention mask made contiguous (it is a strided view of the
  slot table; SDPA's fused kernels want aligned masks);

    python bench/eager_engines.py --device cuda --out bench/results/eager-engines.json

About 3 minutes per batch size on an H100 (the profiled passes are slow): the first run,
``bench/results/nvidia-h100-eager-engines-2026-11-26.log``, was cut at 380 s during batch 8.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402

from bench.models import PAIR_SHAPES, cast, llama  # noqa: E402
from specref.decode import make_decoder  # noqa: E402
from specref.decode.profile import RoundProfiler  # noqa: E402

BLOCKING = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense",
            "aten::item", "aten::nonzero")


def contiguous_mask(original: Any) -> Any:
    """``Session._mask_after_append`` returning a contiguous copy of the fast engine's mask view."""

    def patched(self: Any, real: Any, n: int) -> Any:
        return original(self, real, n).contiguous()

    return patched


def trace_summary(prof: Any, top: int) -> dict[str, Any]:
    events = prof.key_averages()
    kernels = [e for e in events if getattr(e, "device_type", None) is not None and "CUDA" in str(e.device_type)]
    device_us = sum(e.self_device_time_total for e in kernels) if kernels else None
    by_name = {e.key: e for e in events}
    launches = sum(by_name[k].count for k in by_name if k in ("cudaLaunchKernel", "cudaLaunchKernelExC",
                                                               "cuLaunchKernel", "cuLaunchKernelEx"))
    blocking = {k: {"count": by_name[k].count, "cpu_us": round(by_name[k].cpu_time_total, 1)}
                for k in BLOCKING if k in by_name}
    memcpy = {k: by_name[k].count for k in by_name if "Memcpy" in k or "memcpy" in k}
    host = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)[:top]
    dev = sorted(kernels, key=lambda e: -e.self_device_time_total)[:top] if kernels else []
    return {
        "kernel_time_us": device_us, "kernel_launches": launches, "blocking": blocking, "memcpy_calls": memcpy,
        "top_host_ops": [{"op": e.key, "count": e.count, "self_cpu_us": round(e.self_cpu_time_total, 1)}
                         for e in host],
        "top_kernels": [{"kernel": e.key[:120], "count": e.count, "us": round(e.self_device_time_total, 1)}
                        for e in dev],
    }


def decode_once(dec: Any, ids: Any, mask: Any, max_new_tokens: int, device: Any, prof: Any = None) -> tuple[float, Any]:
    """One timed SpecDecode generate (same seed every time: every engine replays the same draws)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = dec.generate(ids, mask, max_new_tokens=max_new_tokens, temperature=1.0, seed=5, profiler=prof)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU check of the script)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    t_shape, d_shape = PAIR_SHAPES["smoke" if args.smoke else "full"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    draft = cast(llama(d_shape, args.vocab, tied=True), dtype).to(device).eval()
    target = cast(llama(t_shape, args.vocab, tied=False), dtype).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "shapes": {"target": t_shape, "draft": d_shape},
                              "runs": {}}
    variants = [("plain", "plain", False), ("fast", "fast", False), ("fast+contig-mask", "fast", True)]
    from specref.decode import adapters

    original_mask = adapters.Session._mask_after_append
    try:
        measure(args, draft, target, device, gen, variants, original_mask, result)
    finally:  # the patch is process-wide: never leave it behind (tests run in one process)
        adapters.Session._mask_after_append = original_mask
    save(result, args.out)
    return 0


def measure(args: argparse.Namespace, draft: Any, target: Any, device: Any, gen: Any, variants: list,
            original_mask: Any, result: dict[str, Any]) -> None:
    from specref.decode import adapters

    for b in args.batch:
        ids = torch.randint(3, args.vocab, (b, args.prompt_len), generator=gen).to(device)
        mask = torch.ones_like(ids)
        tokens_by_variant = {}
        for name, engine, contig in variants:
            adapters.Session._mask_after_append = contiguous_mask(original_mask) if contig else original_mask
            dec = make_decoder(draft, target, "specdecode", gamma=5, engine=engine)

            run = functools.partial(decode_once, dec, ids, mask, args.max_new_tokens, device)
            run()  # warm-up
            wall, out = min((run() for _ in range(2)), key=lambda r: r[0])
            rp = RoundProfiler(device)
            run(rp)
            acts = [torch.profiler.ProfilerActivity.CPU]
            if device.type == "cuda":
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=acts) as prof:
                run()
            tokens = int(out.lengths.sum())
            rounds = int(out.stats.num_rounds)
            tokens_by_variant[name] = out.token_lists()
            row = {"batch": b, "engine": engine, "tokens": tokens, "rounds": rounds, "wall_s": round(wall, 4),
                   "tokens_per_s": round(tokens / wall, 1), "ms_per_round": round(1000 * wall / max(rounds, 1), 3),
                   "round_profile": rp.summary(), "trace": trace_summary(prof, args.top)}
            result["runs"][f"{name}/b{b}"] = row
            tr = row["trace"]
            print(f"b{b} {name:18s} {row['tokens_per_s']:8.1f} tok/s  {row['ms_per_round']:7.2f} ms/round  "
                  f"kernels {tr['kernel_launches']}  kernel time {tr['kernel_time_us']} us  "
                  f"blocking {tr['blocking']}", flush=True)
            save(result, args.out)  # after every variant: a run cut short keeps what it measured
        same = {k: v == tokens_by_variant["plain"] for k, v in tokens_by_variant.items()}
        result["runs"][f"identical_tokens/b{b}"] = same
        print(f"b{b} identical tokens vs plain: {same}", flush=True)


def save(result: dict[str, Any], path: str | None) -> None:
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(result, fh, indent=1)
        os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
