"""The engine table (specref.decode.engines): its names, the static check, and the engine choices refused."""

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


def test_the_static_check_is_one_message_for_decoders_and_sessions():
    t5d, t5t = toy_pair("t5")
    with pytest.raises(ValueError) as from_decoder:
        make_decoder(t5d, t5t, "specdecode", engine="static")
    dec = make_decoder(t5d, t5t, "specdecode", engine="fast")
    with pytest.raises(ValueError) as from_check:
        check_static_models(ENGINE_TABLE["static"], (dec.draft,))
    assert str(from_decoder.value) == str(from_check.value)
    assert "engine 'static' needs causal models without sliding-window attention; the draft is 't5'" in str(
        from_check.value
    )
    check_static_models(ENGINE_TABLE["fast"], (dec.draft,))  # dynamic engines take any model


def test_engine_errors():
    draft, target = toy_pair("llama")
    with pytest.raises(ValueError, match="engine must be one of"):
        make_decoder(draft, target, "specdecode", engine="turbo")
    with pytest.raises(ValueError, match="speculative and single-model"):
        make_decoder(draft, target, "bild", alpha=0.3, engine="static")
    t5d, t5t = toy_pair("t5")
    with pytest.raises(ValueError, match="causal models"):
        make_decoder(t5d, t5t, "specdecode", engine="graph")

    class HiddenHead(TokenHead):
        wants_hidden = True

    with pytest.raises(ValueError, match="hidden states"):
        make_decoder(draft, target, "learned", alpha=0.1, head=HiddenHead(), engine="static")
