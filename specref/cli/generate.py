"""``specref generate``: decode prompts with a draft/target pair and print the text and statistics.

Example::

    specref generate --pair arith-llama --prompt "Ann has 3 apples and buys 4 more. How many now?"
    specref generate --draft path/to/draft --target path/to/target --rule token_v3 --alpha 0.3 \\
        --gamma 5 --prompt "translate English to German: Hello" --max-new-tokens 64 --cost-ratio 0.1

Models are local folders saved with ``save_pretrained``, zoo names (``PAIR:draft`` / ``PAIR:target``), .gguf
files (or a folder holding one) or hub ids, loaded as :mod:`specref.loading` says; ``trust_remote_code`` is
never set. A zoo pair's prompts go through its task's prompt template (``--raw-prompt`` turns that off).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from specref.defaults import (
    DEFAULT_GAMMA,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    METHODS,
    RULE_METHODS,
)
from specref.options import (
    add_cost_ratio,
    add_device,
    add_dtype,
    add_engine,
    add_plugins,
    add_tp_size,
    finite_float,
    fraction,
    nonneg_float,
    nonneg_int,
    positive_int,
    probability,
    top_p,
)

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="decode prompts with a speculative cascade (or a baseline) and print text and statistics",
        description=__doc__.split("\n\n")[0],
    )
    m = p.add_argument_group("models (a zoo pair, or a draft and a target)")
    m.add_argument("--pair", help="zoo pair name, e.g. bible-en-es-t5 (specref zoo) (default: none)")
    m.add_argument("--draft", help="draft: model folder, zoo name PAIR:draft, .gguf file or hub id (default: none)")
    m.add_argument("--target", help="target: model folder, zoo name PAIR:target, .gguf file or hub id "
                                    "(default: none)")
    m.add_argument("--tokenizer", help="tokenizer for both models (default: each model's own; a zoo name's is "
                                       "its pair's)")
    add_device(m)
    add_dtype(m)
    add_tp_size(m)
    p.add_argument("--rule", "--method", dest="rule", default="specdecode", metavar="METHOD",
                   help=f"deferral rule or decoding method: {', '.join(METHODS)}, or a rule registered by a "
                        "--plugin; the cascade rules need --alpha (default: specdecode, lossless)")
    p.add_argument("--alpha", type=finite_float, default=None,
                   help="rule lenience / deferral cost, required by the rules that use one (default: none; see "
                        "docs/decoding.md)")
    p.add_argument("--gamma", type=positive_int, default=DEFAULT_GAMMA,
                   help=f"drafts per round of the speculative methods (default: {DEFAULT_GAMMA})")
    p.add_argument("--gamma-policy", choices=("fixed", "adaptive"), default="fixed",
                   help="fixed: every round drafts --gamma; adaptive: each round drafts 1..--gamma (0, a plain target "
                        "step, for specdecode), chosen from the running acceptance and --cost-ratio (every engine; "
                        "the static ones capture or compile one shape per block size used; same law) (default: fixed)")
    p.add_argument("--draft-confidence-threshold", type=fraction, default=None, metavar="P",
                   help="a row stops drafting within a round after a token its draft sampled with probability "
                        "below P, in (0, 1) (transformers' assistant_confidence_threshold, 0.4 there); --gamma (or "
                        "the policy's choice) is then each round's maximum, so a larger one pays, e.g. 20; same law; "
                        "costs one host read per draft step (default: off)")
    pr = p.add_argument_group("prompts")
    pr.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for a batch (default: none)")
    pr.add_argument("--prompt-file", help="file with one prompt per line, added to --prompt (default: none)")
    pr.add_argument("--raw-prompt", action="store_true",
                    help="send prompts as given, without a zoo pair's task prompt template (default: the template "
                         "is applied for zoo pairs)")
    s = p.add_argument_group("sampling")
    s.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"tokens to generate per prompt at most (default: {DEFAULT_MAX_NEW_TOKENS})")
    s.add_argument("--temperature", type=nonneg_float, default=DEFAULT_TEMPERATURE,
                   help=f"sampling temperature, 0 = greedy (default: {DEFAULT_TEMPERATURE})")
    s.add_argument("--top-k", type=nonneg_int, default=None, help="keep the k most likely tokens, 0 = off "
                                                                  "(default: off)")
    s.add_argument("--top-p", type=top_p, default=None, help="nucleus sampling mass in (0, 1] (default: off)")
    s.add_argument("--seed", type=nonneg_int, default=DEFAULT_SEED,
                   help=f"row i uses seed + i (default: {DEFAULT_SEED})")
    s.add_argument("--no-eos", action="store_true",
                   help="ignore EOS and always generate --max-new-tokens (default: stop at any EOS id of the "
                        "target's generation config and the tokenizer)")
    add_engine(p)
    add_plugins(p)
    add_cost_ratio(p, "the pair's per-step parameter ratio")
    p.add_argument("--c", dest="cost_ratio", type=nonneg_float, default=None, help=argparse.SUPPRESS)
    o = p.add_argument_group("method options")
    o.add_argument("--bonus", choices=("pi", "target"), default="pi",
                   help="distribution of the bonus token of a fully accepted block (default: pi)")
    o.add_argument("--beta", type=finite_float, help="lossy: residual parameter (default: the rule's)")
    o.add_argument("--weight", type=probability, help="ensemble: weight on the target (default: the rule's)")
    o.add_argument("--aggregate", choices=("mean", "sum", "quantile"),
                   help="seq_cascade: confidence aggregate (default: the baseline's, mean)")
    o.add_argument("--quantile", type=probability, help="seq_cascade: quantile of token log-probs "
                                                        "(default: the baseline's)")
    o.add_argument("--threshold", type=finite_float,
                   help="seq_cascade: log-prob threshold, instead of alpha (default: log(1 - alpha))")
    o.add_argument("--fallback", type=probability,
                   help="bild: fallback threshold on the max draft probability (default: 1 - alpha)")
    o.add_argument("--rollback", type=nonneg_float, help="bild: rollback threshold in nats (default: 2.0)")
    o.add_argument("--head", help="learned: a deferral head saved by specref.heads.save (default: none)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object instead of text (default: text)")
    out.add_argument("--per-row", action="store_true", help="also print per-row statistics (default: off)")
    p.set_defaults(func=run)


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as fh:
            prompts += [line.rstrip("\n") for line in fh if line.strip()]
    if not prompts:
        raise ValueError("give at least one --prompt (or --prompt-file)")
    return prompts


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for name in ("beta", "weight", "aggregate", "quantile", "threshold", "fallback", "rollback"):
        value = getattr(args, name)
        if value is not None:
            opts[name] = value
    speculative = args.rule in RULE_METHODS or args.rule not in METHODS  # built-in or registered rule
    if args.gamma_policy != "fixed":
        if not speculative:
            raise ValueError(f"--gamma-policy only applies to the speculative rules, not to {args.rule!r}")
        opts["gamma_policy"] = args.gamma_policy
    if args.draft_confidence_threshold is not None:
        if not speculative:
            raise ValueError(f"--draft-confidence-threshold only applies to the speculative rules, not to "
                             f"{args.rule!r}")
        opts["draft_confidence_threshold"] = args.draft_confidence_threshold
    if speculative and args.bonus != "pi":
        opts["bonus"] = args.bonus
    elif args.bonus != "pi":
        raise ValueError(f"--bonus only applies to the speculative rules ({', '.join(RULE_METHODS)}, and "
                         f"registered ones), not to {args.rule!r}")
    if args.head:
        if args.rule != "learned":
            raise ValueError("--head only applies to --rule learned")
        from specref.loading import load_head

        opts["head"] = load_head(args.head)
    elif args.rule == "learned":
        raise ValueError("--rule learned needs --head PATH")
    return opts


def _finite(x: Any) -> Any:
    """JSON has no NaN / inf: write them as null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def apply_template(pair: Any, prompts: list[str], raw: bool) -> tuple[list[str], str | None]:
    """The prompts through the zoo task's template, and a note saying so (None when nothing changed)."""
    if raw or pair.task is None:
        return prompts, None
    formatted = [pair.format_prompt(text) for text in prompts]
    if formatted == prompts:
        return prompts, None
    return formatted, (f"applied the {pair.task.name} task's prompt template "
                       f"({pair.task.prompt_template!r}); --raw-prompt to send prompts as given")


