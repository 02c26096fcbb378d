"""Adapters and the slot cache: every supported family decodes exactly like uncached full forwards.

Each family runs greedy SpecDecode on a ragged, left-padded batch with a draft that disagrees often (so
rejected drafts leave holes, or force compaction for T5 and sliding-window models) and must reproduce
greedy decoding by plain uncached forwards of the target, one row at a time.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from specref.decode import make_decoder
from specref.decode.adapters import SUPPORTED_CAUSAL, SUPPORTED_SEQ2SEQ

V = 32
#: the supported families built with sliding-window layers here (mixed with full ones where the family allows)
SLIDING = ("mistral", "gemma2", "gemma3_text", "qwen2", "qwen3", "smollm3", "phi3")
PROMPTS = [[5, 9, 13, 2, 20, 21, 7], [3], [17, 18, 19, 20]]
MAX_NEW = 12


def tiny_config(model_type: str, attn: str = "sdpa"):
    if model_type == "gpt2":
        kw = {
            "vocab_size": V,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 4,
            "n_positions": 64,
            "initializer_range": 0.3,
            "bos_token_id": None,
            "eos_token_id": None,
        }
    elif model_type in SUPPORTED_SEQ2SEQ:
        kw = {
            "vocab_size": V,
            "d_model": 32,
            "d_kv": 8,
            "d_ff": 64,
            "num_layers": 2,
            "num_heads": 4,
            "decoder_start_token_id": 0,
            "pad_token_id": 0,
            "eos_token_id": None,
            "relative_attention_num_buckets": 8,
            "relative_attention_max_distance": 16,
        }
    else:
        kw = {
            "vocab_size": V,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "max_position_embeddings": 64,
            "initializer_range": 0.3,
            "bos_token_id": None,
            "eos_token_id": None,
            "pad_token_id": None,
            "tie_word_embeddings": False,
        }
        if model_type in ("gpt_neox", "stablelm"):
            kw.pop("head_dim")
        if model_type == "gpt_neox":
            kw.pop("num_key_value_heads")
        # small sliding windows, so that windows really cut the context of these short sequences
        if model_type in SLIDING:
            kw["sliding_window"] = 5
        if model_type in ("qwen2", "qwen3"):  # one full layer, then sliding ones
            kw.update(use_sliding_window=True, max_window_layers=1)
        if model_type == "smollm3":
            kw.update(use_sliding_window=True, layer_types=["sliding_attention", "full_attention"])
    config = tf.AutoConfig.for_model(model_type, **kw)
    config._attn_implementation = attn
    return config


def build(model_type: str, seed: int, attn: str = "sdpa"):
    config = tiny_config(model_type, attn)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cls = tf.AutoModelForSeq2SeqLM if config.is_encoder_decoder else tf.AutoModelForCausalLM
        model = cls.from_config(config).eval()
    if config.is_encoder_decoder:
        with torch.no_grad():
            model.lm_head.weight.mul_(0.3)
    return model


def reference_greedy(model, prompt, n):
    out = []
    with torch.no_grad():
        for _ in range(n):
            if model.config.is_encoder_decoder:
                lg = model(input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([[0, *out]])).logits
            else:
                lg = model(torch.tensor([prompt + out])).logits
            out.append(int(lg[0, -1].argmax()))
    return out


CASES = [(m, "sdpa") for m in sorted(SUPPORTED_CAUSAL) + sorted(SUPPORTED_SEQ2SEQ)]
CASES += [(m, "eager") for m in ("llama", "gpt2", "t5", "gemma2")]


@pytest.mark.parametrize("model_type,attn", CASES)
def test_family_decodes_like_uncached_forwards(model_type, attn):
    try:
        target, draft = build(model_type, 0, attn), build(model_type, 1, attn)
    except ValueError as err:
        # Newer transformers releases withdraw sdpa from some families (Gemma 2 in 5.24); nothing to test.
        if "does not support an attention implementation" not in str(err):
            raise
        pytest.skip(f"{model_type} cannot use {attn} attention in this transformers release")
    dec = make_decoder(draft, target, "specdecode", gamma=3)
    w = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[0] * (w - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (w - len(p)) + [1] * len(p) for p in PROMPTS])
    out = dec.generate(ids, mask, max_new_tokens=MAX_NEW, temperature=0.0)
    assert int(out.stats.rejections.sum()) > 0
    assert out.token_lists() == [reference_greedy(target, p, MAX_NEW) for p in PROMPTS]
    if dec.target.contiguous:
        assert dec.target.is_seq2seq or dec.target.sliding


def test_cache_argument_name_follows_the_installed_transformers():
    """transformers renamed the forward's ``past_key_values`` to ``cache``; the adapter passes whichever the
    model's forward takes (the old name warns in recent releases and is removed in 5.40)."""
    import warnings

    from specref.decode import make_decoder
    from specref.decode.adapters import _cache_kwarg
    from specref.decode.testing import toy_pair

    class New:
        def forward(self, input_ids=None, cache=None, **kwargs): ...

    class Old:
        def forward(self, input_ids=None, past_key_values=None, **kwargs): ...

    assert _cache_kwarg(New()) == "cache" and _cache_kwarg(Old()) == "past_key_values"
    for family in ("llama", "t5"):
        draft, target = toy_pair(family)
        for engine in ("plain", "static"):  # the static T5 step calls the decoder's blocks with the same name
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                make_decoder(draft, target, "specdecode", gamma=2, engine=engine).generate(
                    torch.tensor([[1, 2, 3]]), max_new_tokens=4, seed=0)
            assert not [w for w in caught if "past_key_values" in str(w.message)], (family, engine)


def test_decoder_output_scale_follows_the_config():
    """T5 v1.0 scales the decoder's output by d_model ** -0.5 before the LM head, T5 v1.1 and mT5 do not (the
    static engines apply the factor themselves); a T5 config that does not say gives None (refused there)."""
    from types import SimpleNamespace

    from specref.decode.adapters import ModelAdapter, _decoder_output_scale

    assert _decoder_output_scale(SimpleNamespace(model_type="t5", d_model=16, scale_decoder_outputs=True)) == 0.25
    assert _decoder_output_scale(SimpleNamespace(model_type="t5", d_model=16, scale_decoder_outputs=False)) == 1.0
    assert _decoder_output_scale(SimpleNamespace(model_type="mt5", d_model=16)) == 1.0
    assert _decoder_output_scale(SimpleNamespace(model_type="t5", d_model=16)) is None
    for model_type in sorted(SUPPORTED_SEQ2SEQ):  # this release's configs say it
        model = build(model_type, 0)
        scale = 32 ** -0.5 if getattr(model.config, "scale_decoder_outputs", False) else 1.0
        assert ModelAdapter(model).decoder_output_scale == scale
