"""``specref bench``: the benchmark suite of ``bench/suite.py``: one run, every number side by side.

Trains a realistic draft/target pair on the Python sources on the machine, then measures tokens/s and
per-request latency of specref's decoder (target-only, SpecDecode, SpecCascade [token_v3]) against
transformers' ``generate`` and assisted generation at batch sizes 1, 8 and 32, the share of round time
outside the models' forwards, the target forward against the memory-bandwidth floor, and data-parallel
sweep scaling; writes ``<out>.json`` and ``<out>.md``. See ``docs/performance.md``. ``--smoke`` runs the
whole pipeline on a CPU with tiny models in under a minute.

The suite lives in the repository (``bench/suite.py``), not in the installed package: run this command
from a source checkout.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

DESCRIPTION = "benchmark suite: decode speed vs transformers, overhead, bandwidth floor, data-parallel scaling"


def _suite() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "suite.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("specref_bench_suite", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def register(subparsers: Any) -> None:
    suite = _suite()
    parents = [suite.build_parser(add_help=False)] if suite is not None else []
    p = subparsers.add_parser("bench", help=DESCRIPTION, description=__doc__, parents=parents,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda args: _run(suite, args))


def _run(suite: Any, args: argparse.Namespace) -> int:
    if suite is None:
        raise FileNotFoundError("specref bench needs bench/suite.py from a source checkout of specref")
    return suite.run(args)