def _sharded_launch(args: argparse.Namespace) -> int | None:
    """With ``--tp-size N`` outside torchrun: check what can be checked without weights, then re-launch as N
    processes (their exit code); inside those processes, or without ``--tp-size``: None (run here)."""
    from specref import sharding

    if args.tp_size <= 1:
        return None
    sharding.check_tp_engine(args.engine, args.tp_size)
    if os.environ.get(sharding.CHILD_ENV) is not None or sharding.tp_world() > 1:
        return None
    from specref.loading import load_config, resolve_device

    sharding.check_tp_device(resolve_device(args.device), args.tp_size)
    target = args.target if args.pair is None else f"{args.pair}:target"
    sharding.check_tp_config(load_config(target, "target"), args.tp_size)
    if not getattr(args, "argv", None):  # without the command line every other option would be lost
        raise ValueError("--tp-size re-launches the command line: run it through `specref` (specref.cli.main)")
    return sharding.relaunch(args.argv, "specref", args.tp_size)


def run(args: argparse.Namespace) -> int:
    from specref.decode import all_methods, make_decoder
    from specref.loading import load_pair

    if args.rule not in all_methods():  # before loading models: a typo costs nothing
        raise ValueError(f"unknown --rule {args.rule!r}; choose one of: {', '.join(all_methods())} "
                         "(or --plugin MODULE to register your own)")
    prompts = _prompts(args)
    if args.pair is None and not (args.draft and args.target):
        raise ValueError("give --pair NAME, or both --draft and --target (model folders, zoo names PAIR:draft / "
                         "PAIR:target, .gguf files or hub ids)")
    opts = _options(args)
    code = _sharded_launch(args)
    if code is not None:
        return code
    pair = load_pair(args.pair, args.draft, args.target, tokenizer=args.tokenizer, device=args.device,
                     dtype=args.dtype, progress=getattr(args, "verbose", False), tp_size=args.tp_size)
    tok = pair.tokenizer
    model_prompts, note = apply_template(pair, prompts, args.raw_prompt)
    if note and int(os.environ.get("RANK", "0")) == 0:
        print(note, file=sys.stderr)
    dec = make_decoder(pair.draft, pair.target, args.rule, alpha=args.alpha, gamma=args.gamma, tokenizer=tok,
                       draft_tokenizer=pair.draft_tokenizer, c=args.cost_ratio, engine=args.engine, **opts)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    enc = tok(model_prompts, return_tensors="pt", padding=True)
    out = dec.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                       no_eos=args.no_eos)
    texts = [tok.decode(row, skip_special_tokens=True) for row in out.token_lists()]
    summary = out.stats.summary()
    summary.update({"gamma": dec.gamma, "device": pair.device, "dtype": str(pair.dtype).split(".")[-1],
                    "engine": args.engine, "prompt_template": note is not None})
    if args.tp_size > 1:
        from specref import sharding

        sharding.check_ranks_agree(out.token_lists())
        summary["tp_size"] = args.tp_size
        if sharding.tp_rank() != 0:  # every rank holds the same answer; one prints it
            return 0
    if args.json:
        obj: dict[str, Any] = {"texts": texts, "tokens": out.token_lists(), "stats": summary}
        if args.per_row:
            obj["rows"] = [out.stats.row(i) for i in range(len(texts))]
        json.dump(_finite(obj), sys.stdout, indent=2, default=str)
        print()
        return 0
    for i, (prompt, text) in enumerate(zip(prompts, texts)):
        print(f"[{i}] {prompt}")
        print(f"    -> {text}")
    print(f"--- statistics ({dec!r}) ---")
    for key, value in summary.items():
        print(f"{key:>26}: {value:.4g}" if isinstance(value, float) else f"{key:>26}: {value}")
    if args.per_row:
        for i in range(len(texts)):
            row = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in out.stats.row(i).items())
            print(f"row {i}: {row}")
    return 0
