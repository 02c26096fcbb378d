"""The data-parallel sweep: the trained pair run through ``torchrun -m specref.repro.distributed``."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.clock import log
from bench.lazy import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dp_scaling(args: argparse.Namespace, draft: Any, target: Any, tok: Any, prompts_text: list[tuple[str, str]],
               n_gpus: int) -> dict[str, Any]:
    """The trained pair swept with ``torchrun -m specref.repro.distributed`` on 1 and on ``n_gpus`` GPUs."""
    from transformers import PreTrainedTokenizerFast

    work = tempfile.mkdtemp(prefix="specref-dp-")
    try:
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok.backend)
        hf_tok.pad_token = hf_tok.convert_ids_to_tokens(0)
        hf_tok.padding_side = "left"
        for name, m in (("draft", draft), ("target", target)):
            m.save_pretrained(os.path.join(work, name))
        hf_tok.save_pretrained(os.path.join(work, "tokenizer"))
        data = os.path.join(work, "test.jsonl")
        with open(data, "w") as fh:
            for i, (src, ref) in enumerate(prompts_text):
                fh.write(json.dumps({"id": i, "source": src, "reference": ref}) + "\n")
        yaml_path = os.path.join(work, "setup.yaml")
        dtype = "bfloat16" if torch.cuda.is_available() and not args.smoke else "float32"
        n_ex = len(prompts_text)
        with open(yaml_path, "w") as fh:
            fh.write(
                f"name: bench-dp\npair: bench-pair\nmodels:\n  family: causal\n  draft: {work}/draft\n"
                f"  target: {work}/target\n  tokenizer: {work}/tokenizer\n  dtype: {dtype}\n"
                f"data:\n  path: {data}\n  metric: exact_match\n  prompt_template: \"{{source}}\"\n"
                f"decode:\n  split: test\n  gamma: {args.gamma}\n  temperature: 1.0\n  max_examples: {n_ex}\n"
                f"  max_new_tokens: {args.dp_new_tokens}\n  batch_size: {args.dp_batch}\n  seeds: [0]\n"
                f"methods: [target, draft, specdecode, token_v3]\n"
            )
        out: dict[str, Any] = {"examples": n_ex, "batch_size": args.dp_batch, "max_new_tokens": args.dp_new_tokens,
                               "runs": {}}
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "PYTHONUNBUFFERED": "1"}
        dev = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
        if dev == "cpu":
            env["OMP_NUM_THREADS"] = "1"
        for k in sorted({1, n_gpus}):
            res_dir = os.path.join(work, f"out{k}")
            timing = os.path.join(work, f"timing{k}.json")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(k),
                   "-m", "specref.repro.distributed", "--config", yaml_path, "--device", dev, "--out", res_dir,
                   "--no-progress", "--no-plot", "--engine", "fast", "--alphas", f"token_v3={args.alpha}",
                   "--timing-json", timing]
            log(f"dp: torchrun with {k} GPU(s)")
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.dp_timeout)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                out["runs"][k] = {"error": proc.stderr[-2000:], "wall_s": wall}
                log(f"dp: {k} GPU(s) failed: {proc.stderr[-300:]}")
                continue
            t = json.load(open(timing))[0]
            out["runs"][k] = {"wall_s": wall, "decode_seconds_max": t["decode_seconds_max"],
                              "decodes": t["decodes"], "items": t["items"], "ranks": t["ranks"]}
            log(f"dp: {k} GPU(s): decode phase {t['decode_seconds_max']:.2f} s, end to end {wall:.1f} s")
        r1, rk = out["runs"].get(1, {}), out["runs"].get(n_gpus, {})
        if "decode_seconds_max" in r1 and "decode_seconds_max" in rk and n_gpus > 1:
            out["speedup_decode"] = r1["decode_seconds_max"] / rk["decode_seconds_max"]
            out["speedup_end_to_end"] = r1["wall_s"] / rk["wall_s"]
            out["rows_equal"] = _same_rows(os.path.join(work, "out1"), os.path.join(work, f"out{n_gpus}"))
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _same_rows(a: str, b: str) -> bool | str:
    from specref.repro.store import COLUMNS, PointStore

    wall = {"latency_wall", "wall_s", "baseline_wall_s", "cost_ratio_measured", "run_id", "time_utc", "row_crc32",
            "device"}
    try:
        ra = PointStore(os.path.join(a, "bench-dp", "points.csv")).read()
        rb = PointStore(os.path.join(b, "bench-dp", "points.csv")).read()
    except Exception as err:  # noqa: BLE001
        return f"unreadable: {err}"
    if len(ra) != len(rb):
        return False
    for x, y in zip(ra, rb):
        for c in COLUMNS:
            if c in wall:
                continue
            u, v = x[c], y[c]
            if not (u == v or (isinstance(u, float) and isinstance(v, float) and math.isnan(u) and math.isnan(v))):
                return False
    return True
