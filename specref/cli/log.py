"""``specref log``: log a draft/target pair's probabilities over a task split (docs/logs.md).

    specref log --pair bible-en-es-t5 --split train --out runs/logs/translation-train
    specref log --draft PATH --target PATH --task reasoning --split validation --out DIR --device cuda
    specref log --pair arith-llama --split train --on-policy --rule token_v3 --alpha 0.3 --out DIR

Models load as :mod:`specref.loading` says (folders, zoo names, .gguf files, hub ids). Re-running the same
command resumes an interrupted job (completed examples are skipped).
"""

from __future__ import annotations

import argparse
from typing import Any

from specref.defaults import DEFAULT_GAMMA, DEFAULT_MAX_NEW_TOKENS, DEFAULT_SEED, DEFAULT_TEMPERATURE, RULE_METHODS
from specref.logs.schema import DEFAULT_ALPHAS, DEFAULT_TAIL_POINTS, DEFAULT_TOP_K
from specref.options import (
    add_device,
    add_dtype,
    add_plugins,
    add_progress,
    finite_float,
    float_tuple,
    nonneg_float,
    nonneg_int,
    out_dir,
    positive_int,
)

_SPLITS = ("train", "validation", "test")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("log", help="log draft/target probabilities over a task split",
                              description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("models (a zoo pair, or a draft and a target)")
    src.add_argument("--pair", help="zoo pair name (specref zoo) (default: none)")
    src.add_argument("--draft", help="draft: model folder, zoo name PAIR:draft, .gguf file or hub id (default: none)")
    src.add_argument("--target", help="target: model folder, zoo name PAIR:target, .gguf file or hub id "
                                      "(default: none)")
    src.add_argument("--tokenizer", help="tokenizer for both models (default: each model's own; a zoo name's is "
                                         "its pair's)")
    add_device(src)
    add_dtype(src)
    p.add_argument("--task", help="task name: translation, summarization or reasoning (default: the zoo pair's task)")
    p.add_argument("--split", default="train", choices=_SPLITS, help="task split (default: train)")
    p.add_argument("--out", required=True, type=out_dir, help="output log folder (required; no default)")
    p.add_argument("--top-k", type=positive_int, default=DEFAULT_TOP_K,
                   help=f"top-k probabilities kept per model and position (default: {DEFAULT_TOP_K})")
    p.add_argument("--batch-size", type=positive_int, default=8, help="examples per forward (default: 8)")
    p.add_argument("--max-examples", type=positive_int, default=None,
                   help="log only the first N >= 1 examples of the split (default: all)")
    p.add_argument("--hidden", nargs="*", default=[], choices=("draft", "target"),
                   help="also log these models' last hidden states (default: none)")
    p.add_argument("--examples-per-shard", type=positive_int, default=64, help="examples per log shard (default: 64)")
    p.add_argument("--alphas", type=float_tuple, default=DEFAULT_ALPHAS,
                   help="alpha grid of the exact token-rule columns, comma-separated (default: "
                        f"{','.join(str(a) for a in DEFAULT_ALPHAS)})")
    p.add_argument("--tail-points", type=nonneg_int, default=DEFAULT_TAIL_POINTS,
                   help=f"points of the probability-tail summary (default: {DEFAULT_TAIL_POINTS})")
    p.add_argument("--overwrite", action="store_true",
                   help="discard existing logs in --out instead of resuming (default: resume)")
    add_progress(p)
    onp = p.add_argument_group("on-policy logging (decode with the speculative cascade; no reference)")
    onp.add_argument("--on-policy", action="store_true", help="log decoded paths (default: teacher-forced)")
    onp.add_argument("--rule", default="specdecode", metavar="RULE",
                     help=f"rule that decodes: {', '.join(RULE_METHODS)}, or one registered by a --plugin "
                          "(default: specdecode)")
    add_plugins(onp)
    onp.add_argument("--alpha", type=finite_float, help="the rule's alpha, where it needs one (default: none)")
    onp.add_argument("--gamma", type=positive_int, default=DEFAULT_GAMMA,
                     help=f"drafts per round (default: {DEFAULT_GAMMA})")
    onp.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS,
                     help=f"tokens per example at most (default: {DEFAULT_MAX_NEW_TOKENS})")
    onp.add_argument("--temperature", type=nonneg_float, default=DEFAULT_TEMPERATURE,
                     help=f"sampling temperature, 0 = greedy (default: {DEFAULT_TEMPERATURE})")
    onp.add_argument("--seed", type=nonneg_int, default=DEFAULT_SEED,
                     help=f"example i decodes with seed + i (default: {DEFAULT_SEED})")
    p.set_defaults(func=run)


