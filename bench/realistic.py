"""Realistic-size decoding benchmark: a 7B target with 1B and 0.5B-class drafts on one GPU.

What one run measures (on one H100: 374 s for every part but the last compile-graph rows and T5 under
``--budget-s 470``; 179 s for ``--drafts 1b --parts core,hf,compile --batch-sizes 1``; ``--budget-s`` skips
optional parts that would not fit):

1. **Environment**: GPU name, versions, device copy bandwidth (bytes read + written over time).
2. **Models**, random-init bf16 Llama shapes built directly on the device (no CPU init, no hub): target =
   Llama-3-8B's shape with vocabulary 32000 (7.24B), drafts = Llama-3.2-1B's shape (1.04B, tied embeddings)
   and Qwen2.5-0.5B's shape as a Llama (0.39B with vocabulary 32000, tied).
3. **Acceptance by temperature**: random models share nothing, so at T = 1 their next-token laws barely
   overlap. Both laws flatten towards uniform as the sampling temperature T grows, so the agreement
   ``1 - TV(q_T, p_T)`` rises towards 1. The run measures it on a few hundred teacher-forced positions of
   random prompts for a grid of T, and decodes at the T (interpolated in log T) that gives ~0.8 per pair.
   Nothing else is done to the weights: the kernels, shapes and bytes are those of the real models, only
   the token law is near-uniform.
4. **Per-role step times** (CUDA events around every forward, ``RoundProfiler``) at every batch size against
   their bandwidth floors (weight bytes read once + live KV bytes) / copy bandwidth; the draft/target cost
   ratio ``c``; the zero-overhead ceiling ``specref.cost.walltime_factor(b, gamma, c)`` for the measured
   acceptance ``b``, and the share of round time outside the forwards.
5. **Throughput**, 128 new tokens, gamma 5, no EOS, side by side at batch 1, 8, 32, 64 for each draft, all on
   the ``graph`` engine: specref target-only; SpecDecode and SpecCascade [token_v3] with a fixed gamma; the
   same two with the block-size policy (``AdaptiveGamma``, g in 0..gamma for SpecDecode, 1..gamma for
   token_v3), its costs calibrated at the same batch size from the rows just measured (:func:`calibrate`), with
   what it chose (mean g, share of g = 0 rounds) and its ratio to target-only. Then transformers'
   ``generate`` eager, with a static cache (transformers compiles the forward itself then) and assisted
   generation (batch 1). ``compile-graph`` at batch 1 when the budget allows (``--parts core,hf`` skips it).
6. **T5** (``--parts t5``, in the default parts, run last while the budget lasts): T5 v1.1 small -> large shapes
   (61M draft, 750M target at vocabulary 32128, random weights, output matrix tied as transformers builds T5),
   random prompts as the encoder's input, the temperature calibrated the same way; target-only, SpecDecode and
   token_v3 with a fixed gamma on ``graph`` at every batch size, the encoder-decoder path of the static engines.
7. JSON (everything) and markdown (``<out>.json``, ``<out>.md``, rewritten after every section); the
   markdown, with the targets table, is a pure function of the JSON (``--render``).

Usage::

    PYTHONUNBUFFERED=1 python bench/realistic.py --out bench/results/nvidia-h200-realistic-DATE   # GPU, all
    PYTHONUNBUFFERED=1 python bench/realistic.py --drafts 1b --parts core,hf --budget-s 450 \
        --out bench/results/nvidia-h100-realistic-policy-DATE                     # one H100, < 9 minutes
    python bench/realistic.py --smoke --out /tmp/real                                           # CPU, tiny
    python bench/suite.py --realistic ...                                                        # the same
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench import clock  # noqa: E402
from bench.clock import elapsed, log  # noqa: E402
from bench.decoding import assisted, groups, run_ours  # noqa: E402
from bench.models import llama  # noqa: E402
from bench.output import slug, strip_suffix, write_report  # noqa: E402
from bench.timing import left_pad, measure_bandwidth, sync  # noqa: E402

#: Llama-3-8B with a 32000-token vocabulary (7.24B parameters, untied output matrix).
TARGET_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "rope_theta": 500000.0}
#: Llama-3.2-1B (1.04B at vocabulary 32000, tied embeddings).
DRAFT_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "rope_theta": 500000.0}
#: Qwen2.5-0.5B's widths and depth as a Llama (0.39B at vocabulary 32000, tied; no attention biases).
DRAFT_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "rope_theta": 1000000.0}
SHAPES = {
    "full": {"vocab": 32000, "target": (TARGET_8B, False),
             "drafts": {"1b": (DRAFT_1B, True), "0.5b": (DRAFT_05B, True)}},
    "smoke": {"vocab": 512,
              "target": ({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "num_key_value_heads": 2}, False),
              "drafts": {"1b": ({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "num_key_value_heads": 1}, True),
                         "0.5b": ({"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "num_key_value_heads": 1}, True)}},
}
#: T5 v1.1 small (draft) and large (target) widths and depths: the paper's encoder-decoder setup (random
#: weights, gated-GELU feed-forward, vocabulary 32128; transformers' T5 ties the output matrix to the input
#: embedding, so 61M and 750M parameters).
T5_SHAPES = {
    "full": {"vocab": 32128, "target": {"d_model": 1024, "d_ff": 2816, "d_kv": 64, "num_layers": 24, "num_heads": 16},
             "draft": {"d_model": 512, "d_ff": 1024, "d_kv": 64, "num_layers": 8, "num_heads": 6}},
    "smoke": {"vocab": 512, "target": {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_layers": 2, "num_heads": 4},
              "draft": {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_layers": 1, "num_heads": 2}},
}
#: the T5 part's expected seconds on one H100 / H200 (models built in seconds, 3 rows per batch size)
T5_EXPECTED_S = 120.0
TEMPERATURES = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0)
TARGET_AGREEMENT = 0.8
PARTS = ("core", "hf", "compile", "t5")


# ---- models ------------------------------------------------------------------------------------------------


def build(shape: dict[str, Any], tied: bool, vocab: int, device: str, dtype: Any, context: int = 4096) -> Any:
    """A random-init Llama built on ``device`` in ``dtype`` (on a GPU: seconds for 7B, no host copy)."""
    import torch

    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = llama(shape, vocab, tied=tied, context=context).eval()
    finally:
        torch.set_default_dtype(prev)
    model.requires_grad_(False)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def build_t5(shape: dict[str, Any], vocab: int, device: str, dtype: Any) -> Any:
    """A random-init T5 v1.1-style encoder-decoder built on ``device`` in ``dtype``."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=vocab, feed_forward_proj="gated-gelu",
                   num_decoder_layers=shape["num_layers"], decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1, **shape)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = T5ForConditionalGeneration(cfg).eval()
    finally:
        torch.set_default_dtype(prev)
    model.requires_grad_(False)
    model.generation_config.eos_token_id = None
    return model


