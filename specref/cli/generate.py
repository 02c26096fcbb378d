"""``specref generate``: decode prompts with a draft/target pair and print the text and statistics.

Example::

    specref generate --draft path/to/draft --target path/to/target --rule token_v3 --alpha 0.3 \\
        --gamma 5 --prompt "Translate to Spanish: In the beginning" --max-new-tokens 64 --c 0.1

Model arguments are local directories saved with ``save_pretrained`` (weights, config, tokenizer), or
names from the model zoo once ``specref.zoo`` provides ``resolve_model``. Nothing is downloaded, and
``trust_remote_code`` is never set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["load_model", "register", "resolve_model_path", "run"]

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def register(subparsers: Any) -> None:
    from specref.decode.decoder import METHODS

    p = subparsers.add_parser(
        "generate",
        help="decode prompts with a speculative cascade (or a baseline) and print text and statistics",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--draft", help="draft model directory or zoo name")
    p.add_argument("--target", help="target model directory or zoo name")
    p.add_argument("--pair", help="zoo pair name (instead of --draft/--target), e.g. bible-en-es-t5")
    p.add_argument(
        "--rule", "--method", dest="rule", default="token_v3", choices=METHODS, help="deferral rule or decoding method"
    )
    p.add_argument("--alpha", type=float, default=None, help="rule lenience / deferral cost")
    p.add_argument("--gamma", type=int, default=5, help="drafts per round (speculative methods)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
    p.add_argument("--prompt-file", help="file with one prompt per line (added to --prompt)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0, help="row i uses seed + i")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=_DTYPES, help="model dtype (auto: bfloat16 on GPU)")
    p.add_argument("--c", type=float, default=0.0, help="draft/target cost ratio for the modeled latency")
    p.add_argument("--bonus", choices=("pi", "target"), default="pi", help="bonus-token distribution")
    p.add_argument("--beta", type=float, help="lossy: residual parameter")
    p.add_argument("--weight", type=float, help="ensemble: weight on the target")
    p.add_argument("--aggregate", choices=("mean", "sum", "quantile"), help="seq_cascade: confidence")
    p.add_argument("--quantile", type=float, help="seq_cascade: quantile of token log-probs")
    p.add_argument("--threshold", type=float, help="seq_cascade: log-prob threshold (instead of alpha)")
    p.add_argument("--fallback", type=float, help="bild: fallback threshold on max draft prob")
    p.add_argument("--rollback", type=float, help="bild: rollback threshold (nats)")
    p.add_argument("--head", help="learned: an exported deferral head (needs specref.heads)")
    p.add_argument("--no-eos", action="store_true", help="ignore EOS; always generate max-new-tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--per-row", action="store_true", help="also print per-row statistics")
    p.set_defaults(func=run)


def resolve_model_path(name: str) -> str:
    """A local model directory for ``name``: the path itself, or the zoo's answer if the zoo knows it."""
    if os.path.isdir(name):
        return name
    resolver = _zoo_attr("resolve_model")
    if resolver is not None:
        try:
            found = resolver(name)
        except (KeyError, LookupError, ValueError, FileNotFoundError) as err:
            raise FileNotFoundError(f"no model directory {name!r}, and the zoo does not know it: {err}") from None
        if isinstance(found, (str, os.PathLike)) and os.path.isdir(found):
            return os.fspath(found)
        if found is not None and not isinstance(found, (str, os.PathLike)):
            raise ValueError(f"zoo.resolve_model({name!r}) returned {type(found).__name__}, not a directory")
    raise FileNotFoundError(
        f"no model directory {name!r} (pass a directory saved with save_pretrained"
        + ("" if resolver is None else ", or a zoo model name")
        + ")"
    )


def _zoo_attr(name: str) -> Any:
    try:
        import specref.zoo as zoo
    except ImportError:
        return None
    return getattr(zoo, name, None)


