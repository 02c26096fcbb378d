"""Rules from outside specref for the command line: modules that call :func:`specref.rules.register`.

A rule registered in Python is usable at once by name (``make_decoder``, ``reproduce``, ``evaluate``). A
command-line run is a new process, so it imports the modules that register rules first, from three places:

* ``--plugin MODULE`` on the decoding and evaluation commands (repeatable; ``MODULE`` is importable, e.g.
  a module of the user's package or a file's folder on ``PYTHONPATH``);
* ``SPECREF_PLUGINS``: comma-separated module names, for every such command;
* installed packages' entry points of group ``specref.rules`` (``[project.entry-points."specref.rules"]``
  in their pyproject.toml): a module, imported, or a function, called with no arguments.

Nothing here imports torch, so ``--help`` stays instant; the plugin modules themselves usually do.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from importlib.metadata import entry_points

__all__ = ["ENTRY_POINT_GROUP", "ENV_VAR", "load"]

ENTRY_POINT_GROUP = "specref.rules"
ENV_VAR = "SPECREF_PLUGINS"

_loaded: set[str] = set()


def load(modules: Sequence[str] = ()) -> tuple[str, ...]:
    """Import the plugin modules named, those of ``SPECREF_PLUGINS`` and the ``specref.rules`` entry points,
    each once per process; returns what was loaded. A module that cannot be imported is an ImportError
    naming it (the command line shows it as one line)."""
    names = [*modules, *(m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip())]
    done: list[str] = []
    for name in dict.fromkeys(names):
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ImportError(f"plugin module {name!r} could not be imported: {err}") from err
        _loaded.add(name)
        done.append(name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        key = f"entry point {ep.name} = {ep.value}"
        if key in _loaded:
            continue
        try:
            obj = ep.load()
        except ImportError as err:
            raise ImportError(f"plugin {key!r} could not be loaded: {err}") from err
        if callable(obj):
            obj()
        _loaded.add(key)
        done.append(key)
    return tuple(done)