def weight_bytes(model: Any) -> int:
    """Bytes a decoding step reads from the weights: every parameter once, except an input embedding that is
    not also the output matrix (a lookup of a few rows)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    if emb.data_ptr() != out.data_ptr():
        total -= emb.numel() * emb.element_size()
    return total


def kv_bytes_per_token(model: Any) -> int:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    esize = next(model.parameters()).element_size()
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * esize


def model_info(model: Any) -> dict[str, Any]:
    cfg = model.config
    return {"params": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
            "weight_bytes_per_step": weight_bytes(model), "kv_bytes_per_token": kv_bytes_per_token(model),
            "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "tied": bool(cfg.tie_word_embeddings)}


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n, length), generator=g).tolist()  # 0 is the pad token


# ---- acceptance by temperature ---------------------------------------------------------------------------------


def agreement_by_temperature(draft: Any, target: Any, prompts: list[list[int]], device: str,
                             temperatures: tuple[float, ...] = TEMPERATURES) -> dict[str, float]:
    """Mean ``1 - TV(softmax(draft / T), softmax(target / T))`` over every teacher-forced position.

    This equals the expected per-token acceptance of SpecDecode at temperature T along these contexts. An
    encoder-decoder reads ``prompts`` as its source and, shifted right, as its decoder's input.
    """
    import torch

    ids = torch.tensor(prompts, device=device)
    inputs: dict[str, Any] = {"input_ids": ids}
    if getattr(draft.config, "is_encoder_decoder", False):
        dec = ids.roll(1, dims=1)
        dec[:, 0] = draft.config.decoder_start_token_id
        inputs["decoder_input_ids"] = dec
    with torch.inference_mode():
        q_logits = draft(**inputs).logits.float()  # [N, L, V]
        p_logits = target(**inputs).logits.float()  # [N, L, V]
        out = {}
        for t in temperatures:
            tv = 0.5 * (torch.softmax(q_logits / t, -1) - torch.softmax(p_logits / t, -1)).abs().sum(-1)  # [N, L]
            out[f"{t:g}"] = float(1 - tv.mean())
    return out


def pick_temperature(agreement: dict[str, float], goal: float = TARGET_AGREEMENT) -> float:
    """The temperature whose agreement is ``goal``, interpolated linearly in log T between grid points
    (the largest grid T when none reaches it, the smallest when all exceed it)."""
    pts = sorted((float(t), a) for t, a in agreement.items())
    if pts[0][1] >= goal:
        return pts[0][0]
    for (t0, a0), (t1, a1) in zip(pts, pts[1:]):
        if a0 < goal <= a1:
            w = (goal - a0) / (a1 - a0)
            return round(math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0))), 3)
    return pts[-1][0]


# ---- decoding runs ---------------------------------------------------------------------------------------------


def _args(T: float, a: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(max_new_tokens=a.max_new_tokens, temperature=T, requests=a.requests,
                              repeats=a.repeats, gamma=a.gamma)


def every_width_policy() -> Any:
    """A warm-up policy (not timed): ``probe_every`` rounds of g = 0 in a row where the rule allows them, then
    g = 1 .. gamma, over and over, so that a static engine has captured every width an
    :class:`~specref.decode.gamma_policy.AdaptiveGamma` may take (target blocks of 1 .. gamma + 1, the draft's
    catch-up chunks) before the timed pass. Its ``probe_every`` is the default's, so the draft session has the
    same capacity and the cached engine (buffers and graphs) is the one the timed decoder gets."""
    from dataclasses import dataclass, field

    from specref.decode.gamma_policy import AdaptiveGamma

    @dataclass(frozen=True)
    class EveryWidth(AdaptiveGamma):
        rounds: list = field(default_factory=lambda: [0], compare=False, repr=False)

        def choose(self, gamma_max: int, c: float, accepted: int, verified: int, allow_zero: bool = False,
                   since_draft: int = 0, **kw: Any) -> int:
            cycle = [0] * self.probe_every * allow_zero + list(range(1, gamma_max + 1))
            self.rounds[0] += 1
            return cycle[(self.rounds[0] - 1) % len(cycle)]

    return EveryWidth()


def calibrate(R: dict[str, Any], draft: str, method: str, batch: int) -> dict[str, Any] | None:
    """The policy's costs at ``batch`` from this run's measurements, in target forwards (None: not measured).

    From the profiled rows (CUDA events around every forward): ``c`` = the draft's forward / the target-only
    forward, ``verify_slope`` = (the target block of the fixed-gamma SpecDecode row / the target-only forward
    - 1) / gamma. From the wall clock: ``plain_overhead`` = a target-only step's wall time / its forward - 1
    (sampling and bookkeeping of a plain step), and ``round_overhead`` = what a round of the fixed-gamma row
    of the same method took (its wall time / its rounds) beyond ``(gamma + 1) c + 1 + verify_slope gamma``
    forwards (rule, verification, bookkeeping, the host sync). So the policy's model reproduces the fixed
    rows' round times, with the per-round work charged once per round, not per draft forward (a user would
    calibrate the same way, once per batch size).

    The round time is the batch's measured one, not the one implied by the mean row's tokens per round: a
    batch runs until its slowest row is done (9-32% more rounds than the mean row needs at batch 8-64 and
    acceptance 0.8 in the committed runs), and that waste is not a cost of each round. Without the profiles,
    ``c`` absorbs the per-round work and both overheads are 0. Each call starts from the fixed row's
    acceptance as the policy's prior.
    """
    dec = R.get("decode", {})
    gamma = R["args"]["gamma"]
    tgt = dec.get(f"specref/graph/target/b{batch}") or {}
    fixed = dec.get(f"specref/graph/{method}/{draft}/b{batch}") or {}
    tok = fixed.get("tokens_per_target_call")
    if not (tgt.get("tokens_per_s") and fixed.get("tokens_per_s") and tok):
        return None
    if fixed.get("rounds") and tgt.get("rounds") and fixed.get("wall_s") and tgt.get("wall_s"):
        # the batch's round, in target-only wall steps (a target-only call's rounds are its steps)
        round_wall = (fixed["wall_s"] / fixed["rounds"]) / (tgt["wall_s"] / tgt["rounds"])
    else:  # rows without round counts: from the mean row's tokens per round, stragglers included
        round_wall = tok * tgt["tokens_per_s"] / fixed["tokens_per_s"]
    t_step = role_times(tgt).get("target")
    spec = role_times(dec.get(f"specref/graph/specdecode/{draft}/b{batch}") or {})
    block, d_step = spec.get("target"), spec.get("draft")
    slope = max(0.0, (block / t_step - 1) / gamma) if t_step and block else 0.0
    out = {"fixed_round_cost": round_wall, "verify_slope": slope, "slope_measured": bool(t_step and block)}
    if fixed.get("acceptance_rate") is not None:  # the prior each call starts from: the fixed row's acceptance
        out["prior_acceptance"] = min(1.0, max(0.0, float(fixed["acceptance_rate"])))
    if not (t_step and d_step):
        return dict(out, c=max(0.0, (round_wall - 1 - slope * gamma) / (gamma + 1)), round_overhead=0.0,
                    plain_overhead=0.0)
    plain = max(0.0, batch / tgt["tokens_per_s"] / t_step - 1)  # wall step / forward - 1
    c = d_step / t_step
    forwards = (gamma + 1) * c + 1 + slope * gamma
    return dict(out, c=c, round_overhead=max(0.0, round_wall * (1 + plain) - forwards), plain_overhead=plain)


def _prewarm(dec: Any, prompts: list[list[int]], batch: int, a: argparse.Namespace, T: float, device: str) -> None:
    """One untimed ``generate`` of ``dec`` on the timed batch shape."""
    ids, mask = left_pad(groups(prompts, batch, a.requests)[0])
    dec.generate(ids.to(device), mask.to(device), max_new_tokens=a.max_new_tokens, temperature=T, seed=999)


def run_specref(draft: Any, target: Any, method: str, engine: str, prompts: list[list[int]], batch: int, T: float,
                a: argparse.Namespace, device: str, profile: bool, policy: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """tok/s of one specref configuration (``run_ours``: one warm-up with the timed shapes, best of
    ``repeats``), and optionally a second pass under the round profiler. ``policy``: the keywords of an
    :class:`~specref.decode.gamma_policy.AdaptiveGamma` (then a first untimed pass takes every block size)."""
    from specref.decode import make_decoder
    from specref.decode.gamma_policy import AdaptiveGamma

    kw = {"alpha": a.alpha} if method == "token_v3" else {}
    t0 = time.perf_counter()
    if policy is not None:
        warm = make_decoder(draft, target, method, gamma=a.gamma, engine=engine, gamma_policy=every_width_policy(),
                            **kw)
        _prewarm(warm, prompts, batch, a, T, device)
        kw["gamma_policy"] = AdaptiveGamma(**{k: policy[k] for k in ("c", "verify_slope", "round_overhead",
                                                                      "plain_overhead", "prior_acceptance")
                                              if k in policy})
    compiled = engine.startswith("compile")
    if compiled:  # Inductor's artifact cache: did this decoder compile its shapes or load them?
        from torch._dynamo.utils import counters
        keys = ("fxgraph_cache_hit", "fxgraph_cache_miss")
        before = {k: counters["inductor"].get(k, 0) for k in keys}
    dec = make_decoder(draft, target, method, gamma=a.gamma, engine=engine, **kw)
    row = run_ours(dec, prompts, batch, _args(T, a), device)
    row["seconds_with_warmup"] = time.perf_counter() - t0
    if compiled:
        row["artifact_cache"] = {k: counters["inductor"].get(k, 0) - before[k] for k in keys}
    if policy is not None:
        row["policy"] = dict(policy, repr=repr(kw["gamma_policy"]))
    if profile:
        row["profile"] = run_ours(dec, prompts, batch, _args(T, a), device, profile=True)["profile"]
    return row


def run_transformers(target: Any, draft: Any | None, prompts: list[list[int]], batch: int, T: float,
                     a: argparse.Namespace, device: str, static: bool) -> dict[str, Any]:
    """transformers' ``generate``: eager, static cache (which transformers compiles on a GPU), or assisted
    (``draft`` given, batch 1, constant ``gamma`` draft tokens). First call = warm-up (compilation)."""
    import torch

    kw: dict[str, Any] = {"do_sample": True, "temperature": T, "top_k": 0, "top_p": 1.0,
                          "max_new_tokens": a.max_new_tokens, "min_new_tokens": a.max_new_tokens,
                          "pad_token_id": 0, "eos_token_id": None}
    if static:
        kw["cache_implementation"] = "static"
    if draft is not None:
        kw.update(assisted(draft, a.gamma))
    grps = groups(prompts, batch, a.requests)

    def once(seed: int) -> tuple[float, int]:
        wall, tokens = 0.0, 0
        for k, grp in enumerate(grps):
            ids = torch.tensor(grp, device=device)
            torch.manual_seed(seed + k)
            sync(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = target.generate(ids, attention_mask=torch.ones_like(ids), **kw)
            sync(device)
            wall += time.perf_counter() - t0
            tokens += (out.shape[1] - ids.shape[1]) * ids.shape[0]
        return wall, tokens

    t0 = time.perf_counter()
    once(0)
    warm = time.perf_counter() - t0
    wall, tokens = min((once(1000 * (r + 1)) for r in range(a.repeats)), key=lambda x: x[0])
    return {"tokens_per_s": tokens / wall, "tokens": tokens, "wall_s": wall, "warmup_s": warm,
            "latency_ms": 1000 * wall / len(grps)}


def step_floors(info: dict[str, Any], batch: int, context: float, bw_gb_s: float) -> float:
    """Seconds per one-token step at the bandwidth floor: (weights + batch x live KV) / bandwidth."""
    return (info["weight_bytes_per_step"] + batch * context * info["kv_bytes_per_token"]) / (bw_gb_s * 1e9)


def rt_calls(row: dict[str, Any], role: str) -> int:
    return row.get("profile", {}).get("per_role", {}).get(role, {}).get("calls", 0)


def role_times(row: dict[str, Any]) -> dict[str, float]:
    """Mean seconds per forward of each role in a profiled row."""
    per = row.get("profile", {}).get("per_role", {})
    return {r: s["seconds"] / s["calls"] for r, s in per.items() if s.get("calls")}


# ---- summary and report ----------------------------------------------------------------------------------------


def _tps(R: dict[str, Any], key: str) -> float | None:
    row = R.get("decode", {}).get(key)
    return row.get("tokens_per_s") if isinstance(row, dict) else None


def analyse(R: dict[str, Any]) -> dict[str, Any]:
    """Derived numbers: step times vs floors, c, ceilings, ratios, the issue's targets. Pure in R."""
    from specref.cost import expected_tokens_per_call, walltime_factor

    bw = R["env"]["bandwidth"]["gb_per_s"]
    gamma = R["args"]["gamma"]
    ctx = R["args"]["prompt_len"] + R["args"]["max_new_tokens"] / 2  # mean live context of a step
    dec = R.get("decode", {})
    A: dict[str, Any] = {"steps": {}, "ceilings": {}, "ratios": {}}
    for b in R["args"]["batch_sizes"]:
        tgt = dec.get(f"specref/graph/target/b{b}", {})
        t_step = role_times(tgt).get("target")
        if t_step:
            floor = step_floors(R["models"]["target"], b, ctx, bw)
            A["steps"][f"target/b{b}"] = {"ms": 1e3 * t_step, "floor_ms": 1e3 * floor, "x_floor": t_step / floor}
        for d in R.get("drafts_done", []):
            row = dec.get(f"specref/graph/specdecode/{d}/b{b}", {})
            rt = role_times(row)
            if "draft" not in rt:
                continue
            floor_d = step_floors(R["models"][d], b, ctx, bw)
            s = {"ms": 1e3 * rt["draft"], "floor_ms": 1e3 * floor_d, "x_floor": rt["draft"] / floor_d,
                 "target_block_ms": 1e3 * rt.get("target", float("nan")),
                 "outside_share": row["profile"].get("outside_share"),
                 "outside_ms": row["profile"].get("outside_us_per_round", float("nan")) / 1e3,
                 "draft_calls_per_round": rt_calls(row, "draft") / max(1, row["profile"]["rounds"]),
                 "round_ms": row["profile"].get("round_us", float("nan")) / 1e3}
            if t_step:
                s["c"] = rt["draft"] / t_step
                s["c_floor"] = floor_d / floor
            A["steps"][f"{d}/b{b}"] = s
            acc = row.get("acceptance_rate")
            if t_step and acc is not None:
                tokens = expected_tokens_per_call(acc, gamma)
                A["ceilings"][f"{d}/b{b}"] = {
                    "acceptance": acc, "c": s["c"],
                    "speedup_model": walltime_factor(acc, gamma, s["c"]),
                    # the same with the measured target block instead of one target step
                    "tokens_per_s_zero_overhead": b * tokens / (gamma * rt["draft"] + rt.get("target", t_step)),
                    "tokens_per_s_measured": row.get("tokens_per_s"),
                }
    for key, row in dec.items():
        parts = key.split("/")
        if parts[0] != "specref" or parts[2] == "target" or not isinstance(row, dict) or "tokens_per_s" not in row:
            continue
        base = _tps(R, f"specref/{parts[1]}/target/{parts[-1]}") or _tps(R, f"specref/graph/target/{parts[-1]}")
        if base:
            A["ratios"][key] = row["tokens_per_s"] / base
    A["policy"] = policy_rows(R, A)
    A["targets"] = targets(R, A)
    return A


