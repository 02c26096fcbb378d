"""The ``specref`` command as a whole: instant help, version, one-line errors, quiet exits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from specref import __version__
from specref.cli import COMMANDS, build_parser, main


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_help_of_every_subcommand_imports_no_model_library():
    # One fresh interpreter per call: an earlier import in this process must not hide a heavy import.
    code = """
        import json, sys
        from specref.cli import COMMANDS, main
        out = {}
        for argv in [["--help"]] + [[c, "--help"] for c in COMMANDS]:
            try:
                main(argv)
            except SystemExit as e:
                out[" ".join(argv)] = e.code
        heavy = sorted(m for m in ("torch", "transformers", "lightning", "sklearn", "matplotlib") if m in sys.modules)
        print(json.dumps({"codes": out, "heavy": heavy}))
    """
    res = _fresh(code)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["heavy"] == [], f"--help imported {got['heavy']}"
    assert set(got["codes"]) == {"--help"} | {f"{c} --help" for c in COMMANDS}
    assert all(code == 0 for code in got["codes"].values())


def test_negative_control_detects_a_heavy_import():
    # The probe above must be able to fail: importing the decoder does pull torch in.
    res = _fresh("import sys, specref.decode; print('torch' in sys.modules)")
    assert res.stdout.strip() == "True"


def test_every_subcommand_registers():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


def test_every_option_has_help_text_with_its_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = []
    for name, p in sub.choices.items():
        for action in p._actions:
            if not action.option_strings or action.dest in ("help", "version") or action.help == "==SUPPRESS==":
                continue
            text = action.help or ""
            # a flag (no value) needs a help text; an option with a value also says what it is when not given
            needs_default = action.nargs != 0 and not action.required  # a required option has no default
            if not text or (needs_default and "default" not in text and "%(default)" not in text):
                missing.append(f"{name} {action.option_strings[0]}")
    assert missing == []


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"specref {__version__}"


def test_user_error_is_one_line_with_exit_2(capsys):
    assert main(["zoo", "show", "no-such-pair"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("specref zoo: error: unknown zoo pair 'no-such-pair'")
    assert "Traceback" not in err[0]


def test_debug_shows_the_traceback():
    with pytest.raises(ValueError, match="unknown zoo pair"):
        main(["--debug", "zoo", "show", "no-such-pair"])


def test_debug_from_the_environment(monkeypatch):
    monkeypatch.setenv("SPECREF_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown zoo pair"):
        main(["zoo", "show", "no-such-pair"])


def test_closed_pipe_exits_quietly():
    # `specref zoo --json | head -c 10`: the reader goes away while specref writes.
    code = "from specref.cli import main; import sys; sys.exit(main(['zoo', '--json']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err, err.decode()
    assert proc.returncode == 0


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "--gamma", "0"], "--gamma: must be an integer >= 1, got '0'"),
    (["reproduce", "--max-examples", "-3"], "--max-examples: must be an integer >= 1"),
    (["reproduce", "--temperature", "nan"], "--temperature: expected a finite number"),
    (["reproduce", "--top-p", "1.5"], "top-p must be in (0, 1]"),
    (["reproduce", "--seed", "a,b"], "expected comma-separated integers"),
    (["reproduce", "--engine", "turbo"], "invalid choice: 'turbo'"),
    (["reproduce", "--procs", "0"], "--procs: must be an integer >= 1"),
    (["sweep", "--cost-ratio", "-1"], "--cost-ratio: must be a finite number >= 0"),
])
def test_bad_numbers_are_refused_before_anything_runs(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_out_naming_an_existing_file_is_refused(capsys, tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("keep me\n")
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--out", str(f)])
    assert e.value.code == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert f.read_text() == "keep me\n"


@pytest.mark.parametrize("argv, message", [
    (["generate", "--pair", "arith-llama", "--prompt", "1+1", "--rule", "chow", "--alpha", "nan"],
     "--alpha: expected a finite number, got 'nan'"),
    (["generate", "--pair", "arith-llama", "--prompt", "1+1", "--rule", "lossy", "--beta", "x"],
     "--beta: expected a number, got 'x'"),
    (["log", "--pair", "arith-llama", "--on-policy", "--rule", "chow", "--alpha", "inf"],
     "--alpha: expected a finite number, got 'inf'"),
])
def test_non_finite_rule_parameters_are_refused(argv, message, capsys, tmp_path):
    if argv[0] == "log":
        argv = [*argv, "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
