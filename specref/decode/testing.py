"""Tiny random-init Hugging Face models and toy-LM views of them, for tests and smoke runs.

Nothing here downloads anything: models are built from configs with a fixed seed. :class:`HFToyLM` turns
a model with a fixed prompt (causal) or a fixed encoder input (seq2seq) into a
:data:`specref.exact.ToyLM` (``prefix -> float64 [V]`` untempered next-token probabilities), computed with
plain uncached forwards, so the decoder's KV-cache plumbing is checked against an independent path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["FAMILIES", "HFToyLM", "tiny_model", "tiny_pair"]

FAMILIES = ("llama", "gpt2", "qwen2", "gemma", "t5")


def _config(family: str, vocab: int, hidden: int, layers: int, heads: int, init: float, context: int) -> Any:
    import transformers as tf

    common = {"vocab_size": vocab, "attn_implementation": "sdpa"}
    if family in ("llama", "qwen2", "gemma", "mistral", "qwen3"):
        cls = {
            "llama": tf.LlamaConfig,
            "qwen2": tf.Qwen2Config,
            "gemma": tf.GemmaConfig,
            "mistral": tf.MistralConfig,
            "qwen3": tf.Qwen3Config,
        }[family]
        extra = {"sliding_window": None} if family == "mistral" else {}
        return cls(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            head_dim=hidden // heads,
            max_position_embeddings=context,
            initializer_range=init,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
            **extra,
            **common,
        )
    if family == "gpt2":
        return tf.GPT2Config(
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=context,
            initializer_range=init,
            bos_token_id=None,
            eos_token_id=None,
            tie_word_embeddings=False,
            **common,
        )
    if family == "t5":
        return tf.T5Config(
            d_model=hidden,
            d_kv=hidden // heads,
            d_ff=2 * hidden,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=heads,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=None,
            initializer_factor=init / 0.02,
            tie_word_embeddings=False,
            dropout_rate=0.0,
            **common,
        )
    raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")


def tiny_model(
    family: str = "llama",
    *,
    vocab: int = 8,
    hidden: int = 16,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    init: float = 0.02,
    peak: float = 1.0,
    context: int = 64,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A random-init model of ``family`` in eval mode; ``peak`` scales the output logits (sharper when > 1)."""
    import transformers as tf

    config = _config(family, vocab, hidden, layers, heads, init, context)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "t5":
            model = tf.T5ForConditionalGeneration(config)
        else:
            model = tf.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        head = model.get_output_embeddings()
        head.weight.mul_(peak)
    return model.to(dtype).eval()


def tiny_pair(family: str = "llama", *, seed: int = 0, draft_noise: float | None = None, **kw: Any) -> tuple[Any, Any]:
    """(draft, target). The draft is an independent init (seed + 1000), or, with ``draft_noise``, the target's
    weights plus Gaussian noise of that relative size (so the pair agrees more often)."""
    target = tiny_model(family, seed=seed, **kw)
    if draft_noise is None:
        draft = tiny_model(family, seed=seed + 1000, **kw)
    else:
        draft = tiny_model(family, seed=seed, **kw)
        g = torch.Generator().manual_seed(seed + 1000)
        with torch.no_grad():
            for prm in draft.parameters():
                noise = torch.randn(prm.shape, generator=g, dtype=torch.float32).to(prm.dtype)
                prm.add_(draft_noise * prm.detach().abs().mean() * noise)
    return draft, target


