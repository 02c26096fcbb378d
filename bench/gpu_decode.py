"""One-GPU decoding benchmark: specref's decoder vs transformers' assisted generation, on one Llama pair.

What it does, in one run (about 3-4 minutes on one H100):

1. Corpus: the Python sources found on the machine (the standard library, then site-packages if the
   standard library is stripped), capped at ``--corpus-mb``; the last 5% of files are held out for prompts.
2. Tokenizer: a byte-level BPE (``--vocab`` tokens, default 8192) trained on the corpus with the
   ``tokenizers`` library in a few seconds (a plain byte vocabulary if that library is missing).
3. Models: a Llama-architecture target (~420M parameters: 24 layers, width 1024) and draft (~35M:
   4 layers, width 768, tied embeddings), random-init, then
   * the target is TRAINED for ``--target-seconds`` (default 75 s) with next-token cross-entropy on the
     corpus (bf16 autocast, AdamW, lr 3e-4 with warm-up; a step with a non-finite gradient is skipped), and
   * the draft is DISTILLED from the target for ``--draft-seconds`` (default 45 s): KL(target || draft)
     on the same corpus.
   Why: two random-init models agree only by accident (near-uniform distributions make SpecDecode look
   either perfect or useless), which says nothing about a real pair. A few minutes of training on real
   text gives the pair real, imperfect agreement; the measured acceptance rate is printed next to every
   speed. This is cheap and honest, not a claim about any published checkpoint.
4. Decoding (bf16, sdpa, temperature ``--temperature`` = 1 by default, no EOS so every row generates
   ``--max-new-tokens``), prompts are held-out windows of 48..96 tokens:
   * specref decoder: target-only, SpecDecode and SpecCascade [token_v3] (``--alpha``), gamma ``--gamma``,
     at batch 1 (``--requests`` prompts one after the other) and batch 16 (one ragged batch);
   * transformers ``generate``: target alone and ``assistant_model=draft`` (constant ``--gamma`` draft
     tokens, no dynamic schedule, no confidence early exit) at batch 1 (its assisted generation refuses
     batches > 1), on the same prompts.
   Each configuration runs once to warm up, then ``--repeats`` timed runs (best kept); tokens/s is
   generated tokens over wall time (CUDA-synchronised).
5. Prints a side-by-side table (ratios against specref's target-only at the same batch size, and
   specref SpecDecode vs transformers' assisted generation at batch 1) and writes everything as JSON to
   ``--out``.

Usage::

    python bench/gpu_decode.py --out bench/results/gpu_decode_h100.json      # on the GPU machine
    python bench/gpu_decode.py --smoke --out /tmp/smoke.json                  # seconds, on a CPU

Requirements: torch, transformers (5.x), the specref package from this repository (the script adds the
repository root to ``sys.path``); ``tokenizers`` optional. No network access is needed.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import random
import sys
import sysconfig
import time
from typing import Any

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from specref.decode import make_decoder  # noqa: E402

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
    """Fallback: UTF-8 bytes."""

    vocab_size = 256

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]


def train_tokenizer(texts: list[str], vocab: int) -> Any:
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
    sample = texts[: max(1, len(texts))]
    budget, picked = 8_000_000, []
    for t in sample:  # train on at most ~8 MB: seconds, and plenty for 8k merges
        picked.append(t)
        budget -= len(t)
        if budget <= 0:
            break
    tok.train_from_iterator(picked, trainer)

    class Wrapped:
        vocab_size = tok.get_vocab_size()

        def encode_batch(self, batch: list[str]) -> list[list[int]]:
            return [e.ids for e in tok.encode_batch(batch)]

    return Wrapped()


# ---- models ----------------------------------------------------------------------------------------------------


def build_models(vocab: int, smoke: bool) -> tuple[Any, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    if smoke:
        t_cfg = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
        d_cfg = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    else:
        t_cfg = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16}
        d_cfg = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 4, "num_attention_heads": 12}
    common = {
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": 0,
        "attn_implementation": "sdpa",
    }
    target = LlamaForCausalLM(
        LlamaConfig(**t_cfg, num_key_value_heads=t_cfg["num_attention_heads"], tie_word_embeddings=False, **common)
    )
    draft = LlamaForCausalLM(
        LlamaConfig(**d_cfg, num_key_value_heads=d_cfg["num_attention_heads"], tie_word_embeddings=True, **common)
    )
    return draft, target


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def batches(stream: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    hi = stream.numel() - seq - 1
    while True:
        starts = torch.randint(0, hi, (batch,), generator=gen)
        idx = starts.unsqueeze(1) + torch.arange(seq + 1)
        yield stream[idx]


def train(
    model: Any,
    stream: torch.Tensor,
    seconds: float,
    device: str,
    batch: int,
    seq: int,
    lr: float,
    teacher: Any = None,
    log_every: int = 50,
) -> dict[str, Any]:
    """Train for a wall-clock budget: next-token CE, or KL to ``teacher`` (distillation)."""
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, fused=device.startswith("cuda")
    )
    gen = torch.Generator().manual_seed(1 if teacher is None else 2)
    it = batches(stream, batch, seq, gen)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.startswith("cuda")
        else torch.autocast("cpu", enabled=False)
    )
    losses, step, skipped, t0 = [], 0, 0, time.perf_counter()
    loss = torch.tensor(float("nan"))
    while time.perf_counter() - t0 < seconds:
        x = next(it).to(device, non_blocking=True)
        inp, tgt = x[:, :-1], x[:, 1:]
        warm = min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr * warm
        with amp:
            logits = model(input_ids=inp).logits.float()
            if teacher is None:
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
            else:
                with torch.no_grad():
                    t_logits = teacher(input_ids=inp).logits.float()
                loss = (
                    F.kl_div(
                        F.log_softmax(logits, -1), F.log_softmax(t_logits, -1), log_target=True, reduction="batchmean"
                    )
                    / inp.shape[1]
                )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not bool(torch.isfinite(norm)):  # never let a bad step poison the weights: skip it, cool down
            opt.zero_grad(set_to_none=True)
            skipped += 1
            lr *= 0.5
        else:
            opt.step()
        if step % log_every == 0:
            losses.append((step, round(float(loss.detach()), 4)))
        step += 1
    losses.append((step, round(float(loss.detach()), 4)))
    model.eval()
    del opt
    if not all(math.isfinite(v) for p in model.parameters() for v in (float(p.detach().float().abs().max()),)):
        raise SystemExit("training produced non-finite weights; lower the learning rate")
    return {
        "steps": step,
        "skipped_steps": skipped,
        "seconds": round(time.perf_counter() - t0, 1),
        "tokens": step * batch * seq,
        "loss_curve": losses,
    }


# ---- timing ------------------------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def left_pad(prompts: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    w = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (w - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (w - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def run_ours(dec: Any, prompts: list[list[int]], batch: int, args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Tokens/s of one specref decoder: batch 1 = requests one after the other; else one ragged batch."""
    groups = [[p] for p in prompts[: args.requests]] if batch == 1 else [prompts[:batch]]

    def once(max_new: int, seed: int) -> tuple[float, int, list[Any]]:
        wall, tokens, stats = 0.0, 0, []
        for k, g in enumerate(groups):
            ids, mask = left_pad(g)
            sync(device)
            t0 = time.perf_counter()
            out = dec.generate(ids, mask, max_new_tokens=max_new, temperature=args.temperature, seed=seed + 100 * k)
            sync(device)
            wall += time.perf_counter() - t0
            tokens += int(out.lengths.sum())
            stats.append(out.stats)
        return wall, tokens, stats

    once(min(16, args.max_new_tokens), 0)  # warm-up
    best = None
    for r in range(args.repeats):
        wall, tokens, stats = once(args.max_new_tokens, 1000 * (r + 1))
        if best is None or wall < best[0]:
            best = (wall, tokens, stats)
    wall, tokens, stats = best
    drafted = sum(int(s.drafted.sum()) for s in stats)
    accepted = sum(int(s.accepted.sum()) for s in stats)
    tcalls = sum(int(s.target_calls.sum()) for s in stats)
    return {
        "tokens_per_s": tokens / wall,
        "tokens": tokens,
        "wall_s": wall,
        "acceptance_rate": accepted / drafted if drafted else None,
        "tokens_per_target_call": tokens / tcalls if tcalls else None,
        "target_forwards": sum(s.target_forwards for s in stats),
        "draft_forwards": sum(s.draft_forwards for s in stats),
    }


