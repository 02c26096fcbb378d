"""The engine table (specref.decode.engines) and the decoding wing's import layout."""

from __future__ import annotations

import ast
import pathlib

import pytest

import specref.decode
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


def _imports(root: pathlib.Path) -> dict[str, set[str]]:
    mods = {p.stem for p in root.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for m in mods:
        deps: set[str] = set()
        for node in ast.walk(ast.parse((root / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("specref.decode."):
                deps.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[2] for a in node.names if a.name.startswith("specref.decode.")}
        graph[m] = deps - {m}
    return graph


def test_no_import_circles_in_the_decoding_wing():
    """Module-level and function-level imports alike: each module only imports modules below it."""
    graph = _imports(pathlib.Path(specref.decode.__file__).parent)
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            assert state.get(d) != 1, f"import circle: {' -> '.join([*path, d])}"
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert "decoder" not in graph["baselines"] and "adapters" not in graph["static"]
