"""Warm-up of compiled decoders in a fresh process: with an empty compiled-artifact cache, and with a warm one.

``torch.compile`` keeps what it generates on disk (Inductor's FX-graph cache and the AOTAutograd cache, under
``TORCHINDUCTOR_CACHE_DIR``; Triton's kernels under ``TRITON_CACHE_DIR``), so a later process that builds a
decoder on the same shapes loads the generated kernels instead of compiling them; dynamo still traces each
step and the CUDA graphs are captured again. specref's compiled engines (``compile``, ``compile-graph``)
compile one static shape per model, batch, capacity and block width, so a decoder whose shapes were compiled
before by any process on the machine starts from that cache. This bench measures it: two fresh processes in a
row share one empty cache folder (made for the run and removed after it, or ``--cache DIR``, kept); each builds
the models (random weights: compiled code depends on shapes, not values), then for each method creates the
decoder and times its first ``generate`` call (tracing, compiling or loading, graph capture, one decode) and a
second, warm call. The
first process compiles everything (cold), the second finds it (warm). Inductor's cache hit and miss counters
are reported beside the times, so a warm start is shown to come from the cache.

    python bench/compile_warmup.py --smoke --out /tmp/warm                     # CPU, tiny Llamas, engine compile
    PYTHONUNBUFFERED=1 python bench/compile_warmup.py --out bench/results/nvidia-h200-compile-warmup-DATE
                                                                                # GPU: 7B target, 1B draft
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.output import strip_suffix, write_report  # noqa: E402
from specref.options import positive_int  # noqa: E402

#: the goal for a decoder whose shapes were compiled before
GOAL_S = 30.0


def child(a: argparse.Namespace) -> dict[str, Any]:
    """In this (fresh) process: build the models, then per method the first and a second ``generate``."""
    import torch
    from torch._dynamo.utils import counters

    from bench.realistic import SHAPES, build, random_prompts
    from bench.timing import left_pad, sync
    from specref.decode import make_decoder

    device = a.device
    shapes = SHAPES["smoke" if a.smoke else "full"]
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    target = build(*shapes["target"], vocab=shapes["vocab"], device=device, dtype=dtype)
    draft = build(*shapes["drafts"][a.draft], vocab=shapes["vocab"], device=device, dtype=dtype)
    out: dict[str, Any] = {"build_s": time.perf_counter() - t0, "methods": {}}
    prompts = random_prompts(a.batch, a.prompt_len, shapes["vocab"], 0)
    ids, mask = left_pad(prompts)
    ids, mask = ids.to(device), mask.to(device)
    for method in a.methods.split(","):
        before = {k: counters["inductor"].get(k, 0) for k in ("fxgraph_cache_hit", "fxgraph_cache_miss")}
        t0 = time.perf_counter()
        dec = make_decoder(target if method == "target" else draft, target, method, gamma=a.gamma, engine=a.engine)
        times = []
        for seed in (1, 2):
            sync(device)
            t1 = time.perf_counter()
            res = dec.generate(ids, mask, max_new_tokens=a.max_new_tokens, temperature=a.temperature, seed=seed)
            sync(device)
            times.append(time.perf_counter() - t1)
        out["methods"][method] = {
            "first_call_s": time.perf_counter() - t0 - times[1],  # decoder creation + first generate
            "second_call_s": times[1], "tokens": int(res.lengths.sum()),
            **{k: counters["inductor"].get(k, 0) - v for k, v in before.items()}}
    return out


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Two fresh child processes sharing one empty cache folder: cold, then warm."""
    import torch

    if a.cache:  # kept after the run, so later processes start warm; it must start empty (a cold first pass)
        if os.path.isdir(a.cache) and os.listdir(a.cache):
            raise ValueError(f"--cache {a.cache!r} is not empty; the first pass must start cold")
        os.makedirs(a.cache, exist_ok=True)
        cache = a.cache
    else:
        cache = tempfile.mkdtemp(prefix="specref-compile-cache-")
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"),
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--device", a.device, "--engine", a.engine,
           "--methods", a.methods, "--draft", a.draft, "--batch", str(a.batch), "--gamma", str(a.gamma),
           "--max-new-tokens", str(a.max_new_tokens), "--prompt-len", str(a.prompt_len),
           "--temperature", str(a.temperature)] + (["--smoke"] if a.smoke else [])
    R: dict[str, Any] = {"section": "compile-warmup", "smoke": a.smoke,
                         "args": {k: v for k, v in vars(a).items() if k not in ("child", "out", "cache")},
                         "env": {"device": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu",
                                 "torch": torch.__version__},
                         "passes": {}}
    try:
        for name in ("cold", "warm"):
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout_s)
            if done.returncode != 0:
                raise RuntimeError(f"the {name} process failed (exit {done.returncode}): "
                                   + done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output")
            R["passes"][name] = dict(json.loads(done.stdout.strip().splitlines()[-1]),
                                     process_s=time.perf_counter() - t0)
            print(f"{name}: " + ", ".join(f"{m} first call {v['first_call_s']:.1f} s (cache hits "
                                          f"{v['fxgraph_cache_hit']}, misses {v['fxgraph_cache_miss']})"
                                          for m, v in R["passes"][name]["methods"].items()), flush=True)
    finally:
        if not a.cache:
            shutil.rmtree(cache, ignore_errors=True)
    return R


def _verdict(R: dict[str, Any], seconds: float) -> str:
    if R["smoke"]:  # the goal is about real model sizes; tiny shapes only show the cache at work
        return "not judged (smoke shapes)"
    return "met" if seconds <= GOAL_S else "missed"


def markdown(R: dict[str, Any]) -> str:
    a, P = R["args"], R["passes"]
    L = [f"# Compiled decoder warm-up in a fresh process ({R['env']['device']})", "",
         f"torch {R['env']['torch']}; engine `{a['engine']}`; batch {a['batch']}, {a['max_new_tokens']} new tokens, "
         f"gamma {a['gamma']}, draft `{a['draft']}`{' (smoke shapes)' if R['smoke'] else ''}. Two fresh processes "
         "share one empty cache folder (`TORCHINDUCTOR_CACHE_DIR`, `TRITON_CACHE_DIR`): the first compiles "
         "(cold), the second loads (warm). First call = creating the decoder and its first `generate` (tracing, "
         "compiling or loading, graph capture, one decode); second call = the next `generate`.", "",
         "| method | cold: first call s | warm: first call s | second call s | FX-graph cache hits / misses "
         f"(cold; warm) | warm <= {GOAL_S:.0f} s |", "|---|---|---|---|---|---|"]
    for m in a["methods"].split(","):
        c, w = P.get("cold", {}).get("methods", {}).get(m), P.get("warm", {}).get("methods", {}).get(m)
        if not (c and w):
            continue
        L.append(f"| {m} | {c['first_call_s']:.1f} | {w['first_call_s']:.1f} | {w['second_call_s']:.2f} | "
                 f"{c['fxgraph_cache_hit']} / {c['fxgraph_cache_miss']}; {w['fxgraph_cache_hit']} / "
                 f"{w['fxgraph_cache_miss']} | {_verdict(R, w['first_call_s'])} |")
    L += ["", "Noise: one cold and one warm process, one first call each; the verdicts are not judged against "
          "run-to-run spread."]
    if P.get("cold"):
        L += ["", f"Building the models took {P['cold']['build_s']:.1f} s per process (not in the first call)."]
    return "\n".join(L) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench/compile_warmup.py",
                                 description="compiled decoder warm-up in fresh processes, cold vs warm cache")
    ap.add_argument("--out", default=None, help="output prefix: <out>.json, <out>.md")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (engine compile)")
    ap.add_argument("--device", default=None, help="default: cuda if available (not with --smoke), else cpu")
    ap.add_argument("--engine", default=None, help="default: compile-graph on a GPU, compile on a CPU")
    ap.add_argument("--methods", default="target,specdecode")
    ap.add_argument("--draft", default="1b", choices=("1b", "0.5b"))
    ap.add_argument("--batch", type=positive_int, default=1)
    ap.add_argument("--gamma", type=positive_int, default=5)
    ap.add_argument("--max-new-tokens", type=positive_int, default=None, help="default 128 (smoke 8)")
    ap.add_argument("--prompt-len", type=positive_int, default=None, help="default 64 (smoke 8)")
    ap.add_argument("--temperature", type=float, default=3.0)
    ap.add_argument("--cache", default=None, metavar="DIR",
                    help="the cache folder to use and keep (empty or new; default: a temporary one, removed)")
    ap.add_argument("--timeout-s", type=float, default=540.0, help="each process's limit")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.device is None:
        import torch

        a.device = "cuda" if torch.cuda.is_available() and not a.smoke else "cpu"
    a.engine = a.engine or ("compile-graph" if a.device.startswith("cuda") else "compile")
    a.max_new_tokens = a.max_new_tokens or (8 if a.smoke else 128)
    a.prompt_len = a.prompt_len or (8 if a.smoke else 64)
    if a.child:
        print(json.dumps(child(a)), flush=True)
        return 0
    R = run(a)
    prefix = strip_suffix(a.out or os.path.join(REPO, "bench", "results", "compile-warmup"))
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    write_report(prefix, R, markdown(R))
    print(f"wrote {prefix}.json, {prefix}.md")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, RuntimeError, OSError) as err:
        print(f"bench/compile_warmup.py: error: {err}", file=sys.stderr)
        sys.exit(2)