def run_hf(
    target: Any, draft: Any | None, prompts: list[list[int]], args: argparse.Namespace, device: str
) -> dict[str, Any]:
    """Tokens/s of transformers' generate at batch 1 (assisted when ``draft`` is given)."""
    kw: dict[str, Any] = {
        "do_sample": args.temperature > 0,
        "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.max_new_tokens,
        "pad_token_id": 0,
        "eos_token_id": None,
    }
    if args.temperature > 0:
        kw.update(temperature=args.temperature, top_k=0, top_p=1.0)
    if draft is not None:
        gc = draft.generation_config
        gc.num_assistant_tokens = args.gamma
        gc.num_assistant_tokens_schedule = "constant"
        gc.assistant_confidence_threshold = 0.0
        kw["assistant_model"] = draft

    def once(max_new: int, seed: int) -> tuple[float, int]:
        wall, tokens = 0.0, 0
        for k, p in enumerate(prompts[: args.requests]):
            ids = torch.tensor([p], device=device)
            torch.manual_seed(seed + k)
            sync(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = target.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    **{**kw, "max_new_tokens": max_new, "min_new_tokens": max_new},
                )
            sync(device)
            wall += time.perf_counter() - t0
            tokens += out.shape[1] - ids.shape[1]
        return wall, tokens

    once(min(16, args.max_new_tokens), 0)
    best = min((once(args.max_new_tokens, 1000 * (r + 1)) for r in range(args.repeats)), key=lambda x: x[0])
    return {"tokens_per_s": best[1] / best[0], "tokens": best[1], "wall_s": best[0]}


