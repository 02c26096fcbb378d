"""Python function (docstring removed) -> first sentence of its docstring, from the CPython stdlib sources.

Source: the standard library of the running CPython (PSF license); the shipped files were built from
CPython 3.11.7 and reproduce byte-exactly only from that version's sources (``--stdlib`` points elsewhere).

Rules:
- every module of the standard library is mined, its test suite, IDLE, lib2to3 and distutils included
  (all part of CPython; the documented stdlib alone gives only ~5k usable functions); only the folders in
  :data:`SKIP_DIRS` (third-party site-packages, bytecode caches, generated pydoc topics, build config,
  bundled wheels) are skipped;
- every function and method (``def``/``async def``, nested ones included) whose body starts with a
  docstring and has more code after it; the input is its source (decorators included, dedented) with the
  docstring statement and the blank lines right after it removed; inputs over :data:`MAX_SOURCE_CHARS`
  characters are dropped (about 512 tokens of the zoo tokenizer; the tokenizer is trained on this data, so
  a character cap keeps the builder independent of it);
- the target is the first sentence of the docstring's first paragraph, 3 to 40 words, and not a C-style
  signature line ("f(x) -> y");
- the split is BY MODULE: modules ordered by the sha256 of their dotted name fill test (>= 800 examples),
  then validation (>= 400), the rest is train; modules with more than :data:`MAX_HELDOUT_MODULE` examples
  stay in train so no single module dominates the held-out sets;
- identical inputs are kept once, in the first of test, validation, train that has them (no leakage).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sys
import sysconfig
import textwrap
import warnings
from pathlib import Path

from specref.tasks.builders import _common

SHIPPED_FROM = "3.11.7"
SKIP_DIRS = frozenset({
    "site-packages", "dist-packages", "__pycache__", "__phello__", "pydoc_data", "ensurepip", "lib-dynload",
})
MAX_SOURCE_CHARS = 1200
MIN_WORDS, MAX_WORDS = 3, 40
TEST_MIN, VALIDATION_MIN, MAX_HELDOUT_MODULE = 800, 400, 120
_ABBREVIATIONS = frozenset({"e.g", "i.e", "etc", "vs", "cf", "approx", "resp", "no", "ie", "eg"})
_BOUNDARY = re.compile(r"[.!?](?=\s|$)")
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)\s*(->|$)|->")


def first_sentence(docstring: str) -> str | None:
    """The first sentence of the first paragraph, whitespace collapsed; None if unusable."""
    paragraph = re.split(r"\n\s*\n", docstring.strip(), maxsplit=1)[0]
    paragraph = " ".join(paragraph.split())
    if not paragraph:
        return None
    sentence = paragraph
    for found in _BOUNDARY.finditer(paragraph):
        before = paragraph[: found.start()].rsplit(" ", 1)[-1].lower()
        after = paragraph[found.end():].lstrip()
        if before in _ABBREVIATIONS or (after and after[0].islower()):
            continue
        sentence = paragraph[: found.end()]
        break
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or _SIGNATURE.search(sentence):
        return None
    return sentence


def _functions(tree: ast.AST):
    """(qualname, node) for every function in ``tree``, methods and nested functions included."""
    stack: list[tuple[str, ast.AST]] = [("", tree)]
    while stack:
        prefix, node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield name, child
                stack.append((name + ".", child))
            else:
                stack.append((prefix, child))


def extract_examples(source: str, module: str) -> list[dict]:
    """Rows ``{id, source, reference}`` for the documented functions of one module's source text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old escape sequences in test data files
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    rows = []
    for qualname, node in _functions(tree):
        doc = ast.get_docstring(node, clean=True)
        body = node.body
        if not doc or len(body) < 2:
            continue
        doc_node = body[0]
        if doc_node.lineno == node.lineno or doc_node.end_lineno >= body[1].lineno:
            continue  # docstring shares a line with other code: cannot cut it out cleanly
        target = first_sentence(doc)
        if target is None:
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        head = lines[start : doc_node.lineno - 1]
        tail = lines[doc_node.end_lineno : node.end_lineno]
        while tail and not tail[0].strip():
            tail.pop(0)
        code = textwrap.dedent("\n".join(head + tail)).strip("\n")
        if len(code) > MAX_SOURCE_CHARS:
            continue
        rows.append({"id": f"{module}:{qualname}:{node.lineno}", "source": code, "reference": target})
    return rows


def module_files(stdlib: Path) -> list[tuple[str, Path]]:
    """(dotted module name, path) of the stdlib modules we mine, sorted by name."""
    found = []
    for path in stdlib.rglob("*.py"):
        rel = path.relative_to(stdlib)
        if any(part in SKIP_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        if rel.name.startswith("_sysconfigdata"):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append((".".join(parts), path))
    return sorted(found)


def assign_splits(by_module: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Split by module (see the module docstring) and drop duplicate inputs across and within splits."""
    order = sorted(by_module, key=lambda m: hashlib.sha256(m.encode()).hexdigest())
    chosen: dict[str, list[str]] = {"test": [], "validation": [], "train": []}
    counts = {"test": 0, "validation": 0}
    for module in order:
        size = len(by_module[module])
        split = "train"
        if size <= MAX_HELDOUT_MODULE:
            if counts["test"] < TEST_MIN:
                split = "test"
            elif counts["validation"] < VALIDATION_MIN:
                split = "validation"
        if split != "train":
            counts[split] += size
        chosen[split].append(module)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split in ("test", "validation", "train"):
        rows = []
        for module in sorted(chosen[split]):
            for row in by_module[module]:
                if row["source"] not in seen:
                    seen.add(row["source"])
                    rows.append(row)
        splits[split] = rows
    return splits


def build(args: argparse.Namespace) -> dict[str, list[dict]]:
    stdlib = Path(args.stdlib)
    if not stdlib.is_dir():
        raise FileNotFoundError(f"--stdlib {stdlib} is not a folder of Python sources")
    version = ".".join(map(str, sys.version_info[:3]))
    if args.stdlib_default and version != SHIPPED_FROM:
        print(f"note: building from CPython {version}; the shipped files come from {SHIPPED_FROM}, "
              "so checksums will differ", file=sys.stderr)
    by_module = {}
    for module, path in module_files(stdlib):
        rows = extract_examples(path.read_text(encoding="utf-8", errors="replace"), module)
        if rows:
            by_module[module] = rows
    return assign_splits(by_module)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stdlib", default=None,
                        help="folder of the standard library sources (default: the running CPython's)")


def main(argv: list[str] | None = None) -> int:
    def build_with_default(args: argparse.Namespace) -> dict[str, list[dict]]:
        args.stdlib_default = args.stdlib is None
        if args.stdlib is None:
            args.stdlib = sysconfig.get_paths()["stdlib"]
        return build(args)

    return _common.main("summarization", build_with_default, _add_arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
