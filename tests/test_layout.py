"""The tests mirror the package: each ``tests/test_*.py`` is named for the library module it tests.

The folder is flat: ``specref/rules.py`` -> ``test_rules.py``, ``specref/logs/store.py`` ->
``test_logs_store.py``, and a package's own tests (its ``__init__.py``, or the package as a whole) go in
``test_<package>.py``. Suites that test the decoder or the library as a whole, and tests of code outside
``specref/`` (``bench/``, ``training/``), are listed in :data:`CROSS_CUTTING` with the reason they have no
single module.
"""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "specref"

#: test files that test no single library module, each with why.
CROSS_CUTTING = {
    "test_bad_inputs.py": "bad inputs to the public functions of the math core (dists, rules, verify, exact, ...)",
    "test_bench.py": "the bench/ scripts, which live outside the package",
    "test_heads_features_fast.py": "the learned rule's fast feature path (dists, position_summary, heads, rules) "
                                   "against the plain implementations it replaced",
    "test_decode_conventions.py": "generate's user-facing conventions across decoder, generation and rules",
    "test_decode_draft_stop.py": "the in-round draft stop across decoder, rounds, verify, fused, generation and "
                                 "exact: its law, engines, host reads and statistics",
    "test_decode_errors.py": "the decoders' refusals of bad models, prompts and arguments, end to end",
    "test_decode_exact.py": "every decoding method's samples against specref.exact's laws",
    "test_decode_fast.py": "the fast engine against the plain one (kvcache, rounds, fused together)",
    "test_decode_greedy.py": "greedy decoding of every family against transformers' generate",
    "test_decode_invariance.py": "batch invariance of every decoding method",
    "test_decode_sync.py": "host-sync counts of a decoding round on every engine",
    "test_deferral_training.py": "training/deferral, which lives outside the package",
    "test_hand_worked.py": "hand-worked examples of every rule through genspec",
    "test_layout.py": "this file: the layout of tests/ itself",
    "test_learned_pipeline.py": "logs -> training -> export -> evaluate -> decode, end to end",
    "test_learned_tables.py": "training/deferral/tables.py, which lives outside the package",
    "test_online_summary.py": "training/deferral/online_summary.py, which lives outside the package",
    "test_rules_registry.py": "rules.register as seen by the decoder, the logs, reproduce and the CLI plugins",
    "test_statistical.py": "statistical checks of the verifier and block sampler, and the test statistics used",
    "test_zoo_training.py": "training/zoo, which lives outside the package",
}

#: modules that must have a test file of their own.
REQUIRED = ["decode/static.py", "decode/kvcache.py", "decode/fused.py", "decode/rounds.py", "decode/engines.py"]


def _splits(parts: list[str]):
    """Every way to join consecutive parts with ``_`` into path segments: ``a_b_c`` -> a/b/c, a_b/c, a/b_c, ..."""
    if len(parts) == 1:
        yield parts
        return
    for rest in _splits(parts[1:]):
        yield [parts[0], *rest]
        yield [parts[0] + "_" + rest[0], *rest[1:]]


def module_of(test_file: str, package: Path = PACKAGE) -> Path | None:
    """The library module ``test_file`` is named for (a ``.py`` file or a package folder), or None."""
    name = Path(test_file).name
    if not (name.startswith("test_") and name.endswith(".py")):
        return None
    for segments in _splits(name[len("test_") : -len(".py")].split("_")):
        base = package.joinpath(*segments)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def test_module_of_follows_the_naming_convention():
    assert module_of("test_rules.py") == PACKAGE / "rules.py"
    assert module_of("test_logs_store.py") == PACKAGE / "logs" / "store.py"
    assert module_of("test_decode_step_cost.py") == PACKAGE / "decode" / "step_cost.py"
    assert module_of("test_baselines_exact.py") == PACKAGE / "baselines_exact.py"
    assert module_of("test_logs.py") == PACKAGE / "logs" / "__init__.py"
    assert module_of("test_nosuchmodule.py") is None
    assert module_of("test_decode_nosuch.py") is None
    assert module_of("strategies.py") is None


def test_every_test_file_names_a_module_or_is_a_listed_cross_cutting_suite():
    files = sorted(p.name for p in TESTS.glob("test_*.py"))
    unmapped = [f for f in files if module_of(f) is None and f not in CROSS_CUTTING]
    assert not unmapped, (
        f"test files named for no library module: {unmapped}; name each test_<module>.py or "
        f"test_<subpackage>_<module>.py after what it tests, or list it in CROSS_CUTTING with a reason"
    )
    stale = sorted(set(CROSS_CUTTING) - set(files))
    assert not stale, f"CROSS_CUTTING lists files that do not exist: {stale}"
    named = sorted(f for f in CROSS_CUTTING if module_of(f) is not None)
    assert not named, f"CROSS_CUTTING lists files that are named for a module (remove them from it): {named}"
    assert all(reason.strip() for reason in CROSS_CUTTING.values())


def test_the_decoding_engines_parts_have_their_own_test_files():
    for module in REQUIRED:
        path = PACKAGE / module
        assert path.is_file(), f"{module} moved: update REQUIRED"
        test = TESTS / ("test_" + "_".join(Path(module).with_suffix("").parts) + ".py")
        assert test.is_file(), f"specref/{module} has no test file of its own ({test.name})"
        assert module_of(test.name) == path
