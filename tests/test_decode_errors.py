"""Clear errors: mismatched vocabularies, unsupported architectures, non-finite logits, over-long prompts,
bad arguments. Also the padded-vocabulary path (LM heads of different widths with one tokenizer)."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as tf

from specref.decode import NonFiniteLogitsError, SpecCascadeDecoder, make_decoder
from specref.decode.testing import tiny_model, tiny_tokenizer, toy_pair

IDS = torch.tensor([[0, 1, 2], [3, 4, 5]])
MASK = torch.tensor([[0, 1, 1], [1, 1, 1]])


@pytest.fixture(scope="module")
def pair():
    return toy_pair("llama")


@pytest.fixture(scope="module")
def dec(pair):
    return make_decoder(*pair, "specdecode", gamma=2)


# ---- vocabularies ----------------------------------------------------------------------------------------


def test_mismatched_vocabularies():
    with pytest.raises(ValueError, match="vocabularies differ"):
        make_decoder(tiny_model("llama", vocab=8), tiny_model("llama", vocab=12), "specdecode")
    with pytest.raises(ValueError, match="vocabularies differ"):
        make_decoder(tiny_model("gpt2", vocab=50), tiny_model("llama", vocab=32), "token_v3", alpha=0.3)


def test_padded_vocabulary_is_masked_with_a_tokenizer():
    draft, target = tiny_model("llama", vocab=8, init=0.3), tiny_model("llama", vocab=12, init=0.3, peak=5.0)
    with torch.no_grad():  # make the padding rows of the target's head the most likely tokens
        target.lm_head.weight[8:] = 50 * target.lm_head.weight[:4].abs()
    tok = tiny_tokenizer()
    for kw in ({"tokenizer": tok}, {"tokenizer": tok, "draft_tokenizer": tok}, {"vocab_size": 8}):
        d = make_decoder(draft, target, "specdecode", gamma=2, **kw)
        assert d.vocab == 8
        out = d.generate(IDS, MASK, max_new_tokens=10, seed=0, no_eos=True)
        assert out.sequences.max() < 8 and out.sequences.min() >= 0
    single = make_decoder(draft, target, "target", tokenizer=tok)
    assert single.generate(IDS, MASK, max_new_tokens=5).sequences.max() < 8


def test_tokenizer_mismatch():
    a, b = tiny_tokenizer(), tiny_tokenizer(("<pad>", "</s>", "<unk>", "a", "b", "c", "e", "d"))
    draft, target = toy_pair("llama")
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        make_decoder(draft, target, "specdecode", tokenizer=a, draft_tokenizer=b)
    big = tiny_tokenizer(tuple(f"w{i}" for i in range(20)))
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the \w+ LM head only 8"):
        make_decoder(draft, target, "specdecode", tokenizer=big)
    with pytest.raises(ValueError, match="vocab_size"):
        make_decoder(draft, target, "specdecode", vocab_size=100)


# ---- architectures -----------------------------------------------------------------------------------------


def test_unsupported_architectures(pair):
    opt = tf.OPTForCausalLM(
        tf.OPTConfig(
            vocab_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            ffn_dim=32,
            num_attention_heads=2,
            word_embed_proj_dim=16,
            max_position_embeddings=32,
        )
    )
    with pytest.raises(ValueError, match="unsupported draft architecture 'opt'"):
        make_decoder(opt, pair[1], "specdecode")
    bart = tf.BartForConditionalGeneration(
        tf.BartConfig(
            vocab_size=8,
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=16,
            decoder_ffn_dim=16,
            max_position_embeddings=32,
        )
    )
    with pytest.raises(ValueError, match="unsupported target architecture 'bart'"):
        make_decoder(pair[0], bart, "specdecode")
    with pytest.raises(ValueError, match="no LM head"):
        make_decoder(pair[0].model, pair[1], "specdecode")
    with pytest.raises(TypeError, match="PreTrainedModel"):
        make_decoder(torch.nn.Linear(2, 2), pair[1], "specdecode")
    t5 = toy_pair("t5")[1]
    with pytest.raises(ValueError, match="same kind of model"):
        make_decoder(pair[0], t5, "specdecode")


def test_attention_implementation_is_checked():
    m = tiny_model("llama")
    m.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation"):
        make_decoder(m, tiny_model("llama"), "specdecode")
    eager = tiny_model("llama")
    eager.config._attn_implementation = "eager"
    make_decoder(eager, tiny_model("llama"), "specdecode").generate(IDS, MASK, max_new_tokens=3)


# ---- non-finite logits --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where,method,alpha,opts",
    [
        ("target", "specdecode", None, {}),
        ("draft", "specdecode", None, {}),
        ("target", "target", None, {}),
        ("draft", "draft", None, {}),
        ("target", "token_cascade", -1.0, {}),
        ("target", "bild", None, {"fallback": 1.01}),
        ("draft", "seq_cascade", 0.5, {}),
        ("target", "token_v3", 0.3, {"bonus": "target"}),
    ],
)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_logits_raise(where, method, alpha, opts, bad):
    draft, target = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    with torch.no_grad():
        (target if where == "target" else draft).lm_head.weight[3, :] = bad
    d = make_decoder(draft, target, method, alpha=alpha, gamma=2, **opts)
    with pytest.raises(NonFiniteLogitsError, match=f"{where}|draft or target"):
        d.generate(IDS, MASK, max_new_tokens=4, seed=0)


# ---- prompts and context --------------------------------------------------------------------------------------


def test_prompts_longer_than_context():
    draft, target = tiny_model("llama", context=16), tiny_model("llama", context=16, seed=3)
    d = make_decoder(draft, target, "specdecode", gamma=4)
    long = torch.randint(0, 8, (1, 20))
    with pytest.raises(ValueError, match="longer than the draft's context of 16"):
        d.generate(long, max_new_tokens=2)
    with pytest.raises(ValueError, match="exceeds the draft's context"):
        d.generate(long[:, :10], max_new_tokens=7)
    # exactly filling the context is fine, even though drafts look past the end
    out = d.generate(long[:, :10], max_new_tokens=6, seed=0)
    assert int(out.lengths[0]) == 6


@pytest.mark.parametrize(
    "ids,mask,match",
    [
        (torch.tensor([[1, 2, 0]]), torch.tensor([[1, 1, 0]]), "LEFT-padded"),
        (torch.tensor([[1, 2, 3]]), torch.tensor([[1, 0, 1]]), "LEFT-padded"),
        (torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1]]), "does not match"),
        (torch.tensor([[1, 2, 9]]), None, r"lie in \[0, 8\)"),
        (torch.tensor([[1.0, 2.0]]), None, "integer"),
        (torch.zeros((1, 0), dtype=torch.long), None, "non-empty"),
        ([[1, 2], [3]], None, "input_ids"),
        (torch.tensor([[1, 2]]), torch.tensor([[2, 1]]), "only 0 and 1"),
    ],
)
def test_bad_prompts(dec, ids, mask, match):
    with pytest.raises(ValueError, match=match):
        dec.generate(ids, mask, max_new_tokens=2)


# ---- arguments -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": [1, 2, 3]}, "seed list"),
        ({"seed": "x"}, "seed"),
        ({"eos_token_id": 8}, "outside the shared vocabulary"),
        ({"eos_token_id": -1}, "eos_token_id"),
        ({"on_round": 3}, "callable"),
    ],
)
def test_bad_generate_arguments(dec, kw, match):
    args = {"max_new_tokens": 2, **kw}
    with pytest.raises(ValueError, match=match):
        dec.generate(IDS, MASK, **args)


@pytest.mark.parametrize(
    "method,alpha,kw,match",
    [
        ("specdecode", None, {"gamma": 0}, "gamma"),
        ("specdecode", None, {"gamma": -2}, "gamma"),
        ("specdecode", None, {"gamma": 1.5}, "gamma"),
        ("token_v3", None, {"gamma": "5"}, "gamma"),
        ("nope", None, {}, "unknown method"),
        ("lossy", 1.5, {}, "lossy alpha"),
        ("token_v3", "x", {}, "alpha"),
        ("chow", math.nan, {}, "NaN"),
        ("ensemble", None, {"weight": 2.0}, "weight"),
        ("specdecode", 0.3, {}, "takes no alpha"),
        ("target", 0.3, {}, "takes no alpha"),
        ("token_v3", 0.3, {"bonus": "q"}, "bonus"),
        ("token_v3", 0.3, {"c": -1}, "cost ratio"),
        ("token_v3", 0.3, {"colour": 1}, "bad options"),
        ("token_cascade", 0.3, {"beta": 1}, "only alpha"),
        ("seq_cascade", 0.3, {"aggregate": "max"}, "aggregate"),
        ("seq_cascade", 0.3, {"quantile": 2.0}, "quantile"),
        ("seq_cascade", 1.0, {}, "alpha must be < 1"),
        ("seq_cascade", 0.3, {"threshold": -1.0}, "either alpha or threshold"),
        ("bild", 0.3, {"rollback": -1.0}, "rollback"),
        ("bild", 0.3, {"fallback": 0.5}, "either alpha"),
        ("learned", 0.3, {}, "head"),
        ("learned", 0.3, {"head": object()}, "head"),
    ],
)
def test_bad_decoder_arguments(pair, method, alpha, kw, match):
    with pytest.raises(ValueError, match=match):
        make_decoder(*pair, method, alpha=alpha, **kw)


def test_rule_objects_and_names(pair):
    from specref import rules

    with pytest.raises(ValueError, match="decoding method"):
        SpecCascadeDecoder(*pair, "target")
    with pytest.raises(ValueError, match="only apply"):
        SpecCascadeDecoder(*pair, rules.get("chow", alpha=0.2), alpha=0.3)
    with pytest.raises(ValueError, match="Rule"):
        SpecCascadeDecoder(*pair, 42)
    d = make_decoder(*pair, rules.get("chow", alpha=0.2), gamma=2)
    assert d.method == "chow"
    d.generate(IDS, MASK, max_new_tokens=3)
