"""torch and specref's decoder, imported on first use.

``specref --help`` builds the suite's parser for ``specref bench``, which imports the bench modules; they take
torch, ``torch.nn.functional``, ``make_decoder`` and ``RoundProfiler`` from here so that the help does not pay
for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any


class _Lazy:
    """A module imported on first attribute access."""

    def __init__(self, name: str) -> None:
        self._name, self._mod = name, None

    def __getattr__(self, attr: str) -> Any:
        if self._mod is None:
            self._mod = importlib.import_module(self._name)
        return getattr(self._mod, attr)


torch: Any = _Lazy("torch")
F: Any = _Lazy("torch.nn.functional")


def make_decoder(*args: Any, **kwargs: Any) -> Any:
    from specref.decode import make_decoder as make

    return make(*args, **kwargs)


def RoundProfiler(device: Any) -> Any:  # noqa: N802 - stands for the class
    from specref.decode.profile import RoundProfiler as Profiler

    return Profiler(device)
