"""Train each zoo pair's shared tokenizer on its task's train split: ``python -m training.zoo.build_tokenizers``.

Byte-level BPE everywhere (lossless: decode(encode(text)) == text, so BLEU/ROUGE see exactly what the
model wrote, and no <unk> is ever needed). The arithmetic tokenizer also splits every digit into its own
token, the standard trick that makes multi-digit arithmetic learnable for small models. Special tokens
follow T5's ids (pad 0, eos 1, unk 2); the causal pair adds bos 3 and pads on the left for batched
generation. Training is single-threaded (RAYON_NUM_THREADS=1) so the files are reproducible.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")

from specref.tasks import get_task  # noqa: E402
from specref.zoo import ZOO_DIR, get_spec, list_pairs  # noqa: E402

# The arithmetic corpus saturates at 587 tokens (every word whole, digits single).
VOCAB_SIZES = {"bible-en-es-t5": 4096, "stdlib-doc-t5": 4096, "arith-llama": 640}
SPECIALS = ["<pad>", "</s>", "<unk>"]
CAUSAL_SPECIALS = SPECIALS + ["<s>"]
MODEL_MAX_LENGTH = 512


def corpus(pair: str) -> list[str]:
    """The texts a pair's tokenizer learns from: prompts and completions of the train split."""
    task = get_task(get_spec(pair).task)
    texts = []
    for example in task.load("train"):
        if task.model_family == "causal":
            texts.append(task.format_prompt(example) + task.format_completion(example))
        else:
            texts.extend((task.format_prompt(example), task.format_completion(example)))
    return texts


def train_tokenizer(pair: str, texts: list[str], vocab_size: int | None = None):
    """A ``PreTrainedTokenizerFast`` for ``pair`` trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    causal = get_spec(pair).family == "causal"
    specials = CAUSAL_SPECIALS if causal else SPECIALS
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if causal:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size or VOCAB_SIZES[pair], min_frequency=2, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    if causal:
        # Prompts start with <s>; the training code appends </s> after the completion itself.
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 3)])
        extra = {"bos_token": "<s>", "padding_side": "left"}
    else:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        extra = {"padding_side": "right"}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=MODEL_MAX_LENGTH, **extra,
    )


def build(pair: str, out_root: Path = ZOO_DIR) -> Path:
    """Train and save ``pair``'s tokenizer to ``out_root/<pair>/tokenizer``; returns that folder."""
    tokenizer = train_tokenizer(pair, corpus(pair))
    folder = out_root / pair / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.zoo.build_tokenizers", description=__doc__)
    parser.add_argument("--pairs", nargs="*", default=list_pairs(), choices=list_pairs())
    parser.add_argument("--out", type=Path, default=ZOO_DIR, help="zoo root (default: the package's)")
    args = parser.parse_args(argv)
    for pair in args.pairs:
        folder = build(pair, args.out)
        print(f"{pair}: tokenizer written to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