def _dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def load_model(path: str, device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer or None) from a local directory; causal or seq2seq by the config."""
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(path, local_files_only=True)
    cls = tf.AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else tf.AutoModelForCausalLM
    model = cls.from_pretrained(path, local_files_only=True, dtype=dtype, attn_implementation="sdpa")
    model = model.to(device).eval()
    try:
        tok = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError):
        tok = None
    return model, tok


def _load_head(path: str) -> Any:
    try:
        import specref.heads as heads
    except ImportError:
        raise ValueError("--head needs specref.heads, which is not installed in this version") from None
    for name in ("load_head", "load"):
        fn = getattr(heads, name, None)
        if callable(fn):
            return fn(path)
    raise ValueError("specref.heads has no load_head(path) function")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return name


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
    if (
        args.rule
        in ("specdecode", "lossy", "ensemble", "chow", "diff", "opt", "token_v1", "token_v2", "token_v3", "learned")
        and args.bonus != "pi"
    ):
        opts["bonus"] = args.bonus
    if args.head:
        if args.rule != "learned":
            raise ValueError("--head only applies to --rule learned")
        opts["head"] = _load_head(args.head)
    elif args.rule == "learned":
        raise ValueError("--rule learned needs --head PATH")
    return opts


def _load_pair(args: argparse.Namespace, device: str, dtype: Any) -> tuple[Any, Any, Any, Any]:
    if args.pair:
        if args.draft or args.target:
            raise ValueError("give either --pair or --draft/--target, not both")
        loader = _zoo_attr("load_pair")
        if loader is None:
            raise ValueError("--pair needs specref.zoo.load_pair, which is not available in this version")
        try:
            pair = loader(args.pair, device=device, dtype=dtype)
        except TypeError:
            pair = loader(args.pair)
        if isinstance(pair, dict):
            draft, target, tok = pair["draft"], pair["target"], pair.get("tokenizer")
        elif isinstance(pair, (tuple, list)):
            draft, target, tok = (list(pair) + [None])[:3]
        else:
            draft, target, tok = pair.draft, pair.target, getattr(pair, "tokenizer", None)
        return draft.to(device=device, dtype=dtype).eval(), target.to(device=device, dtype=dtype).eval(), tok, None
    if not args.draft or not args.target:
        raise ValueError("give --draft and --target (model directories or zoo names), or --pair")
    draft, dtok = load_model(resolve_model_path(args.draft), device, dtype)
    target, ttok = load_model(resolve_model_path(args.target), device, dtype)
    ttok = ttok if ttok is not None else _zoo_tokenizer(args.target)
    dtok = dtok if dtok is not None else _zoo_tokenizer(args.draft)
    return draft, target, ttok if ttok is not None else dtok, dtok


def _zoo_tokenizer(name: str) -> Any:
    """The shared tokenizer of a zoo pair named ``<pair>:<role>`` (zoo tokenizers live beside the models)."""
    loader = _zoo_attr("load_tokenizer")
    if loader is None or os.path.isdir(name):
        return None
    for sep in (":", "/"):
        if sep in name:
            try:
                return loader(name.split(sep, 1)[0])
            except (OSError, ValueError, KeyError):
                return None
    return None


def _finite(x: Any) -> Any:
    """JSON has no NaN / inf: write them as null."""
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def run(args: argparse.Namespace) -> int:
    from specref.decode import make_decoder

    prompts = _prompts(args)
    device = _device(args.device)
    dtype = _dtype(args.dtype, device)
    draft, target, tok, dtok = _load_pair(args, device, dtype)
    if tok is None:
        raise ValueError("no tokenizer found next to the target (or draft) model; save one with the model")
    opts = _options(args)
    dec = make_decoder(
        draft,
        target,
        args.rule,
        alpha=args.alpha,
        gamma=args.gamma,
        tokenizer=tok,
        draft_tokenizer=dtok,
        c=args.c,
        **opts,
    )
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    enc = tok(prompts, return_tensors="pt", padding=True)
    eos = None if args.no_eos else tok.eos_token_id
    out = dec.generate(
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        eos_token_id=eos,
    )
    texts = [tok.decode(row, skip_special_tokens=True) for row in out.token_lists()]
    summary = out.stats.summary()
    summary.update({"gamma": dec.gamma, "alpha": args.alpha, "device": device, "dtype": str(dtype).split(".")[-1]})
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
