"""``specref sweep``: the paper's robustness sweeps (temperature, gamma, top-p) of the cost-quality curves.

The same machinery and options as ``specref reproduce``, defaulting to ``--sweep robustness``: one factor at a
time around the main setting (T = 1, gamma = 5, no top-p): T in {0, 0.1, 0.5, 1}, gamma in {3, 5, 7},
top-p in {0.5, 0.9, none}, for the paper's main contenders. Results share the output folder (and CSV) of
``specref reproduce``, so points already decoded there are not decoded again.
"""

from __future__ import annotations

import argparse
from typing import Any

from specref.cli.reproduce import run
from specref.options import add_reproduce_arguments

DESCRIPTION = "robustness sweeps (temperature, gamma, top-p) of the cost-quality curves"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sweep", help=DESCRIPTION, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_reproduce_arguments(p, default_sweep="robustness")
    p.set_defaults(func=run)