# ---- main ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON output path")
    ap.add_argument("--smoke", action="store_true", help="tiny models and budgets (runs on a CPU in seconds)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--gamma", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.3, help="token_v3 lenience")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--requests", type=int, default=None, help="prompts decoded one by one at batch 1")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--target-seconds", type=float, default=None)
    ap.add_argument("--draft-seconds", type=float, default=None)
    ap.add_argument("--corpus-mb", type=float, default=None)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    smoke = args.smoke
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    defaults = {
        "max_new_tokens": 16 if smoke else 128,
        "requests": 2 if smoke else 4,
        "target_seconds": 4 if smoke else 75,
        "draft_seconds": 3 if smoke else 45,
        "corpus_mb": 1 if smoke else 30,
        "vocab": 512 if smoke else 8192,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if smoke:
        batch_sizes = [min(b, 4) for b in batch_sizes]
    t_start = time.perf_counter()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    texts = python_sources(int(args.corpus_mb * 1e6))
    split = max(1, int(len(texts) * 0.95))
    tok = train_tokenizer(texts[:split], args.vocab)
    train_ids = torch.tensor([i for ids in tok.encode_batch(texts[:split]) for i in ids], dtype=torch.long)
    held = [ids for ids in tok.encode_batch(texts[split:]) if len(ids) > 200]
    vocab = tok.vocab_size
    t_data = time.perf_counter() - t_start
    print(f"corpus: {len(texts)} files, {train_ids.numel()} training tokens, vocab {vocab} ({t_data:.1f}s)", flush=True)

    draft, target = build_models(vocab, smoke)
    draft.to(device)
    target.to(device)
    info: dict[str, Any] = {"draft_params": n_params(draft), "target_params": n_params(target)}
    print(
        f"models: draft {info['draft_params'] / 1e6:.1f}M, target {info['target_params'] / 1e6:.1f}M params", flush=True
    )
    bsz, seq = (4, 64) if smoke else (16, 512)
    info["target_training"] = train(target, train_ids, args.target_seconds, device, bsz, seq, lr=3e-4)
    tt = info["target_training"]
    print(
        f"target trained: {tt['steps']} steps ({tt['skipped_steps']} skipped), loss {tt['loss_curve'][-1][1]}",
        flush=True,
    )
    target.to(torch.bfloat16 if device.startswith("cuda") else torch.float32)
    info["draft_training"] = train(draft, train_ids, args.draft_seconds, device, bsz, seq, lr=5e-4, teacher=target)
    print(
        f"draft distilled: {info['draft_training']['steps']} steps, KL {info['draft_training']['loss_curve'][-1][1]}",
        flush=True,
    )
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    draft.to(dtype).eval()
    target.to(dtype).eval()
    for m in (draft, target):
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0

    gen = random.Random(args.seed)
    prompts = []
    for ids in held * (1 + 32 // max(1, len(held))):
        n = gen.randint(48, 96) if not smoke else gen.randint(8, 16)
        if len(ids) > n + 1:
            s = gen.randint(0, len(ids) - n - 1)
            prompts.append(ids[s : s + n])
        if len(prompts) >= max(max(batch_sizes), args.requests):
            break

    results: dict[str, Any] = {}
    methods = [("target", None), ("specdecode", None), ("token_v3", args.alpha)]
    for b in batch_sizes:
        for name, alpha in methods:
            dec = make_decoder(draft, target, name, alpha=alpha, gamma=args.gamma)
            key = f"specref/{name}/b{b}"
            results[key] = run_ours(dec, prompts, b, args, device)
            print(f"{key}: {results[key]['tokens_per_s']:.1f} tok/s", flush=True)
    if 1 in batch_sizes:
        results["hf/target/b1"] = run_hf(target, None, prompts, args, device)
        print(f"hf/target/b1: {results['hf/target/b1']['tokens_per_s']:.1f} tok/s", flush=True)
        try:
            results["hf/assisted/b1"] = run_hf(target, draft, prompts, args, device)
            print(f"hf/assisted/b1: {results['hf/assisted/b1']['tokens_per_s']:.1f} tok/s", flush=True)
        except Exception as err:  # report, do not lose the other numbers
            results["hf/assisted/b1"] = {"error": f"{type(err).__name__}: {err}"}

    # ---- table ----
    lines = [f"{'configuration':<28}{'tok/s':>10}{'vs target':>11}{'accept':>9}{'tok/call':>10}"]
    for key, r in results.items():
        if "error" in r:
            lines.append(f"{key:<28}  error: {r['error']}")
            continue
        b = key.rsplit("/b", 1)[1]
        base = results.get(f"specref/target/b{b}", {}).get("tokens_per_s")
        ratio = r["tokens_per_s"] / base if base else math.nan
        acc = r.get("acceptance_rate")
        tpc = r.get("tokens_per_target_call")
        lines.append(
            f"{key:<28}{r['tokens_per_s']:>10.1f}{ratio:>10.2f}x"
            f"{(f'{acc:.3f}' if acc is not None else '-'):>9}{(f'{tpc:.2f}' if tpc else '-'):>10}"
        )
    ratios = {}
    hf_a = results.get("hf/assisted/b1", {}).get("tokens_per_s")
    if hf_a:
        for name in ("specdecode", "token_v3"):
            ours = results.get(f"specref/{name}/b1", {}).get("tokens_per_s")
            if ours:
                ratios[f"specref {name} b1 / hf assisted b1"] = ours / hf_a
    hf_t = results.get("hf/target/b1", {}).get("tokens_per_s")
    if hf_t and "specref/target/b1" in results:
        ratios["specref target b1 / hf target b1"] = results["specref/target/b1"]["tokens_per_s"] / hf_t
    for k, v in ratios.items():
        lines.append(f"{k}: {v:.2f}x")
    table = "\n".join(lines)
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    header = (
        f"device: {gpu}; torch {torch.__version__}; draft {info['draft_params'] / 1e6:.0f}M / target "
        f"{info['target_params'] / 1e6:.0f}M params (bf16 on GPU); gamma {args.gamma}; T {args.temperature}; "
        f"{args.max_new_tokens} new tokens; batch-1 = {args.requests} requests in sequence"
    )
    print("\n" + header + "\n" + table, flush=True)
    import transformers

    payload = {
        "header": header,
        "device": gpu,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "args": vars(args),
        "smoke": smoke,
        "vocab": vocab,
        "info": info,
        "results": results,
        "ratios": ratios,
        "table": table,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(payload, fh, indent=2, default=str)
    print(f"wrote {args.out} ({payload['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