def policy_rows(R: dict[str, Any], A: dict[str, Any]) -> dict[str, Any]:
    """Each policy row beside its fixed-gamma row: the calibrated costs, what the policy chose (mean g, share
    of g = 0 rounds) and both ratios to target-only at the same batch."""
    out = {}
    for key, row in R.get("decode", {}).items():
        parts = key.split("/")
        if len(parts) != 5 or not parts[2].endswith("-adaptive") or "tokens_per_s" not in row:
            continue
        method, draft, b = parts[2][: -len("-adaptive")], parts[3], parts[4]
        fixed_key = f"specref/graph/{method}/{draft}/{b}"
        pol = row.get("policy", {})
        out[key] = {"method": method, "draft": draft, "batch": int(b[1:]), "c": pol.get("c"),
                    "verify_slope": pol.get("verify_slope"), "round_overhead": pol.get("round_overhead"),
                    "plain_overhead": pol.get("plain_overhead"), "mean_gamma": row.get("mean_gamma"),
                    "zero_share": row.get("zero_share"), "gamma_rounds": row.get("gamma_rounds"),
                    "acceptance": row.get("acceptance_rate"), "vs_target": A["ratios"].get(key),
                    "fixed_vs_target": A["ratios"].get(fixed_key),
                    "vs_fixed": row["tokens_per_s"] / _tps(R, fixed_key) if _tps(R, fixed_key) else None,
                    "spread": _spread(row, R.get("decode", {}).get(fixed_key))}
    return out


