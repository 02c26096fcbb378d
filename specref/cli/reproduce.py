"""``specref reproduce``: the main job - reproduce the paper's cost-quality comparison on a draft/target pair.

Default: the zoo translation pair in quick mode (a subset of the test split, a few alphas per method; a
few minutes on a 2-core CPU), offline. ``--full`` runs the whole test split and the full alpha grids;
``--task all --full --sweep all --device cuda --out results`` is the full reproduction of paper_repro.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from specref.options import add_reproduce_arguments, positive_int

DESCRIPTION = __doc__.splitlines()[0].split(": ", 1)[1]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("reproduce", help=DESCRIPTION, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_reproduce_arguments(p)
    p.add_argument("--procs", type=positive_int, default=1, metavar="N",
                   help="run the sweep data-parallel in N processes through torchrun (one per GPU with --device "
                        "cuda; gloo processes on a CPU); rows and summaries equal a one-process run's except "
                        "wall-clock columns. Same as `torchrun --nproc_per_node N -m specref.repro.distributed` "
                        "(default: 1, no torchrun)")
    p.set_defaults(func=run)


def _without_procs(argv: list[str]) -> list[str]:
    """The options after ``reproduce`` (or ``sweep``) with ``--procs N`` / ``--procs=N`` removed."""
    cmd = next((c for c in ("reproduce", "sweep") if c in argv), None)
    rest = argv[argv.index(cmd) + 1:] if cmd is not None else list(argv)
    out, skip = [], False
    for tok in rest:
        if skip:
            skip = False
        elif tok == "--procs":
            skip = True
        elif not tok.startswith("--procs="):
            out.append(tok)
    return out


def _device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; a named device that is missing is an error."""
    from specref.loading import resolve_device

    return resolve_device(name)


def _relaunch(args: argparse.Namespace, device: str) -> int:
    import subprocess

    n = args.procs
    if device.startswith("cuda"):
        import torch

        have = torch.cuda.device_count()
        if ":" in args.device:
            raise ValueError("--procs with --device cuda gives each process its own GPU: use --device cuda, "
                             f"not {args.device}")
        device = "cuda"
        if have < n:
            raise ValueError(f"--procs {n} needs {n} GPUs, {have} visible")
    if not getattr(args, "argv", None):  # without the command line every other option would be lost
        raise ValueError("--procs re-launches the command line: run it through `specref` (specref.cli.main)")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "-m", "specref.repro.distributed", *_without_procs(args.argv), "--device", device]
    print(f"specref reproduce: {n} processes: {' '.join(cmd[1:])}", file=sys.stderr)
    return subprocess.run(cmd).returncode


def _sharded_relaunch(args: argparse.Namespace, device: str) -> int:
    """``--tp-size N``: check what can be checked without weights, then run the sweep as N torchrun processes
    sharing one sharded target (:mod:`specref.sharding`; every rank decodes every batch, rank 0 writes)."""
    from specref import sharding
    from specref.loading import load_config
    from specref.repro.setups import check_built, select_setups

    n = args.tp_size
    if getattr(args, "procs", 1) > 1:
        raise ValueError(f"--procs {args.procs} with --tp-size {n}: a sweep is either spread over processes "
                         "(--procs) or run once over a sharded target (--tp-size), not both")
    sharding.check_tp_engine(args.engine, n)
    sharding.check_tp_device(device, n)
    if args.standin:
        raise ValueError(f"--tp-size {n} shards a loaded target; --standin builds its models in the run "
                         "(use --tp-size 1)")
    setups = select_setups(args.task, args.pair, args.config, args.standin)
    check_built(setups, args.standin)
    for setup in setups:
        sharding.check_tp_config(load_config(setup.target, "target"), n)
    if not getattr(args, "argv", None):  # without the command line every other option would be lost
        raise ValueError("--tp-size re-launches the command line: run it through `specref` (specref.cli.main)")
    # `specref sweep` is reproduce with another default --sweep: the workers get it spelled out
    return sharding.relaunch(_without_procs(args.argv), "specref.repro.distributed", n, ["--sweep", args.sweep])


def run(args: argparse.Namespace) -> int:
    from specref.repro.heads import register_heads
    from specref.repro.reproduce import config_from_args, reproduce

    t0 = time.perf_counter()
    head, named = register_heads(args.head)  # bad heads are refused before any process starts
    cfg = config_from_args(args, heads=tuple(named))
    device = _device(args.device)
    if args.tp_size > 1:
        return _sharded_relaunch(args, device)
    if getattr(args, "procs", 1) > 1:
        return _relaunch(args, device)
    if args.threads is not None or device == "cpu":
        import torch

        torch.set_num_threads(args.threads or 1)
    from specref.repro.setups import check_built, select_setups

    setups = select_setups(args.task, args.pair, args.config, args.standin)
    check_built(setups, args.standin)
    from specref.repro.hf import HFBackend

    for setup in setups:
        print(f"specref reproduce: {setup.name} ({setup.task.name}, metric {setup.task.metric_name}) on "
              f"{device}, engine {args.engine}, {'full' if cfg.full else 'quick'} mode, sweep {cfg.sweep}",
              file=sys.stderr)
        backend = HFBackend.from_setup(setup, device=device, head=head, engine=args.engine)
        result = reproduce(setup, args.out, cfg, backend=backend, device=device, head=head, named_heads=named)
        print(result.table)
        for claim in result.claims:
            print(f"claim: {claim.claim}: {claim.verdict} ({claim.evidence})")
        rep = result.report
        print(f"\n{rep.decoded} decodes, {rep.written} new rows, {rep.skipped} rows already in "
              f"{result.out_dir / 'points.csv'}")
        for msg in rep.nondeterministic:
            print(f"warning: {msg}", file=sys.stderr)
        print("wrote: " + ", ".join(str(f) for f in result.files))
    print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0