class HFToyLM:
    """A model with a fixed context as a toy LM: ``prefix -> float64 [V]`` untempered next-token probs.

    Causal: the context is a prompt (the prefix is appended). Seq2seq: the context is the encoder input and
    the decoder reads ``decoder_start_token_id`` + prefix. Results are memoised; :meth:`precompute` fills
    every prefix up to a depth in a few batched forwards.
    """

    def __init__(self, model: Any, context: Sequence[int], vocab: int | None = None) -> None:
        self.model = model
        self.context = [int(t) for t in context]
        self.is_seq2seq = bool(model.config.is_encoder_decoder)
        self.vocab = int(vocab if vocab is not None else model.get_output_embeddings().weight.shape[0])
        self._memo: dict[tuple[int, ...], Tensor] = {}

    def _forward(self, prefixes: list[tuple[int, ...]]) -> Tensor:
        dev = next(self.model.parameters()).device
        lengths = {len(p) for p in prefixes}
        assert len(lengths) == 1, "batch prefixes of one length"
        with torch.inference_mode():
            if self.is_seq2seq:
                start = int(self.model.config.decoder_start_token_id)
                dec = torch.tensor([[start, *p] for p in prefixes], device=dev)
                enc = torch.tensor([self.context] * len(prefixes), device=dev)
                logits = self.model(input_ids=enc, decoder_input_ids=dec).logits[:, -1]
            else:
                ids = torch.tensor([[*self.context, *p] for p in prefixes], device=dev)
                logits = self.model(input_ids=ids).logits[:, -1]
        return torch.softmax(logits[:, : self.vocab].double(), dim=-1).cpu()

    def precompute(self, depth: int, chunk: int = 8192) -> HFToyLM:
        """Evaluate every prefix of length ``<= depth`` (V**depth of the longest) in batches."""
        from itertools import product

        for d in range(depth + 1):
            todo = [p for p in product(range(self.vocab), repeat=d) if p not in self._memo]
            for i in range(0, len(todo), chunk):
                part = todo[i : i + chunk]
                for p, row in zip(part, self._forward(part)):
                    self._memo[p] = row
        return self

    def __call__(self, prefix: tuple[int, ...]) -> Tensor:
        prefix = tuple(int(t) for t in prefix)
        hit = self._memo.get(prefix)
        if hit is None:
            hit = self._memo[prefix] = self._forward([prefix])[0]
        return hit


#: Tiny-model settings used by the test suite: peaky enough that wrong variants are detected, spread enough
#: that the joint law of 3 tokens over V = 8 has a few dozen cells with a usable expected count.
TOY_SETTINGS: dict[str, dict[str, Any]] = {
    "llama": {"init": 0.3, "peak": 3.0, "draft_noise": 0.3},
    "qwen2": {"init": 0.3, "peak": 3.0, "draft_noise": 0.3},
    "gpt2": {"init": 0.1, "peak": 3.0, "draft_noise": 0.3},
    "t5": {"init": 0.02, "peak": 0.3, "draft_noise": 0.3},
}
#: Two prompts of different lengths (causal: prompts; T5: encoder inputs), so batches are ragged.
TOY_PROMPTS: tuple[tuple[int, ...], ...] = ((1, 2, 3, 4, 5), (6, 7))

_PAIRS: dict[tuple[str, int], tuple[Any, Any]] = {}


def toy_pair(family: str, seed: int = 0) -> tuple[Any, Any]:
    """The suite's (draft, target) for ``family`` (memoised per process)."""
    if family not in TOY_SETTINGS:  # tiny_model builds more families than the suite has tuned settings for
        raise ValueError(f"no toy settings for family {family!r}; choose from {', '.join(TOY_SETTINGS)} "
                         f"(tiny_pair builds any of {', '.join(FAMILIES)})")
    key = (family, seed)
    if key not in _PAIRS:
        _PAIRS[key] = tiny_pair(family, seed=seed, vocab=8, **TOY_SETTINGS[family])
    return _PAIRS[key]


def ragged_batch(prompts: Sequence[Sequence[int]], rows: int, pad: int = 0) -> tuple[Tensor, Tensor]:
    """``rows`` left-padded rows cycling through ``prompts``: ``(input_ids, attention_mask)``."""
    width = max(len(p) for p in prompts)
    ids, mask = [], []
    for i in range(rows):
        p = list(prompts[i % len(prompts)])
        ids.append([pad] * (width - len(p)) + p)
        mask.append([0] * (width - len(p)) + [1] * len(p))
    return torch.tensor(ids), torch.tensor(mask)


def tiny_tokenizer(words: Sequence[str] = ("<pad>", "</s>", "<unk>", "a", "b", "c", "d", "e")) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over ``words`` (pad, eos, unk first), built offline."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
