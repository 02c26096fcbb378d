"""Llama shapes of the benchmark models, built with transformers at random init."""

from __future__ import annotations

from typing import Any

from bench.lazy import torch

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


def llama(shape: dict[str, Any], vocab: int | None, tied: bool, context: int = 2048) -> Any:
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
    return llama(d_shape, vocab, tied=True), llama(t_shape, vocab, tied=False)


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
