"""The engine table (specref.decode.engines): its names, the static check (what the static engines still
refuse), and the engine choices refused."""

from __future__ import annotations

import pytest
from test_decode_fast import TokenHead

from specref.decode import make_decoder
from specref.decode.engines import ENGINE_TABLE, check_static_models, get_engine
from specref.decode.testing import toy_pair
from specref.defaults import ENGINES, STATIC_ENGINES


def test_table_describes_exactly_the_engine_names():
    assert tuple(ENGINE_TABLE) == ENGINES
    assert tuple(n for n, e in ENGINE_TABLE.items() if e.static_shapes) == STATIC_ENGINES
    assert not ENGINE_TABLE["plain"].lean_round and not ENGINE_TABLE["plain"].preallocated
    assert all(e.preallocated and e.lean_round for n, e in ENGINE_TABLE.items() if n != "plain")
    assert [n for n, e in ENGINE_TABLE.items() if e.graphs] == ["graph", "compile-graph"]
    assert [n for n, e in ENGINE_TABLE.items() if e.compiled] == ["compile", "compile-graph"]


def test_get_engine_names_the_bad_value():
    assert get_engine("fast") is ENGINE_TABLE["fast"]
    assert get_engine(ENGINE_TABLE["graph"]) is ENGINE_TABLE["graph"]
    with pytest.raises(ValueError, match=r"engine must be one of .*'plain'.*, got 'turbo'"):
        get_engine("turbo")
    with pytest.raises(ValueError, match="got 3"):
        get_engine(3)


def _chunked_llama():
    """A Llama whose config claims chunked-attention layers (Llama 4's kind), which no static mask describes."""
    from specref.decode.testing import tiny_model

    model = tiny_model("llama")
    model.config.layer_types = ["chunked_attention", "full_attention"]
    return model


def test_the_static_check_is_one_message_for_decoders_and_sessions():
    draft, target = toy_pair("llama")
    chunked = _chunked_llama()
    with pytest.raises(ValueError) as from_decoder:
        make_decoder(chunked, target, "specdecode", engine="static")
    dec = make_decoder(chunked, target, "specdecode", engine="fast")  # dynamic engines take any model
    with pytest.raises(ValueError) as from_check:
        check_static_models(ENGINE_TABLE["static"], (dec.draft,))
    assert str(from_decoder.value) == str(from_check.value)
    assert str(from_check.value) == (
        "engine 'static' builds full and sliding-window masks only; the draft ('llama') has layer types "
        "['chunked_attention']: use engine='fast' or 'plain'"
    )
    check_static_models(ENGINE_TABLE["fast"], (dec.draft,))
    # T5 and sliding-window models are static models now
    t5d, t5t = toy_pair("t5")
    check_static_models(ENGINE_TABLE["graph"], (make_decoder(t5d, t5t, "specdecode", engine="graph").draft,))


def test_a_t5_whose_output_scale_is_unknown_is_refused():
    """The static engines run T5's decoder blocks themselves, so they must know whether the model scales the
    decoder's output before its LM head; a transformers release whose T5 config does not say is refused."""
    t5d, t5t = toy_pair("t5")
    dec = make_decoder(t5d, t5t, "specdecode", engine="fast")
    dec.target.decoder_output_scale = None
    with pytest.raises(ValueError, match=r"engine 'compile' cannot tell whether .* scales the target's \('t5'\) "
                                         "decoder output"):
        check_static_models(ENGINE_TABLE["compile"], (dec.draft, dec.target))


def test_engine_errors():
    draft, target = toy_pair("llama")
    with pytest.raises(ValueError, match="engine must be one of"):
        make_decoder(draft, target, "specdecode", engine="turbo")
    with pytest.raises(ValueError, match="speculative and single-model"):
        make_decoder(draft, target, "bild", alpha=0.3, engine="static")
    with pytest.raises(ValueError, match="full and sliding-window masks only"):
        make_decoder(draft, _chunked_llama(), "specdecode", engine="graph")

    class HiddenHead(TokenHead):
        wants_hidden = True

    with pytest.raises(ValueError, match="hidden states"):
        make_decoder(draft, target, "learned", alpha=0.1, head=HiddenHead(), engine="static")
