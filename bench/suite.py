"""specref benchmark suite: one command, one GPU run, every number side by side.

What ONE run does (about 6-8 minutes on one H100; ``--budget-s`` skips optional parts when time runs short;
progress lines carry the elapsed time; results are rewritten after every section, so a run cut short still
leaves its numbers):

1. **Environment**: GPU name, versions, and the device's memory bandwidth measured with a large
   device-to-device copy (bytes read + written over time).
2. **Benchmark pair**, trained in the run on the Python sources present on the machine (the standard
   library, then site-packages): a byte-level BPE tokenizer (8192 tokens), a Llama target (~420M
   parameters: 24 layers, width 1024) trained ``--target-seconds`` with next-token cross-entropy, and a
   Llama draft (~35M: 4 layers, width 768, tied embeddings) distilled from it for ``--draft-seconds``.
   Numerically safe: bf16 autocast with fp32 master weights, warm-up then cosine learning rate, gradient
   clipping, steps with a non-finite loss or gradient skipped (and the learning rate halved), weights
   checked finite at the end. Acceptance rates are therefore real, not an accident of random weights.
3. **Decoding**, temperature 1, no EOS (every row generates ``--max-new-tokens``), held-out prompts of
   48-96 tokens, at batch sizes 1, 8, 16 and 32 (batch 1 = ``--requests`` prompts one after the other):
   specref's decoder with target-only, SpecDecode, SpecCascade [token_v3] (and ``learned`` when ``--head``
   is given) for each engine in ``--engines`` (``plain`` reference, ``fast``, ``graph`` = CUDA graphs of the
   model forwards, ``compile-graph`` = torch.compile + CUDA graphs, tried at batch 1 only and last), and
   transformers' ``generate`` (target-only, batched) and ``generate(assistant_model=draft)`` (batch 1, its
   limit; constant ``--gamma`` draft tokens). Tokens/s = generated tokens / wall time (synchronised), best
   of ``--repeats`` after one warm-up; per-request latency = wall time per request (batch 1) or per batch.
4. **Round profile**: share of round time outside the two models' forwards (rules, verification, sampling,
   bookkeeping, the host sync, idle gaps), from CUDA events around every forward
   (:class:`specref.decode.profile.RoundProfiler`), per batch size and engine.
5. **Bandwidth floor**: a random-init 1B-class Llama (TinyLlama-1.1B's shape) at batch 1 with a ~512-token
   context: mean target-forward time vs the floor (weight bytes + KV bytes) / measured bandwidth, per engine.
6. **Data-parallel sweep** (when 2 GPUs are visible): the trained pair, saved with a tokenizer and a
   JSON-lines task of held-out snippets, swept with ``torchrun -m specref.repro.distributed`` on 1 and on 2
   GPUs; decode-phase throughput ratio, and whether the merged CSVs agree.
7. JSON (everything) and a markdown table (``<out>.json``, ``<out>.md``), with the issue's targets checked.

Usage::

    PYTHONUNBUFFERED=1 python bench/suite.py --out bench/results/h100          # the GPU run
    python bench/suite.py --smoke --out /tmp/smoke                             # CPU, tiny, < 60 s
    specref bench ...                                                           # the same, via the CLI

Needs torch and transformers 5.x; ``tokenizers`` optional (byte vocabulary without it); no network.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


class _Lazy:
    """A module imported on first attribute access, so that ``specref --help`` (which builds this parser for
    ``specref bench``) does not pay for importing torch and transformers."""

    def __init__(self, name: str) -> None:
        self._name, self._mod = name, None

    def __getattr__(self, attr: str) -> Any:
        if self._mod is None:
            self._mod = importlib.import_module(self._name)
        return getattr(self._mod, attr)


torch: Any = _Lazy("torch")
F: Any = _Lazy("torch.nn.functional")


def make_decoder(*args: Any, **kwargs: Any) -> Any:
    from specref.decode import make_decoder as make

    return make(*args, **kwargs)


def RoundProfiler(device: Any) -> Any:  # noqa: N802 - stands for the class
    from specref.decode.profile import RoundProfiler as Profiler

    return Profiler(device)

# ---- logging with timestamps ---------------------------------------------------------------------------------

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def elapsed() -> float:
    return time.perf_counter() - _T0


# ---- corpus and tokenizer -----------------------------------------------------------------------------------


def python_sources(limit_bytes: int) -> list[str]:
    """Texts of .py files from the standard library, then site-packages, up to ``limit_bytes``."""
    roots = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]]
    texts, total = [], 0
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
            if "site-packages" in path and root == roots[0]:
                continue
            try:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
            except (OSError, UnicodeDecodeError):
                continue
            if len(text) < 200:
                continue
            texts.append(text)
            total += len(text)
            if total >= limit_bytes:
                return texts
    if total < 100_000:
        raise SystemExit(f"found only {total} bytes of Python sources under {roots}; cannot build a corpus")
    return texts


class ByteTokenizer:
    """Fallback when ``tokenizers`` is missing: UTF-8 bytes."""

    vocab_size = 256
    backend = None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def train_tokenizer(texts: list[str], vocab: int, budget_bytes: int = 8_000_000) -> Any:
    """A byte-level BPE trained on (at most ``budget_bytes`` of) the corpus, in seconds."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        return ByteTokenizer()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    picked, budget = [], budget_bytes
    for t in texts:
        picked.append(t)
        budget -= len(t)
        if budget <= 0:
            break
    tok.train_from_iterator(picked, trainer)

    class Wrapped:
        vocab_size = tok.get_vocab_size()
        backend = tok

        def encode_batch(self, batch: list[str]) -> list[list[int]]:
            return [e.ids for e in tok.encode_batch(batch)]

        def decode(self, ids: list[int]) -> str:
            return tok.decode(ids)

    return Wrapped()


