"""The methods of the paper's comparisons and the alpha grids that trace their cost-quality curves.

Every grid spans its rule's whole range, from SpecDecode-like (always defer) to draft-like (never defer),
so each curve joins the two references (THEORY.md sections 2-4; comments give each endpoint):

=====================  ===========  ===================================================================
paper name             key          knob (``alpha`` column) and range
=====================  ===========  ===================================================================
SpecDecode             specdecode   none (lossless)
SpecDecode [Lossy]     lossy        alpha in [0, 1): 0 is SpecDecode, -> 1 accepts every draft
SpecCascade [Chow]     chow         defer iff max q < 1 - alpha; alpha 0 ~ always, 1 never
SpecCascade [Diff]     diff         defer iff max q < max p - alpha; -1 always, 1 never
SpecCascade [OPT]      opt          defer iff max q < max p - alpha TV; at T = 1, |max p - max q| <= TV,
                                    so -1 always and 1 never defers (ties aside)
SpecCascade [TokenV1]  token_v1     defer v iff q(v) < max p - alpha; -1 always, 1 never
SpecCascade [TokenV2]  token_v2     defer v iff p(v) < max p - alpha; < 0 always, 1 never
SpecCascade [TokenV3]  token_v3     defer v iff p(v) < (1 - alpha) max p; < 0 always, 1 never
SpecCascade [Learned]  learned      head-dependent: estimated loss gap vs alpha TV (or score margin)
TokenCascade [Chow]    token_cascade sequential Chow: the target runs only on deferred tokens
SeqCascade [Chow]      seq_cascade  threshold on the draft answer's mean token probability
BiLD                   bild         fallback threshold on max q (alpha); rollback threshold in options
Ensemble               ensemble     pi = (1 - alpha) p + alpha q (alpha = 1 - weight)
=====================  ===========  ===================================================================

``target`` and ``draft`` are the references every sweep also decodes. Quick grids are 3-4 points placed
where the curves bend on the zoo pairs; full grids are the ones the committed results use.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MethodSpec",
    "METHODS",
    "DEFAULT_METHODS",
    "ROBUSTNESS_METHODS",
    "all_keys",
    "get_method",
    "canonical_options",
    "parse_alpha_overrides",
    "order_key",
]


def _lin(lo: float, hi: float, n: int) -> tuple[float, ...]:
    """``n`` evenly spaced values, rounded so they print and key cleanly."""
    return tuple(round(lo + (hi - lo) * i / (n - 1), 6) for i in range(n))


@dataclass(frozen=True)
class MethodSpec:
    """A method of the comparison.

    Attributes:
        key: the decoder's method name and the ``method`` column of the CSV.
        label: the paper's name (the ``label`` column; curves are grouped by it).
        param: what the ``alpha`` column means for this method ("" when it has no knob).
        quick: alphas for the quick mode; ``()`` for methods without a knob.
        full: alphas for ``--full``.
        options: extra decoder options swept jointly with alpha, as a tuple of dicts (one curve).
        uses_gamma: False when the block size does not change the method (its rows are shared across a
            gamma sweep, not re-decoded).
        needs_head: True for ``learned``, which is skipped without a trained head.
    """

    key: str
    label: str
    param: str
    quick: tuple[float, ...] = ()
    full: tuple[float, ...] = ()
    options: tuple[dict[str, Any], ...] = field(default=({},))
    uses_gamma: bool = True
    needs_head: bool = False

    def grid(self, full: bool) -> tuple[float | None, ...]:
        """The alphas to decode (``(None,)`` for methods without a knob)."""
        if not self.param:
            return (None,)
        return self.full if full else self.quick


METHODS: dict[str, MethodSpec] = {
    m.key: m
    for m in (
        MethodSpec("target", "Target", "", uses_gamma=False),
        MethodSpec("draft", "Draft", "", uses_gamma=False),
        MethodSpec("specdecode", "SpecDecode", ""),
        MethodSpec("lossy", "SpecDecode [Lossy]", "1 - acceptance scale",
                   quick=(0.5, 0.8, 0.95), full=(*_lin(0.0, 0.9, 10), 0.95, 0.99)),
        MethodSpec("chow", "SpecCascade [Chow]", "defer iff max q < 1 - alpha",
                   quick=(0.2, 0.5, 0.8), full=_lin(0.0, 1.0, 11)),
        MethodSpec("diff", "SpecCascade [Diff]", "defer iff max q < max p - alpha",
                   quick=(-0.1, 0.1, 0.3), full=(-1.0, -0.5, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.5, 1.0)),
        MethodSpec("opt", "SpecCascade [OPT]", "defer iff max q < max p - alpha TV",
                   quick=(-0.5, 0.0, 0.5), full=_lin(-1.0, 1.0, 9)),
        MethodSpec("token_v1", "SpecCascade [TokenV1]", "defer v iff q(v) < max p - alpha",
                   quick=(-0.1, 0.1, 0.3), full=(-1.0, -0.5, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.5, 1.0)),
        MethodSpec("token_v2", "SpecCascade [TokenV2]", "defer v iff p(v) < max p - alpha",
                   quick=(0.1, 0.3, 0.6), full=(-1.0, 0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)),
        MethodSpec("token_v3", "SpecCascade [TokenV3]", "defer v iff p(v) < (1 - alpha) max p",
                   quick=(0.3, 0.6, 0.9), full=(-1.0, *_lin(0.0, 1.0, 11))),
        MethodSpec("learned", "SpecCascade [Learned]", "learned loss gap vs alpha TV",
                   quick=(-0.2, 0.0, 0.2), full=(-2.0, -1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0, 2.0),
                   needs_head=True),
        MethodSpec("token_cascade", "TokenCascade [Chow]", "defer iff max q < 1 - alpha",
                   quick=(0.2, 0.5, 0.8), full=_lin(0.0, 1.0, 11), uses_gamma=False),
        # alpha = 1 would be a threshold of log(0); 0.99 already never defers on the zoo pairs.
        MethodSpec("seq_cascade", "SeqCascade [Chow]", "defer iff mean token prob < 1 - alpha",
                   quick=(0.2, 0.5, 0.8), full=(*_lin(0.0, 0.9, 10), 0.99), uses_gamma=False),
        MethodSpec("bild", "BiLD", "fallback iff max q < 1 - alpha",
                   quick=(0.2, 0.5, 0.8), full=_lin(0.0, 1.0, 6),
                   options=({"rollback": 2.0}, {"rollback": 5.0}), uses_gamma=False),
        MethodSpec("ensemble", "Ensemble", "pi = (1 - alpha) p + alpha q",
                   quick=(0.25, 0.5, 0.75), full=_lin(0.0, 1.0, 11)),
    )
}

#: What ``specref reproduce`` runs unless told otherwise: the paper's Table-2 rows plus the references.
#: ``learned`` joins automatically when a head is given.
DEFAULT_METHODS: tuple[str, ...] = (
    "target", "draft", "specdecode", "lossy", "chow", "diff", "opt", "token_v1", "token_v2", "token_v3",
    "token_cascade", "seq_cascade", "bild",
)

#: The robustness sweeps (temperature, gamma, top-p) compare the paper's main contenders only.
ROBUSTNESS_METHODS: tuple[str, ...] = ("target", "draft", "specdecode", "lossy", "opt", "token_v3")


def get_method(key: str) -> MethodSpec:
    """The method ``key``: a built-in one of :data:`METHODS`, or a rule added with
    :func:`specref.rules.register` (its sweep comes from the registration)."""
    if key in METHODS:
        return METHODS[key]
    from specref import rules  # torch: only reached for a name that is not built in

    grid = rules.sweep_grid(key) if isinstance(key, str) else None
    if grid is None:
        raise ValueError(f"unknown method {key!r}; choose from {', '.join(all_keys())} "
                         "(or --plugin MODULE to register your own)")
    return MethodSpec(key, grid.label, grid.param, quick=grid.quick, full=grid.full)


def all_keys() -> tuple[str, ...]:
    """Every method key: the built-in ones, then the registered rules (when specref.rules is loaded)."""
    rules = sys.modules.get("specref.rules")  # nothing registered a rule unless the module is loaded
    extra = () if rules is None else tuple(n for n in rules.NAMES() if rules.sweep_grid(n) is not None)
    return (*METHODS, *(k for k in extra if k not in METHODS))


def order_key(key: str) -> int:
    """Position of a method in the paper-style table order (unknown methods last)."""
    keys = list(METHODS)
    return keys.index(key) if key in keys else len(keys)


def canonical_options(options: dict[str, Any] | None) -> str:
    """The ``options`` column: sorted compact JSON, or "" for none (so keys compare as strings)."""
    if not options:
        return ""
    return json.dumps(options, sort_keys=True, separators=(",", ":"))


def parse_alpha_overrides(text: str | None, methods: tuple[str, ...]) -> dict[str, tuple[float, ...]]:
    """Parse ``--alphas``: ``"0,0.5,1"`` (every knob-taking method) or ``"chow=0,0.5;token_v3=0.2,0.8"``.

    Alphas must be finite numbers or ``inf``/``-inf``; methods named must be selected.
    """
    if not text:
        return {}
    out: dict[str, tuple[float, ...]] = {}

    def numbers(s: str) -> tuple[float, ...]:
        try:
            vals = tuple(float(x) for x in s.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"--alphas: cannot read numbers from {s!r}") from None
        if not vals or any(v != v for v in vals):
            raise ValueError(f"--alphas: need at least one number, got {s!r}")
        return vals

    if "=" not in text:
        vals = numbers(text)
        return {m: vals for m in methods if get_method(m).param}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, _, vals = part.partition("=")
        name = name.strip()
        spec = get_method(name)
        if not spec.param:
            raise ValueError(f"--alphas: method {name!r} has no alpha")
        if name not in methods:
            raise ValueError(f"--alphas: method {name!r} is not among the selected methods")
        out[name] = numbers(vals)
    return out