def _spread(*rows: Any) -> float | None:
    """The largest run-to-run spread (max / min - 1 of the timed passes) of ``rows``; None: one pass each."""
    each = [r["tokens_per_s_each"] for r in rows if isinstance(r, dict) and len(r.get("tokens_per_s_each") or ()) > 1]
    return max(max(e) / min(e) - 1 for e in each) if each else None


def _verdict(ratio: float | None, spread: float | None) -> str:
    """A ratio of two rows against 1, judged by their spread."""
    if ratio is None:
        return "-"
    if spread is None:
        return f"{ratio:.2f}x (not judged: one pass)"
    if abs(ratio - 1) <= spread:
        return f"{ratio:.2f}x (within the {100 * spread:.1f}% spread)"
    return f"{ratio:.2f}x ({'faster' if ratio > 1 else 'slower'}, beyond the {100 * spread:.1f}% spread)"


def _ratio(R: dict[str, Any], key: str) -> str:
    """``key``'s tok/s over specref ``graph`` target-only at the same batch, as text."""
    x, base = _tps(R, key), _tps(R, "specref/graph/target/" + key.rsplit("/", 1)[-1])
    return f"{x / base:.2f}x" if x and base else "(not measured)"


def _beside_graph(R: dict[str, Any]) -> str:
    """``; compile-graph runs 1.18x, transformers' static cache + compile 0.98x of `graph``` for the rows that
    were measured (empty when neither was)."""
    named = (("compile-graph runs", "specref/compile-graph/target/b1"),
             ("transformers' static cache + compile", "transformers/static/target/b1"))
    runs = [f"{name} {_ratio(R, key)}" for name, key in named if _tps(R, key)]
    return "; " + ", ".join(runs) + " of `graph`" if runs else ""


def _target(measured: float | None, goal: float, text: str, limit: str, unit: str = "",
            spread: float | None = None) -> dict[str, Any]:
    """A target; ``spread``: the run-to-run spread (max / min - 1) of the rows behind ``measured`` (None: one
    timed pass, or not a timed row), against which the verdict is judged."""
    return {"measured": measured, "goal": goal, "goal_text": text, "unit": unit,
            "met": None if measured is None else bool(measured >= goal),
            "limit": limit if measured is not None else "-", "spread": spread}


def _target_verdict(t: dict[str, Any]) -> str:
    """met / missed, judged against the rows' spread: within it the target is neither."""
    if t["met"] is None:
        return "not measured"
    spread = t.get("spread")
    if spread is None:
        return ("**met**" if t["met"] else "missed") + " (one pass: noise not judged)"
    if abs(t["measured"] / t["goal"] - 1) <= spread:
        return f"within the {100 * spread:.1f}% run-to-run spread of the goal"
    return ("**met**" if t["met"] else "missed") + f" (beyond the {100 * spread:.1f}% spread)"


