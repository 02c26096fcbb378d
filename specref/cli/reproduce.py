"""``specref reproduce``: the main job - reproduce the paper's cost-quality comparison on a draft/target pair.

Default: the zoo translation pair in quick mode (a subset of the test split, a few alphas per method; a
few minutes on a 2-core CPU), offline. ``--full`` runs the whole test split and the full alpha grids;
``--task all --full --sweep all --device cuda --out results`` is the full reproduction of paper_repro.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from specref.cli._args import (
    add_cost_ratio,
    add_device,
    add_engine,
    add_plugins,
    add_progress,
    int_tuple,
    nonneg_float,
    out_dir,
    positive_int,
    top_p,
)

DESCRIPTION = __doc__.splitlines()[0].split(": ", 1)[1]


def add_arguments(p: argparse.ArgumentParser, default_sweep: str = "main") -> None:
    """The options shared by ``reproduce`` and ``sweep``."""
    g = p.add_argument_group("what to run")
    g.add_argument("--task", default=None,
                   help="zoo task: translation (default), summarization, reasoning, or 'all' (every zoo pair)")
    g.add_argument("--pair", default=None, help="zoo pair (default: the task's pair)")
    g.add_argument("--config", default=None, metavar="YAML",
                   help="a paper setup from configs/paper/*.yaml instead of a zoo pair (default: the zoo pair)")
    g.add_argument("--standin", action="store_true",
                   help="replace the models by tiny random-init ones (pipeline check; numbers are meaningless)")
    g.add_argument("--full", action="store_true",
                   help="whole test split, full alpha grids, 3 seeds (default: quick mode, a subset)")
    g.add_argument("--sweep", default=default_sweep,
                   choices=("main", "robustness", "temperature", "gamma", "top_p", "all"),
                   help=f"main setting, robustness sweeps (temperature, gamma, top-p), one factor, or all "
                        f"(default: {default_sweep})")
    g.add_argument("--methods", default=None,
                   help="comma-separated method keys, or rules registered by a --plugin; target and draft are "
                        "always included (default: the setup's list; every key: specref.repro.methods)")
    g.add_argument("--alphas", default=None,
                   help="alphas for every method ('0,0.5,1') or per method ('chow=0,0.5;token_v3=0.2,0.8') "
                        "(default: each method's grid)")
    g.add_argument("--head", default=None, metavar="PATH",
                   help="trained deferral head: adds SpecCascade [Learned] (default: none)")
    add_plugins(g)
    s = p.add_argument_group("decoding")
    s.add_argument("--temperature", type=nonneg_float, default=None,
                   help="main setting's temperature, 0 = greedy (default: the setup's, 1 for the zoo)")
    s.add_argument("--gamma", type=positive_int, default=None,
                   help="main setting's block size (default: the setup's, 5 for the zoo)")
    s.add_argument("--top-p", type=top_p, default=None, help="main setting's top-p (default: none)")
    s.add_argument("--seed", type=int_tuple, default=None, metavar="N[,N...]",
                   help="trial seed(s), averaged in the summary (default 0; --full: 0,1,2)")
    s.add_argument("--max-examples", type=positive_int, default=None,
                   help="test examples, evenly spaced over the split (default: the mode's, all with --full)")
    s.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="new tokens per example (default: the task's)")
    s.add_argument("--batch-size", type=positive_int, default=None,
                   help="examples per decoder call (default: 16 quick; --full: 32 on a CPU, 256 on a GPU)")
    s.add_argument("--split", default=None, choices=("train", "validation", "test"),
                   help="data split (default: test)")
    add_device(s)
    add_engine(s)
    s.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default on cpu: 1 - the zoo models are too small to gain from more, "
                        "and extra threads contend badly on a busy machine)")
    c = p.add_argument_group("cost and summary")
    add_cost_ratio(c, "the pair card's, else the per-step parameter ratio")
    c.add_argument("--axis", default=None,
                   choices=("latency_model", "latency_wall", "target_calls_per_token", "rejection_rate"),
                   help="cost axis the summary table leads with (default: latency_model, deterministic)")
    c.add_argument("--match-tol", type=nonneg_float, default=None,
                   help="a method 'matches' the target at quality >= target - TOL, replacing the noise band "
                        "(default: the target's noise band, 2 standard errors; see specref.repro.summary)")
    c.add_argument("--no-interpolate", action="store_true",
                   help="Table 2 from measured points only (default: interpolate between frontier points)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=out_dir, default=Path("specref-out"),
                   help="output folder, created if missing (default: ./specref-out)")
    add_progress(o)
    o.add_argument("--no-plot", action="store_true", help="skip the PNG plots (default: drawn)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("reproduce", help=DESCRIPTION, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--procs", type=positive_int, default=1, metavar="N",
                   help="run the sweep data-parallel in N processes through torchrun (one per GPU with --device "
                        "cuda; gloo processes on a CPU); rows and summaries equal a one-process run's except "
                        "wall-clock columns. Same as `torchrun --nproc_per_node N -m specref.repro.distributed` "
                        "(default: 1, no torchrun)")
    p.set_defaults(func=run)


def _without_procs(argv: list[str]) -> list[str]:
    """The options after ``reproduce`` with ``--procs N`` / ``--procs=N`` removed."""
    rest = argv[argv.index("reproduce") + 1:] if "reproduce" in argv else list(argv)
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


def repro_config(args: argparse.Namespace) -> Any:
    """The :class:`~specref.repro.reproduce.ReproConfig` that the options of :func:`add_arguments` ask for."""
    from specref.repro.reproduce import config_from_text

    return config_from_text(
        args.methods, args.alphas, full=args.full, sweep=args.sweep, temperature=args.temperature,
        gamma=args.gamma, top_p=args.top_p, seeds=args.seed, split=args.split, max_examples=args.max_examples,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, cost_ratio=args.cost_ratio,
        axis=args.axis, tol=args.match_tol, interpolate=not args.no_interpolate,
        progress=not args.no_progress, plots=not args.no_plot,
    )


def run(args: argparse.Namespace) -> int:
    from specref.repro.reproduce import reproduce

    t0 = time.perf_counter()
    cfg = repro_config(args)
    device = _device(args.device)
    if getattr(args, "procs", 1) > 1:
        return _relaunch(args, device)
    if args.threads is not None or device == "cpu":
        import torch

        torch.set_num_threads(args.threads or 1)
    from specref.loading import load_head
    from specref.repro.setups import check_built, select_setups

    head = load_head(args.head) if args.head is not None else None
    setups = select_setups(args.task, args.pair, args.config, args.standin)
    check_built(setups, args.standin)
    from specref.repro.hf import HFBackend

    for setup in setups:
        print(f"specref reproduce: {setup.name} ({setup.task.name}, metric {setup.task.metric_name}) on "
              f"{device}, engine {args.engine}, {'full' if cfg.full else 'quick'} mode, sweep {cfg.sweep}",
              file=sys.stderr)
        backend = HFBackend.from_setup(setup, device=device, head=head, engine=args.engine)
        result = reproduce(setup, args.out, cfg, backend=backend, device=device, head=head)
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