# ---- models ------------------------------------------------------------------------------------------------

PAIR_SHAPES = {
    # ~420M target (24 x 1024, MLP 4096, untied) and ~35M draft (4 x 768, MLP 2048, tied) at vocab 8192
    "full": (
        {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16},
        {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 4, "num_attention_heads": 12},
    ),
    "smoke": (
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
    ),
}
#: TinyLlama-1.1B's architecture (random init): the 1B-class model of the bandwidth measurement.
ONE_B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
         "num_key_value_heads": 4, "vocab_size": 32000}
ONE_B_SMOKE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "vocab_size": 512}


def _llama(shape: dict[str, Any], vocab: int | None, tied: bool, context: int = 2048) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(shape)
    cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
    if vocab is not None:
        cfg["vocab_size"] = vocab
    config = LlamaConfig(**cfg, max_position_embeddings=context, rms_norm_eps=1e-5, bos_token_id=None,
                         eos_token_id=None, pad_token_id=0, tie_word_embeddings=tied, attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def build_pair(vocab: int, smoke: bool) -> tuple[Any, Any]:
    t_shape, d_shape = PAIR_SHAPES["smoke" if smoke else "full"]
    return _llama(d_shape, vocab, tied=True), _llama(t_shape, vocab, tied=False)


def cast(model: Any, dtype: Any) -> Any:
    """``model.to(dtype)`` keeping the rotary frequencies in float32 (a bf16 ``inv_freq`` would shift every
    position's angle by up to ~0.4%, i.e. whole radians at a few hundred positions, vs training)."""
    keep = {n: b.detach().clone() for n, b in model.named_buffers() if "inv_freq" in n}
    model.to(dtype)
    for name, buf in keep.items():
        mod_name, _, attr = name.rpartition(".")
        mod = model.get_submodule(mod_name)
        mod._buffers[attr] = buf.to(torch.float32)
    return model


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- training (numerically safe, wall-clock budget) -----------------------------------------------------------


def batches(stream: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    hi = stream.numel() - seq - 1
    while True:
        starts = torch.randint(0, hi, (batch,), generator=gen)
        yield stream[starts.unsqueeze(1) + torch.arange(seq + 1)]


def train(model: Any, stream: torch.Tensor, seconds: float, device: str, batch: int, seq: int, lr: float,
          teacher: Any = None, warmup: int = 100, log_every: int = 50) -> dict[str, Any]:
    """Train for a wall-clock budget: next-token cross-entropy, or KL(teacher || model) when distilling.

    Safety: bf16 autocast on CUDA (fp32 master weights), linear warm-up then cosine decay to 10% of ``lr``
    over the budget, weight decay on matrices only, gradient clipping at 1, and a step whose loss or
    gradient norm is not finite is skipped (and ``lr`` halved). Raises if the weights end non-finite.
    """
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    cuda = device.startswith("cuda")
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=cuda)
    gen = torch.Generator().manual_seed(1 if teacher is None else 2)
    it = batches(stream, batch, seq, gen)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    losses, step, skipped, t0 = [], 0, 0, time.perf_counter()
    last = float("nan")
    while time.perf_counter() - t0 < seconds:
        x = next(it).to(device, non_blocking=True)
        inp, tgt = x[:, :-1], x[:, 1:]
        frac = min(1.0, (time.perf_counter() - t0) / max(seconds, 1e-9))
        cur = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = cur
        with amp:
            logits = model(input_ids=inp).logits.float()
            if teacher is None:
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
            else:
                with torch.no_grad():
                    t_logits = teacher(input_ids=inp).logits.float()
                loss = F.kl_div(F.log_softmax(logits, -1).reshape(-1, logits.shape[-1]),
                                F.log_softmax(t_logits, -1).reshape(-1, logits.shape[-1]),
                                log_target=True, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(loss)):
            skipped += 1
            lr *= 0.5
            step += 1
            continue
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not bool(torch.isfinite(norm)):  # never let a bad step poison the weights
            opt.zero_grad(set_to_none=True)
            skipped += 1
            lr *= 0.5
        else:
            opt.step()
        if step % log_every == 0:
            last = round(float(loss.detach()), 4)
            losses.append((step, last))
        step += 1
    model.eval()
    del opt
    for p in model.parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise RuntimeError("training produced non-finite weights")
    return {"steps": step, "skipped_steps": skipped, "seconds": round(time.perf_counter() - t0, 1),
            "tokens": step * batch * seq, "loss_curve": losses, "final_loss": last}


# ---- timing helpers ------------------------------------------------------------------------------------------


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


# ---- decoding measurements ------------------------------------------------------------------------------------


def _groups(prompts: list[list[int]], batch: int, requests: int) -> list[list[list[int]]]:
    return [[p] for p in prompts[:requests]] if batch == 1 else [prompts[:batch]]


def run_ours(dec: Any, prompts: list[list[int]], batch: int, args: argparse.Namespace, device: str,
             profile: bool = False) -> dict[str, Any]:
    """specref decoder: tokens/s and per-request latency (best of ``repeats`` after one identical warm-up)."""
    groups = _groups(prompts, batch, args.requests)

    def once(seed: int, prof: Any = None) -> tuple[float, int, list[float], list[Any]]:
        wall, tokens, lat, stats = 0.0, 0, [], []
        for k, grp in enumerate(groups):
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
    best = None
    for r in range(args.repeats):
        res = once(1000 * (r + 1))
        if best is None or res[0] < best[0]:
            best = res
    wall, tokens, lat, stats = best
    drafted = sum(int(s.drafted.sum()) for s in stats)
    accepted = sum(int(s.accepted.sum()) for s in stats)
    tcalls = sum(int(s.target_calls.sum()) for s in stats)
    return {
        "tokens_per_s": tokens / wall, "tokens": tokens, "wall_s": wall,
        "latency_ms": 1000 * sum(lat) / len(lat),
        "acceptance_rate": accepted / drafted if drafted else None,
        "tokens_per_target_call": tokens / tcalls if tcalls else None,
        "target_forwards": sum(s.target_forwards for s in stats),
        "draft_forwards": sum(s.draft_forwards for s in stats),
        "rounds": sum(s.num_rounds for s in stats),
    }


def run_hf(target: Any, draft: Any | None, prompts: list[list[int]], batch: int, args: argparse.Namespace,
           device: str) -> dict[str, Any]:
    """transformers' generate: target-only (batched, left-padded) or assisted (batch 1)."""
    kw: dict[str, Any] = {"do_sample": args.temperature > 0, "max_new_tokens": args.max_new_tokens,
                          "min_new_tokens": args.max_new_tokens, "pad_token_id": 0, "eos_token_id": None}
    if args.temperature > 0:
        kw.update(temperature=args.temperature, top_k=0, top_p=1.0)
    if draft is not None:
        gc = draft.generation_config
        gc.num_assistant_tokens = args.gamma
        gc.num_assistant_tokens_schedule = "constant"
        gc.assistant_confidence_threshold = 0.0
        kw["assistant_model"] = draft
    groups = _groups(prompts, batch, args.requests)

    def once(seed: int) -> tuple[float, int, list[float]]:
        wall, tokens, lat = 0.0, 0, []
        for k, grp in enumerate(groups):
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


# ---- bandwidth floor --------------------------------------------------------------------------------------------


def bandwidth_floor(args: argparse.Namespace, device: str, bw: float, engines: list[str]) -> dict[str, Any]:
    """Target-forward time of a random-init 1B-class Llama at batch 1 vs (weights + KV bytes) / bandwidth."""
    shape = ONE_B_SMOKE if args.smoke else ONE_B
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = _llama(shape, None, tied=False, context=4096).eval()
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


# ---- data-parallel sweep ----------------------------------------------------------------------------------------


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


# ---- report ------------------------------------------------------------------------------------------------------


def _best(dec: dict[str, Any], method: str, b: int, impl: str = "specref") -> tuple[str | None, dict[str, Any]]:
    best_key, best = None, {}
    for key, r in dec.items():
        parts = key.split("/")
        if parts[0] != impl or "tokens_per_s" not in r:
            continue
        if parts[-2] == method and parts[-1] == f"b{b}" and r["tokens_per_s"] > best.get("tokens_per_s", -1):
            best_key, best = key, r
    return best_key, best


def _same_engine(dec: dict[str, Any], method: str, b: int) -> dict[str, Any] | None:
    """Best ratio of ``method`` to target-only decoded by the SAME specref engine (None if no engine has both)."""
    best: dict[str, Any] | None = None
    for key, r in dec.items():
        parts = key.split("/")
        if parts[0] != "specref" or parts[-2] != method or parts[-1] != f"b{b}" or "tokens_per_s" not in r:
            continue
        base = dec.get("/".join([*parts[:-2], "target", parts[-1]]), {})
        if "tokens_per_s" in base:
            ratio = r["tokens_per_s"] / base["tokens_per_s"]
            if best is None or ratio > best["ratio"]:
                best = {"ratio": ratio, "engine": parts[1]}
    return best


def summarize(R: dict[str, Any], batch_sizes: list[int]) -> dict[str, Any]:
    """Ratios of the issue's targets (None where not measured)."""
    dec = R.get("decode", {})
    t: dict[str, Any] = {}
    for b in batch_sizes:
        tgt_key, tgt = _best(dec, "target", b)
        for m in ("specdecode", "token_v3", "learned"):
            k, r = _best(dec, m, b)
            if r and tgt:
                # strict: the fastest speculative configuration against the fastest target-only one, whatever
                # their engines (an engine that timed only target-only still sets the bar)
                t[f"{m}_vs_target_only_b{b}"] = {"ratio": r["tokens_per_s"] / tgt["tokens_per_s"], "ours": k,
                                                 "baseline": tgt_key}
            same = _same_engine(dec, m, b)
            if same:
                t[f"{m}_vs_target_only_same_engine_b{b}"] = same
        hf_t = dec.get(f"hf/target/b{b}", {})
        if tgt and "tokens_per_s" in hf_t:
            t[f"target_only_vs_hf_generate_b{b}"] = {"ratio": tgt["tokens_per_s"] / hf_t["tokens_per_s"]}
    hf_a = dec.get("hf/assisted/b1", {})
    k, sd = _best(dec, "specdecode", 1)
    if sd and "tokens_per_s" in hf_a:
        t["specdecode_vs_hf_assisted_b1"] = {"ratio": sd["tokens_per_s"] / hf_a["tokens_per_s"], "ours": k}
    prof = R.get("profile", {})
    shares = {k: v["outside_share"] for k, v in prof.items() if "outside_share" in v and k.endswith("/b32")}
    if shares:
        k = min(shares, key=shares.get)
        t["outside_share_b32"] = {"value": shares[k], "config": k}
    bwr = R.get("bandwidth_1b", {}).get("engines", {})
    xs = {k: v["x_floor"] for k, v in bwr.items() if "x_floor" in v}
    if xs:
        k = min(xs, key=xs.get)
        t["target_forward_x_floor_1b_b1"] = {"value": xs[k], "engine": k}
    dp = R.get("dp", {})
    if "speedup_decode" in dp:
        t["dp_2gpu_speedup"] = {"value": dp["speedup_decode"], "end_to_end": dp.get("speedup_end_to_end"),
                                "rows_equal": dp.get("rows_equal")}
    goals = {
        "specdecode_vs_target_only_b1": (">=", 2.0), "specdecode_vs_hf_assisted_b1": (">=", 1.5),
        "outside_share_b32": ("<=", 0.05), "target_forward_x_floor_1b_b1": ("<=", 2.0),
        "dp_2gpu_speedup": (">=", 1.8),
    }
    for name, (op, goal) in goals.items():
        if name in t:
            v = t[name].get("ratio", t[name].get("value"))
            t[name]["target"] = f"{op} {goal}"
            t[name]["met"] = bool(v >= goal) if op == ">=" else bool(v <= goal)
    return t


def markdown(R: dict[str, Any], batch_sizes: list[int]) -> str:
    env = R.get("env", {})
    lines = [f"# specref benchmark: {env.get('device', '?')}", "",
             f"torch {env.get('torch')}, transformers {env.get('transformers')}; measured memory bandwidth "
             f"{env.get('bandwidth', {}).get('gb_per_s', float('nan')):.0f} GB/s; "
             f"{'SMOKE RUN (tiny CPU models: numbers mean nothing)' if R.get('smoke') else ''}", ""]
    info = R.get("pair", {})
    if info:
        d_m, t_m = info.get("draft_params", 0) / 1e6, info.get("target_params", 0) / 1e6
        lines += [f"Pair: draft {d_m:.1f}M / target {t_m:.1f}M "
                  f"parameters, trained in the run on {info.get('train_tokens', 0) / 1e6:.1f}M tokens of Python "
                  f"sources (target loss {info.get('target_training', {}).get('final_loss')}, draft KL "
                  f"{info.get('draft_training', {}).get('final_loss')}); gamma {R['args']['gamma']}, "
                  f"T {R['args']['temperature']}, {R['args']['max_new_tokens']} new tokens, token_v3 alpha "
                  f"{R['args']['alpha']}.", ""]
    dec = R.get("decode", {})
    lines += ["## Decoding throughput", "",
              "| implementation / engine / method | batch | tok/s | ms per request | vs best target-only (specref) "
              "| acceptance | tokens / target call |", "|---|---|---|---|---|---|---|"]
    for b in batch_sizes:
        _, base = _best(dec, "target", b)
        for key, r in dec.items():
            if not key.endswith(f"/b{b}"):
                continue
            if "tokens_per_s" not in r:
                lines.append(f"| {key[: -len(f'/b{b}')]} | {b} | error: {r.get('error', '?')[:80]} | | | | |")
                continue
            ratio = r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
            acc, tpc = r.get("acceptance_rate"), r.get("tokens_per_target_call")
            acc_s = "-" if acc is None else f"{acc:.3f}"
            tpc_s = "-" if tpc is None else f"{tpc:.2f}"
            lines.append(f"| {key[: -len(f'/b{b}')]} | {b} | {r['tokens_per_s']:.1f} | {r['latency_ms']:.1f} | "
                         f"{ratio:.2f}x | {acc_s} | {tpc_s} |")
    prof = R.get("profile", {})
    if prof:
        lines += ["", "## Round time outside the model forwards", "",
                  "| engine / method / batch | rounds | us per round | outside us per round | outside share | "
                  "draft ms / forward | target ms / forward |",
                  "|---|---|---|---|---|---|---|"]
        for k, v in prof.items():
            if "outside_share" in v:
                per = {role: 1000 * r["seconds"] / r["calls"] if r.get("calls") else float("nan")
                       for role, r in v.get("per_role", {}).items()}
                lines.append(f"| {k} | {v['rounds']} | {v['round_us']:.0f} | {v['outside_us_per_round']:.0f} | "
                             f"{100 * v['outside_share']:.1f}% | {per.get('draft', float('nan')):.3f} | "
                             f"{per.get('target', float('nan')):.3f} |")
            else:
                lines.append(f"| {k} | error: {v.get('error', '?')[:80]} | | | | | |")
    bwr = R.get("bandwidth_1b", {})
    if bwr:
        lines += ["", f"## Target forward vs the bandwidth floor (random-init {bwr.get('params', 0) / 1e9:.2f}B Llama, "
                  f"batch 1, {bwr.get('context')}-token context)", "",
                  f"Floor: (weights {bwr.get('weight_bytes', 0) / 1e9:.2f} GB + KV "
                  f"{bwr.get('kv_bytes', 0) / 1e6:.1f} MB) "
                  f"/ measured bandwidth = {bwr.get('floor_ms', float('nan')):.3f} ms.", "",
                  "| engine | forward ms | achieved GB/s | x floor |", "|---|---|---|---|"]
        for k, v in bwr.get("engines", {}).items():
            if "forward_ms" in v:
                lines.append(f"| {k} | {v['forward_ms']:.3f} | {v['achieved_gb_per_s']:.0f} | {v['x_floor']:.2f} |")
            else:
                lines.append(f"| {k} | error: {v.get('error', '?')[:80]} | | |")
    dp = R.get("dp")
    if dp:
        lines += ["", "## Data-parallel sweep", ""]
        if "speedup_decode" in dp:
            runs = {int(k): v for k, v in dp["runs"].items()}  # JSON turns the GPU counts into strings
            lines.append(f"{dp['examples']} examples x 4 methods, batch {dp['batch_size']}: decode phase "
                         f"{runs[1]['decode_seconds_max']:.2f} s on 1 GPU vs "
                         f"{runs[max(runs)]['decode_seconds_max']:.2f} s on {max(runs)}: "
                         f"{dp['speedup_decode']:.2f}x (end to end incl. process start "
                         f"{dp['speedup_end_to_end']:.2f}x); "
                         f"merged rows equal the 1-GPU rows: {dp.get('rows_equal')}.")
        else:
            lines.append(f"not measured: {dp.get('skipped') or dp.get('error') or dp.get('runs')}")
    tg = R.get("targets", {})
    if tg:
        lines += ["", "## Issue 7 targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
        for k, v in tg.items():
            val = v.get("ratio", v.get("value"))
            lines.append(f"| {k} | {val:.3f} | {v.get('target', '')} | {v.get('met', '')} |")
    skipped = R.get("skipped", [])
    if skipped:
        lines += ["", "Skipped (time budget or not applicable): " + "; ".join(skipped)]
    errors = R.get("errors", [])
    if errors:
        lines += ["", "Errors: " + "; ".join(e[:200] for e in errors)]
    lines += ["", f"Total run time {R.get('total_seconds', elapsed()):.0f} s."]
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


class Writer:
    def __init__(self, prefix: str, batch_sizes: list[int]) -> None:
        self.prefix, self.batch_sizes = prefix, batch_sizes
        d = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(d, exist_ok=True)

    def __call__(self, R: dict[str, Any]) -> None:
        R["targets"] = summarize(R, self.batch_sizes)
        R["total_seconds"] = round(elapsed(), 1)
        self.write(R)

    def write(self, R: dict[str, Any]) -> None:
        for ext, text in ((".json", json.dumps(R, indent=1, default=str)), (".md", markdown(R, self.batch_sizes))):
            tmp = self.prefix + ext + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(text)
            os.replace(tmp, self.prefix + ext)


# ---- main -----------------------------------------------------------------------------------------------------------


DESCRIPTION = "benchmark suite: train a pair, then decode speed vs transformers, overhead, bandwidth, data parallel"


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=DESCRIPTION, prog="bench/suite.py", add_help=add_help)
    ap.add_argument("--out", default=None,
                    help="output prefix: writes <out>.json and <out>.md; an existing folder gets "
                         "<folder>/<device-name>.{json,md} (default: bench/results/<device-name>)")
    ap.add_argument("--smoke", action="store_true", help="tiny models and budgets on the CPU (< 60 s)")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available, else cpu)")
    ap.add_argument("--budget-s", type=float, default=None, help="optional parts stop past this many seconds "
                    "(default 480; smoke 45)")
    ap.add_argument("--gamma", type=int, default=5, help="drafts per round (default: 5)")
    ap.add_argument("--alpha", type=float, default=0.3, help="token_v3 lenience (default: 0.3)")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="new tokens per request (default 128; smoke 8)")
    ap.add_argument("--batch-sizes", default=None, help="default 1,8,16,32 (smoke 1,2,4)")
    ap.add_argument("--requests", type=int, default=None,
                    help="prompts decoded one after the other at batch 1 (default 4; smoke 2)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per configuration, best kept (default: 1)")
    ap.add_argument("--engines", default=None,
                    help="specref engines, in priority order (default on a GPU graph,compile-graph: the eager engines "
                         "take minutes at batch 1, add fast,plain to compare them; on a CPU fast,plain; smoke "
                         "fast,graph,plain: graph runs eagerly on a CPU)")
    ap.add_argument("--methods", default="target,specdecode,token_v3",
                    help="methods to time (default: target,specdecode,token_v3)")
    ap.add_argument("--head", default=None, help="a trained deferral head: adds the learned rule (default: none)")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' generate (default: timed)")
    ap.add_argument("--target-seconds", type=float, default=None,
                    help="training time of the benchmark's target (default 90; smoke 3)")
    ap.add_argument("--draft-seconds", type=float, default=None,
                    help="training time of the benchmark's draft (default 45; smoke 2)")
    ap.add_argument("--corpus-mb", type=float, default=None, help="training corpus size (default 30; smoke 0.4)")
    ap.add_argument("--vocab", type=int, default=None, help="tokenizer vocabulary (default 8192; smoke 384)")
    ap.add_argument("--dp", choices=("auto", "on", "off"), default="auto",
                    help="data-parallel sweep (default: auto = when 2 GPUs are visible)")
    ap.add_argument("--dp-examples", type=int, default=96, help="examples of the data-parallel sweep (default: 96)")
    ap.add_argument("--dp-batch", type=int, default=8, help="batch size of the data-parallel sweep (default: 8)")
    ap.add_argument("--dp-new-tokens", type=int, default=64,
                    help="new tokens per example in the data-parallel sweep (default: 64)")
    ap.add_argument("--dp-timeout", type=float, default=240,
                    help="seconds before the data-parallel sweep is stopped (default: 240)")
    ap.add_argument("--eager-profile", choices=("auto", "on", "off"), default="auto",
                    help="also profile the plain and fast engines' SpecDecode rounds at batch 1 on one request "
                         "(default: auto = on a GPU)")
    ap.add_argument("--compile-reserve-s", type=float, default=60,
                    help="start a torch.compile configuration only with this much budget left (default: 60)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the prompts and decodes (default: 0)")
    ap.add_argument("--realistic", action="store_true",
                    help="run only the realistic-size section instead (bench/realistic.py: 7B target, 1B and "
                         "0.5B-class drafts, random bf16 weights; takes --out, --smoke, --device, --budget-s, "
                         "--gamma, --alpha, --max-new-tokens, --batch-sizes, --requests, --repeats, --no-hf, --seed)")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="measure nothing: recompute the targets of a finished run's JSON and rewrite it and "
                         "its markdown after a change to the summary, leaving the measurements untouched "
                         "(default: measure)")
    return ap


