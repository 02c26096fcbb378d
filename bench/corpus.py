"""The benchmark pair's training data: Python sources found on the machine, and a tokenizer trained on them."""

from __future__ import annotations

import glob
import os
import sysconfig
from typing import Any


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
