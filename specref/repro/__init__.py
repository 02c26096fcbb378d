"""Reproducing the paper: alpha sweeps, cost-quality curves, Table-2 summaries and plots.

* :mod:`~specref.repro.methods` - the compared methods, their paper names and alpha grids;
* :mod:`~specref.repro.runner` - planning points and decoding the missing ones (resumable);
* :mod:`~specref.repro.store` - the tidy CSV, append-only with validated reads;
* :mod:`~specref.repro.summary` - Table-2 numbers with explicit tie and interpolation rules;
* :mod:`~specref.repro.report`, :mod:`~specref.repro.plot` - tables and figures;
* :mod:`~specref.repro.setups` - zoo pairs, the paper's setups (YAML) and random-init stand-ins;
* :mod:`~specref.repro.hf` - the backend over :mod:`specref.decode`;
* :mod:`~specref.repro.reproduce` - the main job as one function (``specref reproduce`` wraps it).

Only the pure parts are imported here; model code loads on first use.
"""

from specref.repro.methods import DEFAULT_METHODS, METHODS, MethodSpec, get_method
from specref.repro.runner import ROBUSTNESS, Point, Setting, plan_points
from specref.repro.store import COLUMNS, KEY_COLUMNS, PointStore
from specref.repro.summary import CurvePoint, cost_to_match, frontier, quality_within, summarize

__all__ = [
    "COLUMNS",
    "DEFAULT_METHODS",
    "KEY_COLUMNS",
    "METHODS",
    "ROBUSTNESS",
    "CurvePoint",
    "MethodSpec",
    "Point",
    "PointStore",
    "Setting",
    "cost_to_match",
    "frontier",
    "get_method",
    "plan_points",
    "quality_within",
    "summarize",
]
