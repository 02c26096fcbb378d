"""A 1B-class target forward at batch 1 against its bandwidth floor (weight + KV bytes over bandwidth)."""

from __future__ import annotations

import argparse
from typing import Any

from bench.clock import log
from bench.lazy import RoundProfiler, make_decoder, torch
from bench.models import ONE_B, ONE_B_SMOKE, llama, n_params


def bandwidth_floor(args: argparse.Namespace, device: str, bw: float, engines: list[str]) -> dict[str, Any]:
    """Target-forward time of a random-init 1B-class Llama at batch 1 vs (weights + KV bytes) / bandwidth."""
    shape = ONE_B_SMOKE if args.smoke else ONE_B
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = llama(shape, None, tied=False, context=4096).eval()
    finally:
        torch.set_default_dtype(prev)
    ctx_len = 64 if args.smoke else 512
    new = 16 if args.smoke else 64
    esize = torch.finfo(dtype).bits // 8
    emb = model.get_input_embeddings().weight.numel()
    weight_bytes = (n_params(model) - emb) * esize  # the input embedding is a lookup, not a full read
    heads_kv, layers = shape["num_key_value_heads"], shape["num_hidden_layers"]
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    mean_len = ctx_len + new / 2
    kv_bytes = layers * 2 * heads_kv * head_dim * mean_len * esize
    floor_s = (weight_bytes + kv_bytes) / (bw * 1e9)
    out: dict[str, Any] = {"params": n_params(model), "weight_bytes": weight_bytes, "kv_bytes": kv_bytes,
                           "context": ctx_len, "new_tokens": new, "floor_ms": 1000 * floor_s, "engines": {}}
    ids = torch.randint(0, shape["vocab_size"], (1, ctx_len), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    for eng in engines:
        try:
            dec = make_decoder(model, model, "target", engine=eng)
            dec.generate(ids, max_new_tokens=new, seed=0)  # warm-up / capture
            prof = RoundProfiler(device)
            dec.generate(ids, max_new_tokens=new, seed=1, profiler=prof)
            s = prof.summary()["per_role"].get("target", {})
            fwd = s["seconds"] / max(1, s["calls"])
            out["engines"][eng] = {"forward_ms": 1000 * fwd, "achieved_gb_per_s": (weight_bytes + kv_bytes) / fwd / 1e9,
                                   "x_floor": fwd / floor_s}
            log(f"bandwidth 1B {eng}: forward {1000 * fwd:.3f} ms, floor {1000 * floor_s:.3f} ms "
                f"({fwd / floor_s:.2f}x)")
        except Exception as err:  # noqa: BLE001 - report and go on
            out["engines"][eng] = {"error": f"{type(err).__name__}: {err}"}
            log(f"bandwidth 1B {eng}: error {err}")
    del model
    if device.startswith("cuda"):
        from specref.decode.static import clear_static_engines

        clear_static_engines()
        torch.cuda.empty_cache()
    return out