def _task_name(args: argparse.Namespace) -> str:
    """The task to log, known before any model is loaded (bad input fails before the slow part)."""
    from specref import zoo
    from specref.loading import resolve_source

    pair_task = None
    if args.pair:
        pair_task = zoo.get_spec(args.pair).task
    elif args.draft and args.target:
        d, t = resolve_source(args.draft, "draft"), resolve_source(args.target, "target")
        if d.kind == "zoo" and t.kind == "zoo" and d.pair == t.pair:
            pair_task = zoo.get_spec(d.pair).task
    name = args.task or pair_task
    if not name:
        raise ValueError("--task is required unless both models come from one zoo pair")
    return name


def load_models(args: argparse.Namespace) -> Any:
    """The :class:`specref.loading.LoadedPair` of --pair or --draft/--target (vocabularies checked equal)."""
    from specref.loading import load_pair

    if not args.pair and not (args.draft and args.target):
        raise ValueError("give --pair NAME, or both --draft and --target (model folders, zoo names PAIR:draft / "
                         "PAIR:target, .gguf files or hub ids)")
    return load_pair(args.pair, args.draft, args.target, tokenizer=args.tokenizer, device=args.device,
                     dtype=args.dtype, progress=getattr(args, "verbose", False))


def run(args: argparse.Namespace) -> int:
    from specref.logs.teacher import encode_examples, log_on_policy, log_teacher_forced
    from specref.tasks import get_task

    if args.on_policy is False and args.alpha is not None:
        raise ValueError("--alpha only applies to --on-policy logging (teacher-forced logs cover --alphas)")
    from specref import rules

    speculative = tuple(n for n in rules.NAMES() if n not in ("target", "draft"))
    if args.rule not in speculative:
        raise ValueError(f"unknown --rule {args.rule!r}; choose one of: {', '.join(speculative)} "
                         "(or --plugin MODULE to register your own)")
    if args.pair and (args.draft or args.target):
        raise ValueError("give either --pair or --draft/--target, not both")
    task = get_task(_task_name(args))
    raw = task.load(args.split, limit=args.max_examples)
    if not raw:
        raise ValueError(f"task {task.name!r} has no {args.split} examples")
    pair = load_models(args)
    family = "seq2seq" if getattr(pair.target.config, "is_encoder_decoder", False) else "causal"
    if task.model_family != family:
        raise ValueError(f"task {task.name!r} is for {task.model_family} models, the target is {family}")
    tokenizer = pair.tokenizer
    examples = encode_examples(task, raw, tokenizer)
    dtype = str(pair.dtype).split(".")[-1]
    source = {**pair.provenance, "task": task.name, "split": args.split, "dtype": dtype}
    common = dict(tokenizer=tokenizer, top_k=args.top_k, tail_points=args.tail_points, hidden=tuple(args.hidden),
                  batch_size=args.batch_size, examples_per_shard=args.examples_per_shard, source=source,
                  overwrite=args.overwrite, progress=not args.no_progress)
    if args.on_policy:
        out = log_on_policy(pair.draft, pair.target, examples, args.out, rule=args.rule, alpha=args.alpha,
                            gamma=args.gamma, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            seed=args.seed, **common)
    else:
        out = log_teacher_forced(pair.draft, pair.target, examples, args.out, alphas=args.alphas, **common)
    from specref.logs.store import open_logs

    logs = open_logs(out, columns=["example_index"])
    print(f"logged {logs.num_rows} positions of {len(examples)} examples to {out}")
    return 0