def render(path: str) -> int:
    """Rewrite ``<prefix>.json`` / ``<prefix>.md`` of a finished run from its own measurements."""
    with open(path) as fh:
        R = json.load(fh)
    if not isinstance(R, dict) or "args" not in R:
        raise SystemExit(f"{path}: not a bench/suite.py result (no 'args')")
    batch_sizes = [int(b) for b in str(R["args"]["batch_sizes"]).split(",")]
    prefix = path[: -len(".json")] if path.endswith(".json") else path
    R["targets"] = summarize(R, batch_sizes)
    Writer(prefix, batch_sizes).write(R)  # not __call__: keep the run's own total_seconds
    print(f"rewrote {prefix}.json and {prefix}.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render:
        return render(args.render)
    return run(args)


def _realistic(args: argparse.Namespace) -> int:
    """The realistic-size section (bench/realistic.py) with this parser's options."""
    bench = os.path.dirname(os.path.abspath(__file__))
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import realistic

    ns = realistic.build_parser().parse_args([])
    for k in ("out", "smoke", "device", "budget_s", "gamma", "alpha", "max_new_tokens", "batch_sizes", "requests",
              "repeats", "seed"):
        setattr(ns, k, getattr(args, k))
    if args.no_hf:
        ns.parts = "core,compile"
    return realistic.run(ns)


def run(args: argparse.Namespace) -> int:
    """Run the suite with parsed arguments (``specref bench`` calls this)."""
    if getattr(args, "realistic", False):
        return _realistic(args)
    global _T0
    _T0 = time.perf_counter()
    for extra in ("func", "command"):
        if hasattr(args, extra):
            delattr(args, extra)
    smoke = args.smoke
    device = args.device or ("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    cuda = device.startswith("cuda")
    defaults = {"max_new_tokens": 8 if smoke else 128, "requests": 2 if smoke else 4,
                "target_seconds": 3 if smoke else 90, "draft_seconds": 2 if smoke else 45,
                "corpus_mb": 0.4 if smoke else 30, "vocab": 384 if smoke else 8192,
                "budget_s": 45 if smoke else 480, "batch_sizes": "1,2,4" if smoke else "1,8,16,32",
                # measured on H100 / H200: the eager engines need ~15 ms of host time per 24-layer forward, so
                # timing them at batch 1 ate most of a 480 s budget; graphs are 5-8x faster
                "engines": "fast,graph,plain" if smoke else ("graph,compile-graph" if cuda else "fast,plain")}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    engines = [e for e in args.engines.split(",") if e]
    methods = [m for m in args.methods.split(",") if m]
    if smoke:
        torch.set_num_threads(1)  # tiny models: threads only contend (and CI runs tests in parallel)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    gpu = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine() or "cpu")
    name = _slug(gpu) + ("-smoke" if smoke else "")
    prefix = args.out or os.path.join(REPO, "bench", "results", name)
    if os.path.isdir(prefix) or prefix.endswith(os.sep):  # a folder: <folder>/<device-name>.{json,md}
        prefix = os.path.join(prefix, name)
    for ext in (".json", ".md"):
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    write = Writer(prefix, batch_sizes)
    import transformers

    R: dict[str, Any] = {"smoke": smoke, "args": vars(args), "skipped": [], "errors": [],
                         "env": {"device": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
                                 "gpus": torch.cuda.device_count() if cuda else 0, "python": platform.python_version()}}
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    log(f"specref bench on {gpu} ({device}); torch {torch.__version__}, transformers {transformers.__version__}; "
        f"budget {args.budget_s:.0f} s; writing {prefix}.json/.md")

    def over(frac: float) -> bool:
        """Past ``frac`` of the time budget (each optional part checks its own deadline)."""
        return elapsed() > frac * args.budget_s

    # 1. environment
    R["env"]["bandwidth"] = measure_bandwidth(device, smoke)
    bw = R["env"]["bandwidth"]["gb_per_s"]
    log(f"memory bandwidth (device copy): {bw:.0f} GB/s")
    write(R)

    # 2. data, tokenizer, pair
    texts = python_sources(int(args.corpus_mb * 1e6))
    split = max(1, int(len(texts) * 0.95))
    tok = train_tokenizer(texts[:split], args.vocab, 1_000_000 if smoke else 8_000_000)
    train_ids = torch.tensor([i for ids in tok.encode_batch(texts[:split]) for i in ids], dtype=torch.long)
    held = [ids for ids in tok.encode_batch(texts[split:]) if len(ids) > 200]
    vocab = tok.vocab_size
    log(f"corpus: {len(texts)} files, {train_ids.numel() / 1e6:.1f}M training tokens, vocab {vocab}")
    with torch.device(device):  # initialise on the device: seconds instead of a minute for 420M on a CPU
        draft, target = build_pair(vocab, smoke)
    info: dict[str, Any] = {"draft_params": n_params(draft), "target_params": n_params(target),
                            "train_tokens": train_ids.numel(), "vocab": vocab}
    R["pair"] = info
    log(f"models: draft {info['draft_params'] / 1e6:.1f}M, target {info['target_params'] / 1e6:.1f}M parameters")
    bsz, seq = (4, 64) if smoke else (32, 512)
    warm = 5 if smoke else 100
    info["target_training"] = train(target, train_ids, args.target_seconds, device, bsz, seq, 3e-4, warmup=warm)
    tt = info["target_training"]
    log(f"target trained: {tt['steps']} steps ({tt['skipped_steps']} skipped), loss {tt['final_loss']}")
    dtype = torch.bfloat16 if cuda else torch.float32
    cast(target, dtype)
    info["draft_training"] = train(draft, train_ids, args.draft_seconds, device, bsz, seq, 5e-4, teacher=target,
                                   warmup=warm)
    dt = info["draft_training"]
    log(f"draft distilled: {dt['steps']} steps ({dt['skipped_steps']} skipped), KL {dt['final_loss']}")
    cast(draft, dtype).eval()
    cast(target, dtype).eval()
    for m in (draft, target):
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0
    del train_ids
    if cuda:
        torch.cuda.empty_cache()
    write(R)

    rng = random.Random(args.seed)
    need = max(max(batch_sizes), args.requests, args.dp_examples)
    prompts, continuations = [], []
    for ids in held * (1 + need // max(1, len(held))):
        n = rng.randint(8, 16) if smoke else rng.randint(48, 96)
        if len(ids) > n + 65:
            s = rng.randint(0, len(ids) - n - 65)
            prompts.append(ids[s : s + n])
            continuations.append(ids[s + n : s + n + 64])
        if len(prompts) >= need:
            break
    head = None
    if args.head:
        try:
            from specref import heads

            head = heads.load(args.head)
            methods.append("learned")
        except Exception as err:  # noqa: BLE001
            R["errors"].append(f"head: {err}")

    # 3. decoding
    dec_results: dict[str, Any] = {}
    R["decode"] = dec_results
    decoders: dict[tuple[str, str], Any] = {}

    def decoder(method: str, engine: str) -> Any:
        key = (method, engine)
        if key not in decoders:
            opts: dict[str, Any] = {"head": head} if method == "learned" else {}
            alpha = args.alpha if method in ("token_v3", "learned") else None
            decoders[key] = make_decoder(draft, target, method, alpha=alpha, gamma=args.gamma, engine=engine, **opts)
        return decoders[key]

    def ours(engine: str, method: str, b: int) -> None:
        key = f"specref/{engine}/{method}/b{b}"
        try:
            dec_results[key] = run_ours(decoder(method, engine), prompts, b, args, device)
            r = dec_results[key]
            acc = r["acceptance_rate"]
            log(f"{key}: {r['tokens_per_s']:.1f} tok/s, {r['latency_ms']:.1f} ms/request"
                + (f", acceptance {acc:.3f}" if acc is not None else ""))
        except Exception as err:  # noqa: BLE001 - one failing configuration must not lose the others
            dec_results[key] = {"error": f"{type(err).__name__}: {err}"}
            R["errors"].append(f"{key}: {type(err).__name__}: {err}")
            log(f"{key}: ERROR {type(err).__name__}: {err}")
            traceback.print_exc()

    def hf(kind: str, b: int) -> None:
        key = f"hf/{kind}/b{b}"
        try:
            dec_results[key] = run_hf(target, draft if kind == "assisted" else None, prompts, b, args, device)
            log(f"{key}: {dec_results[key]['tokens_per_s']:.1f} tok/s, {dec_results[key]['latency_ms']:.1f} ms/request")
        except Exception as err:  # noqa: BLE001
            dec_results[key] = {"error": f"{type(err).__name__}: {err}"}
            R["errors"].append(f"{key}: {type(err).__name__}: {err}")
            log(f"{key}: ERROR {err}")

    main_engines = [e for e in engines if not e.startswith("compile")]
    late_engines = [e for e in engines if e.startswith("compile")]
    for b in batch_sizes:
        for eng in main_engines:
            for m in methods:
                if over(0.75):
                    R["skipped"].append(f"specref/{eng}/{m}/b{b} (budget)")
                    continue
                ours(eng, m, b)
        if not args.no_hf:
            if over(0.78):
                R["skipped"].append(f"hf b{b} (budget)")
            else:
                hf("target", b)
                if b == 1:
                    hf("assisted", 1)
        write(R)

    # 4. round profile (CUDA events around the forwards)
    R["profile"] = {}
    prof_engines = [e for e in ("fast", "graph") if e in main_engines] or main_engines[:1]
    for b in batch_sizes:
        for eng in prof_engines:
            for m in ("specdecode", "token_v3"):
                if m not in methods:
                    continue
                key = f"{eng}/{m}/b{b}"
                if over(0.8):
                    R["skipped"].append(f"profile {key} (budget)")
                    continue
                try:
                    R["profile"][key] = run_ours(decoder(m, eng), prompts, b, args, device, profile=True)["profile"]
                    s = R["profile"][key]
                    log(f"profile {key}: {s['round_us']:.0f} us/round, outside forwards "
                        f"{s['outside_us_per_round']:.0f} us ({100 * s['outside_share']:.1f}%)")
                except Exception as err:  # noqa: BLE001
                    R["profile"][key] = {"error": f"{type(err).__name__}: {err}"}
                    log(f"profile {key}: ERROR {err}")
    # the eager engines' rounds, one request each (seconds): on the first H100 run `fast` SpecDecode was half
    # as fast as `plain`, although both launch the same kernels inside their forwards; per-role forward times
    # of both, side by side in one run, say where that time goes
    if args.eager_profile == "on" or (args.eager_profile == "auto" and cuda):
        one = argparse.Namespace(**{**vars(args), "requests": 1})
        for eng in ("plain", "fast"):
            key = f"{eng}/specdecode/b1"
            if key in R["profile"] or "specdecode" not in methods:
                continue
            if over(0.8):
                R["skipped"].append(f"profile {key} (budget)")
                continue
            try:
                R["profile"][key] = run_ours(decoder("specdecode", eng), prompts, 1, one, device,
                                             profile=True)["profile"]
                log(f"profile {key}: {R['profile'][key]['round_us']:.0f} us/round")
            except Exception as err:  # noqa: BLE001
                R["profile"][key] = {"error": f"{type(err).__name__}: {err}"}
                log(f"profile {key}: ERROR {err}")
    write(R)

    # 5. bandwidth floor of a 1B-class target forward at batch 1
    if over(0.85):
        R["skipped"].append("bandwidth floor (budget)")
    else:
        bw_engines = [e for e in ("fast", "graph") if e in engines] or engines[:1]
        try:
            R["bandwidth_1b"] = bandwidth_floor(args, device, bw, bw_engines)
        except Exception as err:  # noqa: BLE001
            R["errors"].append(f"bandwidth: {type(err).__name__}: {err}")
            log(f"bandwidth: ERROR {err}")
    write(R)

    # 6. data-parallel sweep on 1 vs 2 GPUs
    n_gpus = torch.cuda.device_count() if cuda else 0
    want_dp = args.dp == "on" or (args.dp == "auto" and n_gpus >= 2)
    if not want_dp:
        R["dp"] = {"skipped": f"{n_gpus} GPU(s) visible; needs 2"}
        R["skipped"].append("data-parallel sweep (needs 2 GPUs)")
    elif over(0.8):
        R["dp"] = {"skipped": "time budget"}
        R["skipped"].append("data-parallel sweep (budget)")
    elif getattr(tok, "backend", None) is None:
        R["dp"] = {"skipped": "needs the tokenizers library"}
    else:
        pt = [(tok.decode(p), tok.decode(c)) for p, c in zip(prompts, continuations)][: args.dp_examples]
        try:
            R["dp"] = dp_scaling(args, draft, target, tok, pt, max(2, min(n_gpus, 2)))
        except Exception as err:  # noqa: BLE001
            R["dp"] = {"error": f"{type(err).__name__}: {err}"}
            R["errors"].append(f"dp: {err}")
            log(f"dp: ERROR {err}")
    write(R)

    # 7. torch.compile engines last (compilation takes tens of seconds per shape): first the 1B forward of
    # the bandwidth floor, then the pair at batch 1, each only if its compile is likely to fit the budget
    for eng in late_engines:
        if "bandwidth_1b" in R and elapsed() + args.compile_reserve_s < args.budget_s:
            try:
                extra = bandwidth_floor(args, device, bw, [eng])
                R["bandwidth_1b"]["engines"].update(extra["engines"])
            except Exception as err:  # noqa: BLE001
                R["errors"].append(f"bandwidth {eng}: {type(err).__name__}: {err}")
        else:
            R["skipped"].append(f"bandwidth floor {eng} (budget)")
        write(R)
        for m in methods:
            if m == "learned":
                continue
            if elapsed() + args.compile_reserve_s > args.budget_s:
                R["skipped"].append(f"specref/{eng}/{m}/b1 (budget)")
                continue
            ours(eng, m, 1)
            write(R)

    R["total_seconds"] = round(elapsed(), 1)
    write(R)
    print("\n" + markdown(R, batch_sizes), flush=True)
    log(f"wrote {prefix}.json and {prefix}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
