"""The ``specref`` command.

Each subcommand lives in its own module ``specref.cli.<name>`` exposing ``register(subparsers)``; a module
that is absent is simply not offered, so parts of the product can land independently. Registering must not
import torch or transformers: ``specref --help`` and every subcommand's ``--help`` answer at once.

Errors: bad input (the library's ``ValueError`` family, file and format errors, a missing optional
dependency) prints ONE line, ``specref CMD: error: ...``, and exits 2; ``--debug`` (or ``SPECREF_DEBUG=1``)
shows the traceback instead. Ctrl-C exits 130, a closed output pipe (``specref zoo --json | head``) exits
quietly. Warnings print as one line each.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import warnings

from specref import __version__

COMMANDS = ("reproduce", "generate", "zoo", "log", "evaluate", "sweep", "bench")

#: Exit status for bad input (argparse's own convention for usage errors).
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specref", description=__doc__.splitlines()[0],
        epilog="Run `specref COMMAND --help` for a command's options. Docs: README.md, docs/.")
    parser.add_argument("--version", action="version", version=f"specref {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (default: one line; also SPECREF_DEBUG=1)")
    parser.add_argument("--verbose", action="store_true",
                        help="show the model libraries' own progress bars and messages (default: quiet)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        modname = f"specref.cli.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        importlib.import_module(modname).register(sub)
    return parser


def _error_types() -> tuple[type[BaseException], ...]:
    """What counts as the user's error: bad values, bad or missing files, unreadable formats."""
    types: list[type[BaseException]] = [ValueError, OSError, ImportError]
    # Format errors of the libraries we read files with, where they do not derive from ValueError/OSError;
    # only from modules the command already imported (never import torch here just to name its error).
    for module, name in (("safetensors", "SafetensorError"), ("yaml", "YAMLError"),
                         ("pyarrow", "ArrowException"), ("torch", "OutOfMemoryError")):
        mod = sys.modules.get(module)
        err = getattr(mod, name, None) if mod is not None else None
        if isinstance(err, type) and issubclass(err, BaseException):
            types.append(err)
    return tuple(types)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, ImportError) and not isinstance(err, ModuleNotFoundError):
        return text
    if isinstance(err, ModuleNotFoundError):
        return (f"{text}; install the optional dependencies with `pip install \"specref[all]\"` "
                "(or the extra the docs name)")
    if type(err).__name__ == "OutOfMemoryError":
        return f"out of device memory ({text}); try a smaller --batch-size or max-new-tokens"
    return text


def _quiet_libraries(verbose: bool) -> None:
    """Model-loading progress bars and advisory messages on every command are noise unless asked for."""
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _one_line_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001 - warnings' signature
        stream = sys.stderr if file is None else file
        try:
            stream.write(f"specref: warning: {' '.join(str(message).split())}\n")
        except (OSError, ValueError):
            pass

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # subcommands that re-launch themselves need it
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    debug = args.debug or os.environ.get("SPECREF_DEBUG", "") not in ("", "0")
    _quiet_libraries(args.verbose)
    _one_line_warnings()
    try:
        if hasattr(args, "plugin"):  # the commands that take rules by name import the registering modules first
            from specref import plugins

            plugins.load(args.plugin)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"specref {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly. Point stdout at devnull so the interpreter's final
        # flush does not raise again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except _error_types() as err:
        if debug:
            raise
        # Bad input is the user's to fix: one clear line, not a traceback.
        print(f"specref {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