def targets(R: dict[str, Any], A: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets with, for each, what the measured step costs say limits it."""
    nan = float("nan")
    dec = R.get("decode", {})
    gamma = R["args"]["gamma"]
    has_policy = "policy" in R["args"]  # runs from before the block-size policy render as they did
    t1 = max([x for x in (_tps(R, "specref/graph/target/b1"), _tps(R, "specref/compile-graph/target/b1")) if x]
             or [0]) or None
    spec_keys = ("specref/graph/specdecode/1b/b1", "specref/compile-graph/specdecode/1b/b1",
                 "specref/graph/specdecode/0.5b/b1")  # fixed gamma (the policy's rows: A["policy"])
    s1 = max([x for x in (_tps(R, k) for k in spec_keys) if x] or [0]) or None
    hf_static = _tps(R, "transformers/static/target/b1")
    st, st32 = A["steps"].get("target/b1", {}), A["steps"].get("target/b32", {})
    d1, d32 = A["steps"].get("1b/b1", {}), A["steps"].get("1b/b32", {})
    row1 = dec.get("specref/graph/specdecode/1b/b1", {})
    tok1 = row1.get("tokens_per_target_call") or nan
    T: dict[str, Any] = {}
    best1 = max((k for k in ("specref/graph/target/b1", "specref/compile-graph/target/b1") if _tps(R, k)),
                key=lambda k: _tps(R, k), default=None)
    spread1 = _spread(dec.get(best1)) if best1 else None
    T["target_only_b1"] = _target(
        t1, 220, ">= 220 tok/s (best engine)",
        f"target step {st.get('ms', nan):.2f} ms with `graph` vs the floor {st.get('floor_ms', nan):.2f} ms "
        f"({st.get('x_floor', nan):.2f}x): the forward's own kernels (unfused norms, rotary, attention over the "
        "static capacity)" + _beside_graph(R), "tok/s", spread1)
    if st.get("floor_ms") and t1:
        T["target_only_b1_of_floor_rate"] = _target(t1 * st["floor_ms"] / 1e3, 0.74, ">= 0.74 of the floor's rate",
                                                    "as above", "x", spread1)
    need = 1e3 * tok1 / 300 if tok1 == tok1 else nan
    spread_s1 = _spread(*(dec.get(k) for k in spec_keys if _tps(R, k) == s1)) if s1 else None
    T["specdecode_b1"] = _target(
        s1, 300, ">= 300 tok/s",
        f"round {d1.get('round_ms', nan):.1f} ms = {d1.get('draft_calls_per_round', nan):.0f} draft forwards x "
        f"{d1.get('ms', nan):.2f} ms ({d1.get('x_floor', nan):.1f}x their floor) + target block "
        f"{d1.get('target_block_ms', nan):.2f} ms + {100 * (d1.get('outside_share') or nan):.1f}% outside, for "
        f"{tok1:.2f} tokens; 300 tok/s needs a round of {need:.1f} ms. c = {d1.get('c', nan):.3f} measured vs "
        f"{d1.get('c_floor', nan):.3f} by bytes: the draft's 16 layers are launch-bound", "tok/s",
        spread_s1)
    T["specdecode_b1_vs_hf_static_compiled"] = _target(
        s1 / hf_static if s1 and hf_static else None, 1.8, ">= 1.8x transformers static cache + compile",
        "the draft step (above) and a `graph` target block that is slower than transformers' compiled step", "x",
        spread_s1)
    for b, goal in ((8, 1.3), (32, 1.0), (64, 1.0)):
        r = A["ratios"].get(f"specref/graph/specdecode/1b/b{b}")
        blk = d32.get("target_block_ms", nan) / st32.get("ms", nan)
        tok32 = dec.get("specref/graph/specdecode/1b/b32", {}).get("tokens_per_target_call", nan)
        lim = ((f"fixed gamma = {gamma} at every batch (the policy's row: adaptive_specdecode_vs_target_b{b})"
                if has_policy else f"fixed gamma = {gamma} at every batch, no gamma policy in this tree")
               + (f"; at batch 32 a round is {d32.get('round_ms', nan):.1f} ms (draft forwards "
                  f"{d32.get('draft_calls_per_round', nan):.0f} x {d32.get('ms', nan):.2f} ms, block "
                  f"{d32.get('target_block_ms', nan):.2f} ms = {blk:.2f} target steps) for {tok32:.2f} tokens "
                  "per row" if b == 32 and d32 else ""))
        base = dec.get(f"specref/graph/target/b{b}")
        T[f"fixed_gamma_specdecode_vs_target_b{b}"] = _target(
            r, goal, f">= {goal}x target-only (the goal is the gamma policy's; measured: fixed gamma {gamma})",
            lim, "x", _spread(dec.get(f"specref/graph/specdecode/1b/b{b}"), base))
        if not has_policy:
            continue
        p = A["policy"].get(f"specref/graph/specdecode-adaptive/1b/b{b}", {})
        pv = {k: nan if p.get(k) is None else p[k]
              for k in ("c", "verify_slope", "round_overhead", "mean_gamma", "zero_share")}
        T[f"adaptive_specdecode_vs_target_b{b}"] = _target(
            p.get("vs_target"), goal, f">= {goal}x target-only, block-size policy",
            f"the policy (c = {pv['c']:.3f}, verify slope {pv['verify_slope']:.3f}, round overhead "
            f"{pv['round_overhead']:.3f}, calibrated on the fixed row) "
            f"took mean g {pv['mean_gamma']:.2f}, {100 * pv['zero_share']:.0f}% plain target steps (g = 0: "
            "target-only steps, with a probe round after every 16)", "x",
            _spread(dec.get(f"specref/graph/specdecode-adaptive/1b/b{b}"), base))
    T["outside_share_b32"] = _target(d32.get("outside_share"), 0.05, "<= 5% of round time at batch 32",
                                     "rules, verification, sampling and bookkeeping launched eagerly between the "
                                     f"graphed forwards: {d32.get('outside_ms', nan):.2f} ms per round", "share")
    if T["outside_share_b32"]["measured"] is not None:
        T["outside_share_b32"]["met"] = bool(T["outside_share_b32"]["measured"] <= 0.05)
    comp = dec.get("specref/compile-graph/target/b1", {})
    cache = comp.get("artifact_cache")
    cache_text = ("artifact cache not recorded" if cache is None else
                  f"artifact cache: {cache['fxgraph_cache_hit']} hits, {cache['fxgraph_cache_miss']} misses")
    spec_timed = "specref/compile-graph/specdecode/1b/b1" in dec
    T["compiled_warmup"] = _target(
        comp.get("seconds_with_warmup"), 30, "<= 30 s (a decoder whose shapes were compiled before)",
        "measured: the first compile-graph target-only decoder of this process, its warm-up and timed run "
        f"together ({cache_text}; bench/compile_warmup.py times cold and warm caches in fresh processes)"
        + ("" if spec_timed else "; the speculative compile-graph decoder was not timed (budget)"), "s")
    if T["compiled_warmup"]["measured"] is not None:
        T["compiled_warmup"]["met"] = bool(T["compiled_warmup"]["measured"] <= 30)
    return T


def _f(x: Any, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def markdown(R: dict[str, Any]) -> str:
    A = R.get("analysis") or analyse(R)
    env, args = R["env"], R["args"]
    L = [f"# Realistic-size decoding benchmark on {env['device']}", ""]
    L.append(f"torch {env['torch']}, transformers {env['transformers']}, device copy bandwidth "
             f"{env['bandwidth']['gb_per_s']:.0f} GB/s. Random-init {args['dtype']} Llama shapes, vocabulary "
             f"{R['vocab']}, prompts of {args['prompt_len']} random tokens, {args['max_new_tokens']} new tokens, "
             f"gamma {args['gamma']}, token_v3 alpha {args['alpha']}, no EOS; batch 1 = {args['requests']} "
             f"requests one after the other; best of {args['repeats']} after one warm-up; engine `graph` unless "
             "named." + (" The fixed-gamma SpecDecode rows were timed again after the policy rows: their "
                         "run-to-run spread covers both timings (drift included), their tok/s is the first "
                         "timing's best (the one the policy was calibrated on)."
                         if any("recheck_tokens_per_s_each" in r for r in R.get("decode", {}).values()) else "")
             + (" SMOKE RUN: tiny shapes, numbers meaningless." if R.get("smoke") else ""))
    L += ["", "| model | shape | parameters | weight bytes per step | KV bytes per token |", "|---|---|---|---|---|"]
    for name, info in R.get("models", {}).items():
        L.append(f"| {name} | {info['layers']} x {info['hidden']}{', tied' if info['tied'] else ''} | "
                 f"{info['params'] / 1e9:.3f}B | {info['weight_bytes_per_step'] / 1e9:.2f} GB | "
                 f"{info['kv_bytes_per_token'] / 1e3:.0f} kB |")
    L += ["", "Acceptance: the models share nothing; both next-token laws flatten as T grows, so "
          "1 - TV(q_T, p_T) (teacher-forced, "
          f"{R.get('agreement_positions', '?')} positions of random prompts) rises with T. Each pair decodes at "
          f"the T interpolated for {TARGET_AGREEMENT}:", "",
          "| T | " + " | ".join(R.get("agreement", {}).get(next(iter(R.get("agreement", {"": {}})), ""), {}).keys())
          + " | chosen T | measured SpecDecode acceptance (b1) |",
          "|---|" + "---|" * (len(TEMPERATURES) + 2)]
    for d, ag in R.get("agreement", {}).items():
        acc = (R.get("decode", {}).get(f"specref/graph/specdecode/{d}/b1") or {}).get("acceptance_rate")
        L.append(f"| 1 - TV, {d} draft | " + " | ".join(f"{v:.3f}" for v in ag.values())
                 + f" | {R['temperature'][d]} | {_f(acc, 3)} |")
    L += ["", "Per-role step times (CUDA events around each forward) vs the bandwidth floor (weights + live KV at "
          "the mean context) / copy bandwidth:", "",
          "| role | ms per forward | floor ms | x floor | c = draft / target step | c by bytes | target block ms "
          "| round ms | outside share |", "|---|---|---|---|---|---|---|---|---|"]
    for k, s in A["steps"].items():
        L.append(f"| {k} | {_f(s['ms'], 3)} | {_f(s['floor_ms'], 3)} | {_f(s['x_floor'], 2)} | {_f(s.get('c'), 3)} "
                 f"| {_f(s.get('c_floor'), 3)} | {_f(s.get('target_block_ms'), 3)} | {_f(s.get('round_ms'), 2)} "
                 f"| {_f(100 * s['outside_share'] if s.get('outside_share') is not None else None, 1)}% |"
                 if "c_floor" in s or "target_block_ms" in s else
                 f"| {k} | {_f(s['ms'], 3)} | {_f(s['floor_ms'], 3)} | {_f(s['x_floor'], 2)} | | | | | |")
    if A["ceilings"]:
        L += ["", "Zero-overhead ceiling for the measured acceptance b and costs (`specref.cost.walltime_factor`"
              "; tok/s with the measured draft step and target block, nothing else):", "",
              "| pair, batch | b | c | modeled speed-up | ceiling tok/s | measured tok/s | measured / ceiling |",
              "|---|---|---|---|---|---|---|"]
        for k, c in A["ceilings"].items():
            m = c.get("tokens_per_s_measured")
            L.append(f"| {k} | {c['acceptance']:.3f} | {c['c']:.3f} | {c['speedup_model']:.2f}x | "
                     f"{c['tokens_per_s_zero_overhead']:.1f} | {_f(m)} | "
                     f"{_f(m / c['tokens_per_s_zero_overhead'] if m else None, 2)} |")
    bs = args["batch_sizes"]
    L += ["", "Throughput, tokens/s (ratio to specref target-only at the same batch in brackets):", "",
          "| configuration | " + " | ".join(f"batch {b}" for b in bs) + " |", "|---|" + "---|" * len(bs)]
    dec = R.get("decode", {})
    rows = [("specref target-only", "specref/graph/target/b{}")]
    for d in R.get("drafts_done", []):
        rows += [(f"specref SpecDecode, {d} draft", f"specref/graph/specdecode/{d}/b{{}}"),
                 (f"specref SpecDecode, {d} draft, block-size policy", f"specref/graph/specdecode-adaptive/{d}/b{{}}"),
                 (f"specref SpecCascade [token_v3], {d} draft", f"specref/graph/token_v3/{d}/b{{}}"),
                 (f"specref SpecCascade [token_v3], {d} draft, block-size policy",
                  f"specref/graph/token_v3-adaptive/{d}/b{{}}")]
    rows += [("specref target-only, compile-graph", "specref/compile-graph/target/b{}"),
             ("specref SpecDecode, 1b, compile-graph", "specref/compile-graph/specdecode/1b/b{}"),
             ("transformers generate, eager", "transformers/eager/target/b{}"),
             ("transformers generate, static cache (compiled on a GPU)", "transformers/static/target/b{}"),
             ("transformers assisted generation, 1b", "transformers/assisted/1b/b{}"),
             ("transformers assisted generation, 0.5b", "transformers/assisted/0.5b/b{}")]
    for label, pat in rows:
        cells = []
        for b in bs:
            row = dec.get(pat.format(b))
            if not isinstance(row, dict):
                cells.append("")
            elif "error" in row:
                cells.append("error")
            else:
                base = _tps(R, f"specref/graph/target/b{b}")
                cells.append(f"{row['tokens_per_s']:.1f}" + (f" ({row['tokens_per_s'] / base:.2f}x)" if base else ""))
        if any(cells):
            L.append(f"| {label} | " + " | ".join(cells) + " |")
    t5 = R.get("t5")
    if t5:
        L += ["", f"T5 v1.1 shapes, random weights (`--parts t5`): target {t5['params']['target'] / 1e6:.1f}M "
              f"(large), draft {t5['params']['draft'] / 1e6:.1f}M (small), vocabulary {t5['vocab']}, the prompts "
              f"as the encoder's input, decoded at T = {t5['temperature']} (1 - TV by T: "
              + ", ".join(f"{t}: {v:.3f}" for t, v in t5["agreement"].items()) + "); tokens/s, ratio to T5 "
              "target-only at the same batch:", "",
              "| configuration | " + " | ".join(f"batch {b}" for b in bs) + " |", "|---|" + "---|" * len(bs)]
        for label, m in (("target-only", "target"), ("SpecDecode", "specdecode"), ("SpecCascade [token_v3]",
                                                                                  "token_v3")):
            cells = []
            for b in bs:
                row, base = dec.get(f"specref/graph/t5/{m}/b{b}"), _tps(R, f"specref/graph/t5/target/b{b}")
                if not isinstance(row, dict):
                    cells.append("")
                elif "error" in row:
                    cells.append("error")
                else:
                    acc = row.get("acceptance_rate")
                    cells.append(f"{row['tokens_per_s']:.1f}" + (f" ({row['tokens_per_s'] / base:.2f}x" if base
                                                                  else " (")
                                 + (f", acceptance {acc:.2f})" if acc is not None else ")"))
            L.append(f"| {label} | " + " | ".join(cells) + " |")
    spread = {k: max(r["tokens_per_s_each"]) / min(r["tokens_per_s_each"]) - 1 for k, r in dec.items()
              if isinstance(r, dict) and len(r.get("tokens_per_s_each") or ()) > 1}
    if spread:
        worst = max(spread, key=spread.get)
        L += ["", f"Run-to-run spread of a row's tok/s over its {args['repeats']} timed passes (other seeds; max / min "
              f"- 1): median {100 * sorted(spread.values())[len(spread) // 2]:.1f}%, largest "
              f"{100 * spread[worst]:.1f}% (`{worst}`). A ratio between two rows is judged against the larger of "
              "their spreads (the policy table's last column)."]
    vs_hf = []
    for b in bs:
        hf, ours = _tps(R, f"transformers/static/target/b{b}"), _tps(R, f"specref/graph/target/b{b}")
        spec = [row["tokens_per_s"] for k, row in dec.items() if k.startswith("specref/") and k.endswith(f"/b{b}")
                and k.split("/")[2] != "target" and isinstance(row, dict) and "tokens_per_s" in row]
        if hf and ours:
            vs_hf.append(f"batch {b}: specref target-only {ours / hf:.2f}x"
                         + (f", best SpecDecode or token_v3 {max(spec) / hf:.2f}x" if spec else ""))
    if vs_hf:
        L += ["", "Against transformers' static cache + compile (target-only, same batch): " + "; ".join(vs_hf) + "."]
    if A.get("policy"):
        L += ["", "What the block-size policy chose (`AdaptiveGamma`; its costs calibrated at each batch size from "
              "this run's fixed-gamma row and profile, `calibrate`, in target forwards: c, the verify slope, the "
              "work outside the forwards per drafting round and per plain step; g = 0 is a plain target step, "
              "SpecDecode only):", "",
              "| method, draft | batch | c | verify slope | round overhead | plain overhead | mean g | g = 0 rounds "
              "| rounds per g | acceptance | policy / target-only | fixed / target-only | policy / fixed |",
              "|---" * 13 + "|"]
        for p in sorted(A["policy"].values(), key=lambda p: (p["method"], p["draft"], p["batch"])):
            rounds = ", ".join(f"{g}: {n}" for g, n in (p.get("gamma_rounds") or {}).items())
            L.append(f"| {p['method']}, {p['draft']} | {p['batch']} | {_f(p['c'], 3)} | {_f(p['verify_slope'], 3)} "
                     f"| {_f(p.get('round_overhead'), 3)} | {_f(p.get('plain_overhead'), 3)} | "
                     f"{_f(p['mean_gamma'], 2)} | "
                     f"{_f(None if p['zero_share'] is None else 100 * p['zero_share'], 0)}% | {rounds} | "
                     f"{_f(p['acceptance'], 3)} | {_f(p['vs_target'], 2)}x | {_f(p['fixed_vs_target'], 2)}x | "
                     f"{_verdict(p['vs_fixed'], p.get('spread'))} |")
    warm = {k: v.get("warmup_s", v.get("seconds_with_warmup")) for k, v in dec.items()
            if isinstance(v, dict) and ("compile" in k or "static" in k)}
    if warm:
        L += ["", "Warm-up (first call, compilation included): " + "; ".join(
            f"`{k}` {v:.1f} s" for k, v in warm.items() if v is not None) + "."]
    L += ["", "## Targets (one run, one GPU)", "", "| target | goal | measured | met | what limits it |",
          "|---|---|---|---|---|"]
    for k, t in A["targets"].items():
        m = t["measured"]
        ms = "-" if m is None else (f"{100 * m:.1f}%" if t["unit"] == "share" else
                                    f"{m:.2f}{t['unit'] if t['unit'] == 'x' else ' ' + t['unit']}")
        L.append(f"| {k} | {t['goal_text']} | {ms} | {_target_verdict(t)} | {t['limit']} |")
    if "policy" not in args:  # a run from before the block-size policy
        L += ["", "Not measured here: the gamma policy (not in this tree), the CPU comparison with assisted "
              "generation (suite's CPU mode), T5 static engines (refused by the static engines)."]
    else:
        dec = R.get("decode", {})
        missing = ["the CPU comparison with assisted generation (suite's CPU mode)",
                   "sliding-window models (the static engines run them; this bench times Llama and T5 shapes)"
                   if "t5" in R else "T5 and sliding-window models (the static engines run them; this run timed "
                   "Llama shapes only)",
                   "the block-size policy on `compile-graph`"]
        if args["policy"] == "off":
            missing.append("the block-size policy (`--policy off`)")
        if not any(k.startswith("specref/compile-graph/") for k in dec):
            missing.append("`compile-graph` (not in `--parts`, or `--compile off`)")
        if not any(k.startswith("transformers/") for k in dec):
            missing.append("transformers' rows (`hf` not in `--parts`)")
        L += ["", "Not measured here: " + ", ".join(missing) + "."]
    if R.get("skipped"):
        L += ["", "Skipped for the time budget: " + ", ".join(R["skipped"]) + "."]
    if R.get("errors"):
        L += ["", "Errors: " + "; ".join(e.splitlines()[0] for e in R["errors"]) + "."]
    return "\n".join(L) + "\n"


def write(prefix: str, R: dict[str, Any]) -> None:
    R["analysis"] = analyse(R)
    R["total_seconds"] = round(elapsed(), 1)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    write_report(prefix, R, markdown(R))


def render(path: str) -> int:
    """Rewrite a finished run's JSON analysis and markdown from its own measurements."""
    with open(path) as fh:
        R = json.load(fh)
    if not isinstance(R, dict) or R.get("section") != "realistic":
        raise SystemExit(f"{path}: not a bench/realistic.py result (no 'section': 'realistic')")
    prefix = path[: -len(".json")] if path.endswith(".json") else path
    R["analysis"] = analyse(R)
    write_report(prefix, R, markdown(R))
    print(f"rewrote {prefix}.json and {prefix}.md")
    return 0


# ---- main ------------------------------------------------------------------------------------------------------


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="realistic-size decoding benchmark (7B target, 1B / 0.5B drafts)",
                                 prog="bench/realistic.py", add_help=add_help)
    ap.add_argument("--out", default=None, help="output prefix: <out>.json, <out>.md "
                    "(default: bench/results/<device>-realistic)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (seconds)")
    ap.add_argument("--device", default=None, help="default: cuda if available (not with --smoke), else cpu")
    ap.add_argument("--budget-s", type=float, default=None, help="optional parts stop past this (default 420)")
    ap.add_argument("--gamma", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.3, help="token_v3 lenience (default: 0.3)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (smoke 8)")
    ap.add_argument("--prompt-len", type=int, default=None, help="random prompt tokens (default 64; smoke 8)")
    ap.add_argument("--batch-sizes", default=None, help="default 1,8,32,64 (smoke 1,2)")
    ap.add_argument("--requests", type=int, default=None, help="batch-1 requests (default 2; smoke 1)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--drafts", default="1b,0.5b", help="drafts to time (default: 1b,0.5b)")
    ap.add_argument("--parts", default="core,hf,compile,t5",
                    help="core (specref graph engine grid), hf (transformers), compile (compile-graph), t5 (T5 "
                         "v1.1 small -> large on graph); default: all, optional ones (and t5) while the budget "
                         "lasts")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="compile-graph at batch 1 (default auto: on a GPU, if the budget allows)")
    ap.add_argument("--compile-batch-sizes", default="1",
                    help="batch sizes of the compile-graph rows (default 1; a subset of --batch-sizes)")
    ap.add_argument("--policy", choices=("on", "off"), default="on",
                    help="also time SpecDecode and token_v3 with the block-size policy, calibrated per batch size "
                         "from the fixed-gamma rows (default: on)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render", default=None, metavar="JSON", help="measure nothing: re-render a run's JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render:
        return render(args.render)
    return run(args)


class RealisticRun:
    """One run of the realistic-size section: options, device, results ``R`` (written after every row), the
    models and prompts. Each part is one method, called in order by :func:`run`."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch
        import transformers

        self.args = args
        self.smoke = smoke = args.smoke
        self.device = device = args.device or ("cuda" if torch.cuda.is_available() and not smoke else "cpu")
        self.cuda = cuda = device.startswith("cuda")
        for k, v in {"max_new_tokens": 8 if smoke else 128, "prompt_len": 8 if smoke else 64,
                     "batch_sizes": "1,2" if smoke else "1,8,32,64", "requests": 1 if smoke else 2,
                     "budget_s": 60 if smoke else 420}.items():
            if getattr(args, k, None) is None:
                setattr(args, k, v)
        self.bs = bs = [int(b) for b in str(args.batch_sizes).split(",")]
        self.compile_bs = [int(b) for b in str(args.compile_batch_sizes).split(",")]
        if not set(self.compile_bs) <= set(bs):  # a compile-graph row is a ratio to graph at the same batch
            raise ValueError(f"--compile-batch-sizes {args.compile_batch_sizes!r} must be among --batch-sizes "
                             f"{','.join(map(str, bs))}")
        self.parts = set(args.parts.split(","))
        if not self.parts <= set(PARTS):
            raise ValueError(f"unknown part in --parts {args.parts!r}; allowed: {', '.join(PARTS)}")
        self.drafts = [d for d in args.drafts.split(",") if d]
        self.shapes = shapes = SHAPES["smoke" if smoke else "full"]
        for d in self.drafts:
            if d not in shapes["drafts"]:
                raise ValueError(f"unknown draft {d!r}; allowed: {', '.join(shapes['drafts'])}")
        self.dtype = dtype = torch.bfloat16 if cuda else torch.float32
        if smoke:
            torch.set_num_threads(1)
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
        gpu = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine() or "cpu")
        self.prefix = prefix = strip_suffix(args.out or os.path.join(REPO, "bench", "results",
                                                                     slug(gpu) + "-realistic"))
        a = {k: v for k, v in vars(args).items() if k not in ("func", "command", "render")}
        a.update(batch_sizes=bs, dtype=str(dtype).replace("torch.", ""))
        self.R: dict[str, Any] = {
            "section": "realistic", "smoke": smoke, "args": a, "vocab": shapes["vocab"],
            "skipped": [], "errors": [], "decode": {}, "drafts_done": [], "models": {},
            "agreement": {}, "temperature": {},
            "env": {"device": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
                    "python": platform.python_version()}}
        log(f"realistic bench on {gpu} ({device}); budget {args.budget_s:.0f} s; writing {prefix}.json/.md")

    def attempt(self, key: str, fn: Any) -> None:
        R = self.R
        try:
            R["decode"][key] = row = fn()
            log(f"{key}: {row['tokens_per_s']:.1f} tok/s"
                + (f", acceptance {row['acceptance_rate']:.3f}" if row.get("acceptance_rate") is not None else "")
                + (f", mean g {row['mean_gamma']:.2f} ({100 * row['zero_share']:.0f}% g = 0)"
                   if row.get("mean_gamma") is not None else "")
                + (f", warm-up {row['warmup_s']:.1f} s" if "warmup_s" in row else ""))
        except Exception as err:  # noqa: BLE001 - record and go on: one failure must not lose the run
            R["decode"][key] = {"error": f"{type(err).__name__}: {err}"}
            R["errors"].append(f"{key}: {type(err).__name__}: {err}\n{traceback.format_exc()}")
            log(f"{key}: error {type(err).__name__}: {err}")
        write(self.prefix, R)

    def models_and_prompts(self) -> None:
        """Bandwidth, the target, the prompts, then each draft with its agreement by temperature."""
        args, R, device, dtype, shapes = self.args, self.R, self.device, self.dtype, self.shapes
        R["env"]["bandwidth"] = measure_bandwidth(device, self.smoke)
        log(f"copy bandwidth {R['env']['bandwidth']['gb_per_s']:.0f} GB/s")
        vocab = shapes["vocab"]
        t0 = time.perf_counter()
        self.target = target = build(*shapes["target"], vocab=vocab, device=device, dtype=dtype)
        R["models"]["target"] = model_info(target)
        R["build_s"] = {"target": time.perf_counter() - t0}
        log(f"target {R['models']['target']['params'] / 1e9:.3f}B built in {R['build_s']['target']:.1f} s")
        n_prompts = max(max(self.bs), args.requests)
        self.prompts = random_prompts(n_prompts, args.prompt_len, vocab, args.seed)
        calib = random_prompts(4, 16 if self.smoke else 128, vocab, args.seed + 1)
        R["agreement_positions"] = 4 * len(calib[0])
        self.models: dict[str, Any] = {}
        for d in self.drafts:
            t0 = time.perf_counter()
            self.models[d] = build(*shapes["drafts"][d], vocab=vocab, device=device, dtype=dtype)
            R["build_s"][d] = time.perf_counter() - t0
            R["models"][d] = model_info(self.models[d])
            R["agreement"][d] = agreement_by_temperature(self.models[d], target, calib, device)
            R["temperature"][d] = pick_temperature(R["agreement"][d])
            log(f"draft {d}: {R['models'][d]['params'] / 1e9:.3f}B; 1 - TV by T "
                + ", ".join(f"{t}: {v:.3f}" for t, v in R["agreement"][d].items())
                + f"; decoding at T = {R['temperature'][d]}")
        write(self.prefix, R)
        self.T_ref = R["temperature"][self.drafts[0]] if self.drafts else 1.0

    def core(self) -> None:
        """specref graph engine, every batch size: target-only, then for each draft SpecDecode and token_v3 with
        a fixed gamma and with the block-size policy calibrated from those rows (:func:`calibrate`). Target-only
        and fixed SpecDecode are profiled too (step times, outside share, the policy's verify slope)."""
        args, R, device, target, prompts, T_ref = self.args, self.R, self.device, self.target, self.prompts, self.T_ref
        models = self.models
        for b in self.bs if "core" in self.parts else []:
            self.attempt(f"specref/graph/target/b{b}",
                         lambda b=b: run_specref(target, target, "target", "graph", prompts, b, T_ref, args, device,
                                                 True))
            for d in self.drafts:
                T = R["temperature"][d]
                for m in ("specdecode", "token_v3"):
                    self.attempt(f"specref/graph/{m}/{d}/b{b}",
                                 lambda b=b, d=d, m=m, T=T: run_specref(models[d], target, m, "graph", prompts, b, T,
                                                                        args, device, m == "specdecode"))
                if args.policy == "on":
                    for m in ("specdecode", "token_v3"):
                        cal = calibrate(R, d, m, b)
                        if cal is None:
                            R["skipped"].append(f"specref/graph/{m}-adaptive/{d}/b{b} (no fixed row to calibrate)")
                            continue
                        self.attempt(f"specref/graph/{m}-adaptive/{d}/b{b}",
                                     lambda b=b, d=d, m=m, T=T, cal=cal: run_specref(
                                         models[d], target, m, "graph", prompts, b, T, args, device, False, cal))
                    # the fixed SpecDecode row once more, after the policy rows: its passes before and after
                    # make the spread that the policy-vs-fixed verdict is judged against (drift included)
                    key = f"specref/graph/specdecode/{d}/b{b}"
                    if "tokens_per_s" in R["decode"].get(key, {}):
                        self.recheck(key, lambda b=b, d=d, T=T: run_specref(models[d], target, "specdecode", "graph",
                                                                            prompts, b, T, args, device, False))
                if d not in R["drafts_done"]:
                    R["drafts_done"].append(d)

    def recheck(self, key: str, fn: Any) -> None:
        """Time ``key``'s configuration again; its passes join the row's ``tokens_per_s_each`` (the row's best,
        which calibrated the policy, stays the first timing's)."""
        row = self.R["decode"][key]
        self.attempt(key + "#recheck", fn)
        again = self.R["decode"].pop(key + "#recheck", None)
        if again and again.get("tokens_per_s_each"):
            row["recheck_tokens_per_s_each"] = list(again["tokens_per_s_each"])
            row["tokens_per_s_each"] = list(row.get("tokens_per_s_each") or ()) + row["recheck_tokens_per_s_each"]

    def t5(self) -> None:
        """T5 v1.1 small -> large (random weights) on the ``graph`` engine, every batch size: target-only,
        SpecDecode and token_v3 with a fixed gamma, decoded at the temperature calibrated for acceptance ~0.8."""
        if "t5" not in self.parts:
            return
        args, R, device = self.args, self.R, self.device
        if not self.smoke and elapsed() + T5_EXPECTED_S > args.budget_s:
            R["skipped"].append("specref/graph/t5 (T5 v1.1 small -> large)")
            log(f"t5: skipped (about {T5_EXPECTED_S:.0f} s, {args.budget_s - elapsed():.0f} s of budget left)")
            return
        shapes = T5_SHAPES["smoke" if self.smoke else "full"]
        t0 = time.perf_counter()
        target = build_t5(shapes["target"], shapes["vocab"], device, self.dtype)
        draft = build_t5(shapes["draft"], shapes["vocab"], device, self.dtype)
        prompts = random_prompts(max(max(self.bs), args.requests), args.prompt_len, shapes["vocab"], args.seed)
        calib = random_prompts(4, 16 if self.smoke else 128, shapes["vocab"], args.seed + 1)
        agreement = agreement_by_temperature(draft, target, calib, device)
        T = pick_temperature(agreement)
        def count(m: Any) -> int:
            return sum(p.numel() for p in m.parameters())

        R["t5"] = {"params": {"target": count(target), "draft": count(draft)}, "vocab": shapes["vocab"],
                   "agreement": agreement, "temperature": T, "build_s": time.perf_counter() - t0}
        log(f"t5: target {count(target) / 1e6:.1f}M, draft {count(draft) / 1e6:.1f}M parameters; 1 - TV by T "
            + ", ".join(f"{t}: {v:.3f}" for t, v in agreement.items()) + f"; decoding at T = {T}")
        for b in self.bs:
            self.attempt(f"specref/graph/t5/target/b{b}",
                         lambda b=b: run_specref(target, target, "target", "graph", prompts, b, T, args, device,
                                                 False))
            for m in ("specdecode", "token_v3"):
                self.attempt(f"specref/graph/t5/{m}/b{b}",
                             lambda b=b, m=m: run_specref(draft, target, m, "graph", prompts, b, T, args, device,
                                                          False))

    def optional(self) -> list[tuple[str, float, Any]]:
        """The rest in priority order, with each one's expected seconds on one H200 (transformers compiles a 7B
        forward in about a minute, compile-graph well under one per decoder from an empty artifact cache)."""
        args, R, device, target, prompts, T_ref = self.args, self.R, self.device, self.target, self.prompts, self.T_ref
        models, drafts, parts = self.models, self.drafts, self.parts
        optional: list[tuple[str, float, Any]] = []
        if "hf" in parts:
            optional += [("transformers/eager/target/b1", 15,
                          lambda: run_transformers(target, None, prompts, 1, T_ref, args, device, static=False)),
                         ("transformers/static/target/b1", 90,
                          lambda: run_transformers(target, None, prompts, 1, T_ref, args, device, static=True))]
            optional += [(f"transformers/assisted/{d}/b1", 25,
                          lambda d=d: run_transformers(target, models[d], prompts, 1, R["temperature"][d], args,
                                                       device, static=False)) for d in drafts]
        if "compile" in parts and (args.compile == "on" or (args.compile == "auto" and self.cuda)):
            for b in self.compile_bs:
                # cold (empty artifact cache) on one H100: 32 s (target) and 39 s (SpecDecode) to the end of the
                # first generate, bench/compile_warmup.py; about 10 s when the cache has the shapes
                optional.append((f"specref/compile-graph/target/b{b}", 60,
                                 lambda b=b: run_specref(target, target, "target", "compile-graph", prompts, b, T_ref,
                                                         args, device, False)))
                if drafts:
                    d0 = drafts[0]
                    optional.append((f"specref/compile-graph/specdecode/{d0}/b{b}", 75,
                                     lambda b=b, d0=d0: run_specref(models[d0], target, "specdecode", "compile-graph",
                                                                    prompts, b, R["temperature"][d0], args, device,
                                                                    False)))
        if "hf" in parts:
            # the first batch > 1 compiles again (about 45 s on an H200); later ones reused it (1-2 s)
            optional += [(f"transformers/static/target/b{b}", 90 if i == 0 else 20,
                          lambda b=b: run_transformers(target, None, prompts, b, T_ref, args, device, static=True))
                         for i, b in enumerate(self.bs[1:])]
        return optional

    def while_budget_lasts(self) -> None:
        """Each optional row, started only when its expected duration fits the remaining budget."""
        budget = self.args.budget_s
        for key, expect, fn in self.optional():
            if self.smoke or elapsed() + expect <= budget:
                self.attempt(key, fn)
            else:
                self.R["skipped"].append(key)
                log(f"{key}: skipped (about {expect:.0f} s, {budget - elapsed():.0f} s of budget left)")

    def finish(self) -> None:
        write(self.prefix, self.R)
        log(f"done in {elapsed():.0f} s: {self.prefix}.json, {self.prefix}.md")


def run(args: argparse.Namespace) -> int:
    clock.restart()
    section = RealisticRun(args)
    for step in (section.models_and_prompts, section.core, section.while_budget_lasts, section.t5, section.finish):
        step()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as err:
        print(f"bench/realistic.py: error: {err}", file=sys.stderr)
        sys.exit(2)
