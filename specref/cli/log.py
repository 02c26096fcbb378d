"""``specref log``: log a draft/target pair's probabilities over a task split (docs/logs.md).

    specref log --pair bible-en-es-t5 --split train --out runs/logs/translation-train
    specref log --draft PATH --target PATH --task reasoning --split validation --out DIR --device cuda
    specref log --pair arith-llama --split train --on-policy --rule token_v3 --alpha 0.3 --out DIR

Re-running the same command resumes an interrupted job (completed examples are skipped).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from specref.cli._args import float_tuple
from specref.logs.schema import DEFAULT_ALPHAS, DEFAULT_TAIL_POINTS, DEFAULT_TOP_K


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("log", help="log draft/target probabilities over a task split",
                              description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("models (a zoo pair, or two local model folders)")
    src.add_argument("--pair", help="zoo pair name (specref zoo)")
    src.add_argument("--draft", help="draft model folder (or zoo name PAIR:draft)")
    src.add_argument("--target", help="target model folder (or zoo name PAIR:target)")
    src.add_argument("--tokenizer", help="tokenizer folder (default: the draft's folder)")
    p.add_argument("--task", help="task name (default: the pair's task)")
    p.add_argument("--split", default="train", help="task split (default: train)")
    p.add_argument("--out", required=True, help="output log directory")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"top-k kept per model (default {DEFAULT_TOP_K})")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--max-examples", type=int, help="log only the first N examples of the split")
    p.add_argument("--hidden", nargs="*", default=[], choices=("draft", "target"),
                   help="also log these models' last hidden states")
    p.add_argument("--examples-per-shard", type=int, default=64)
    p.add_argument("--alphas", type=float_tuple, default=DEFAULT_ALPHAS,
                   help="alpha grid of the exact token-rule columns (comma-separated)")
    p.add_argument("--tail-points", type=int, default=DEFAULT_TAIL_POINTS)
    p.add_argument("--overwrite", action="store_true", help="discard existing logs in --out instead of resuming")
    p.add_argument("--no-progress", action="store_true")
    onp = p.add_argument_group("on-policy logging (decode with the speculative cascade; no reference)")
    onp.add_argument("--on-policy", action="store_true")
    onp.add_argument("--rule", default="specdecode")
    onp.add_argument("--alpha", type=float)
    onp.add_argument("--gamma", type=int, default=5)
    onp.add_argument("--max-new-tokens", type=int, default=64)
    onp.add_argument("--temperature", type=float, default=1.0)
    onp.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _local(name: str, what: str) -> str:
    """Refuse anything that is neither a local path nor a zoo name: logging never downloads weights."""
    from specref import zoo

    if Path(name).exists():
        return name
    for sep in (":", "/"):
        if sep in name and name.split(sep, 1)[0] in zoo.list_pairs():
            return name
    raise FileNotFoundError(f"{what} {name!r} is neither a local folder nor a zoo name (PAIR:draft / PAIR:target)")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_models(args: argparse.Namespace) -> tuple[Any, Any, Any, str | None, dict[str, Any]]:
    """(draft, target, tokenizer, default task, provenance) from --pair or --draft/--target."""
    import torch

    from specref import zoo

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    device = _device(args.device)
    if args.pair:
        if args.draft or args.target:
            raise ValueError("give either --pair or --draft/--target, not both")
        pair = zoo.load_pair(args.pair, device=device, dtype=dtype)
        return pair.draft, pair.target, pair.tokenizer, pair.task, {"pair": args.pair}
    if not (args.draft and args.target):
        raise ValueError("give --pair NAME, or both --draft PATH and --target PATH")
    draft_path, target_path = _local(args.draft, "draft"), _local(args.target, "target")
    tok_path = _local(args.tokenizer or args.draft, "tokenizer")
    draft = zoo.load_model(draft_path, device, dtype)
    target = zoo.load_model(target_path, device, dtype)
    tokenizer = zoo.load_tokenizer(tok_path)
    return draft, target, tokenizer, None, {"draft": str(args.draft), "target": str(args.target)}


def run(args: argparse.Namespace) -> int:
    from specref.logs.teacher import encode_examples, log_on_policy, log_teacher_forced
    from specref.tasks import get_task

    draft, target, tokenizer, pair_task, provenance = load_models(args)
    task_name = args.task or pair_task
    if not task_name:
        raise ValueError("--task is required with --draft/--target")
    task = get_task(task_name)
    examples = encode_examples(task, task.load(args.split, limit=args.max_examples), tokenizer)
    source = {**provenance, "task": task.name, "split": args.split, "dtype": args.dtype}
    common = dict(tokenizer=tokenizer, top_k=args.top_k, tail_points=args.tail_points, hidden=tuple(args.hidden),
                  batch_size=args.batch_size, examples_per_shard=args.examples_per_shard, source=source,
                  overwrite=args.overwrite, progress=not args.no_progress)
    if args.on_policy:
        out = log_on_policy(draft, target, examples, args.out, rule=args.rule, alpha=args.alpha, gamma=args.gamma,
                            max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                            eos_token_id=tokenizer.eos_token_id, **common)
    else:
        out = log_teacher_forced(draft, target, examples, args.out, alphas=args.alphas, **common)
    from specref.logs.store import open_logs

    logs = open_logs(out, columns=["example_index"])
    print(f"logged {logs.num_rows} positions of {len(examples)} examples to {out}")
    return 0
