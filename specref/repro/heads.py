"""Several learned heads in one sweep: ``--head PATH`` is the ``learned`` method, ``--head NAME=PATH`` the
method ``learned_NAME`` (repeatable), so heads are compared with each other and with the fixed rules on the
same examples, seeds and rows.

A named head is a registered rule (:func:`specref.rules.register`): usable by name in ``--methods`` and
``--alphas``, swept over the ``learned`` method's alpha grids, labelled ``SpecCascade [Learned NAME]``. Named
heads join the sweep whether or not ``--methods`` lists them (naming one is asking for it). Every process that
decodes (the torchrun workers too) registers them from the same option, before the options are checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from specref import rules

__all__ = ["PREFIX", "HeadSpecs", "register_heads"]

#: the method key of a named head is PREFIX + NAME
PREFIX = "learned_"
#: rule names this module registered in this process, and the head folder each came from (only these may be
#: replaced by a later registration)
_MINE: dict[str, str] = {}


class HeadSpecs:
    """The ``--head`` values, parsed: the unnamed head's path (or None) and ``{method key: path}``."""

    def __init__(self, values: Sequence[str] | str | None) -> None:
        if values is None:
            values = []
        elif isinstance(values, str):
            values = [values]
        self.unnamed: str | None = None
        self.named: dict[str, str] = {}
        for value in values:
            name, sep, path = str(value).partition("=")
            if not sep:
                if self.unnamed is not None:
                    raise ValueError(f"two unnamed --head values ({self.unnamed!r}, {value!r}); name the others "
                                     "NAME=PATH (method learned_NAME)")
                self.unnamed = str(value)
                continue
            if not name.isidentifier() or not path:
                raise ValueError(f"--head {value!r}: expected NAME=PATH with NAME a plain identifier (letters, "
                                 "digits, _) and a non-empty PATH")
            key = PREFIX + name
            if key in self.named:
                raise ValueError(f"two heads are named {name!r}")
            self.named[key] = path


def register_heads(values: Sequence[str] | str | None) -> tuple[Any, dict[str, Any]]:
    """Load the ``--head`` values: ``(the unnamed head or None, {method key: head})``, each named head
    registered as the rule of its method key. Registering a key this module registered before (a process that
    parses the options twice, or tests) replaces that registration; a rule of that name registered elsewhere
    (a --plugin) is an error, never replaced."""
    from specref.loading import load_head

    specs = HeadSpecs(values)
    unnamed = load_head(specs.unnamed) if specs.unnamed is not None else None
    named: dict[str, Any] = {}
    grid = _learned_grid()
    for key, path in specs.named.items():
        head = load_head(path)
        named[key] = head
        if key in rules.NAMES():
            if key not in _MINE:
                raise ValueError(f"--head {key[len(PREFIX):]}={path}: a rule named {key!r} is already registered "
                                 "(by a --plugin?); choose another NAME")
            rules.unregister(key)

        def factory(alpha: float | None = None, _head: Any = head, **options: Any) -> rules.Rule:
            return rules.LearnedRule(_head, alpha=alpha, **options)

        factory.takes_alpha = True  # type: ignore[attr-defined]
        rules.register(key, factory, label=f"SpecCascade [Learned {key[len(PREFIX):]}]",
                       alpha_meaning=rules.ALPHA_MEANING["learned"], quick=grid[0], full=grid[1])
        _MINE[key] = path
    return unnamed, named


def _learned_grid() -> tuple[tuple[float, ...], tuple[float, ...]]:
    from specref.repro.methods import get_method

    spec = get_method("learned")
    return tuple(a for a in spec.quick if a is not None), tuple(a for a in spec.full if a is not None)
