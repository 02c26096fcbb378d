"""Build a fresh zoo model (T5 or Llama) from a config's ``arch`` block and the pair's tokenizer."""

from __future__ import annotations

from specref.zoo import get_spec


def build_model(pair: str, arch: dict, tokenizer):
    """A randomly initialized model whose vocabulary is exactly the tokenizer's (ids match 1:1)."""
    family = get_spec(pair).family
    vocab = len(tokenizer)
    if family == "seq2seq":
        from transformers import T5Config, T5ForConditionalGeneration

        config = T5Config(
            vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, **arch,
        )
        return T5ForConditionalGeneration(config)
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True, **arch,
    )
    return LlamaForCausalLM(config)


def count_parameters(model) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def set_generation_defaults(model, tokenizer) -> None:
    """Greedy by default, with the special-token ids set, so ``generate()`` needs no extra arguments."""
    gen = model.generation_config
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    if model.config.is_encoder_decoder:
        gen.decoder_start_token_id = tokenizer.pad_token_id
    else:
        gen.bos_token_id = tokenizer.bos_token_id
    gen.do_sample = False
