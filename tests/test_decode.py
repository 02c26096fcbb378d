"""The decoding package (specref.decode) as a whole: its modules' import layout has no circles."""

from __future__ import annotations

import ast
import pathlib

import specref.decode


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
