"""Data-parallel sweeps with ``torch.distributed``: the same CSV as one process, decoded on N devices.

Launch with ``torchrun`` (one process per device); every option of ``specref reproduce`` applies::

    torchrun --nproc_per_node 2 -m specref.repro.distributed --config setup.yaml --device cuda --out results
    torchrun --nproc_per_node 2 -m specref.repro.distributed --standin --device cpu --out /tmp/x   # gloo, CPU

How it stays exactly equal to a single-process run:

1. every rank builds the same plan (:func:`specref.repro.runner.planned_decodes`: the decodes
   ``run_points`` would run, in its order, skipping rows already in the CSV) and the same batches
   (:meth:`specref.repro.hf.HFBackend.batch_plan`: examples sorted by prompt length, cut every batch size);
2. the work items are (decode, batch) pairs - (method, alpha, seed, example chunk) - assigned to ranks by a
   deterministic longest-first balance; each rank decodes its items on its own device (``cuda:LOCAL_RANK``);
   a batch decoded alone is the very batch the single process decodes (same rows, same order, same width,
   per-example seeds), so its predictions and counts are identical;
3. rank 0 gathers the items (``gather_object`` over gloo), merges each decode's batches in batch order -
   predictions to their examples, counts summed in the order the single process sums them, so float sums
   round identically - and runs the ordinary :func:`specref.repro.reproduce.reproduce` with a backend that
   serves the merged results. Rows, their order and every number equal the single-process run's, except the
   wall-clock columns (``wall_s``, ``baseline_wall_s``, ``latency_wall``, ``cost_ratio_measured``: sums of
   per-batch times over the devices) and the run's provenance (``run_id``, ``time_utc``).

``--timing-json PATH`` writes per-rank decode times (the data-parallel scaling measurement of
``bench/suite.py``). Without ``torchrun`` (no ``WORLD_SIZE``) it runs as one process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from specref.repro.backend import DecodeOutput, DecodeRequest

__all__ = ["MergedBackend", "assign", "main", "merge_outputs", "request_key", "run_distributed"]

#: Relative cost of a decode by method, for balancing work items (only the balance depends on it).
_WEIGHT = {"target": 1.0, "draft": 0.3}


def request_key(req: DecodeRequest) -> str:
    """A hashable, canonical identity of a decode request."""
    d = {k: getattr(req, k) for k in ("method", "alpha", "gamma", "temperature", "top_p", "seed",
                                      "max_new_tokens", "batch_size")}
    d["options"] = req.options
    return json.dumps(d, sort_keys=True, default=str)


def assign(costs: Sequence[float], world: int) -> list[int]:
    """Rank of each item: longest first onto the least-loaded rank (ties: lowest index). Deterministic."""
    load = [0.0] * world
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda k: (load[k], k))
        owner[i] = r
        load[r] += costs[i]
    return owner


def merge_outputs(parts: Sequence[DecodeOutput], chunks: Sequence[Sequence[int]], n: int) -> DecodeOutput:
    """One decode's output from its batches' outputs (in batch order), as the single process sums them."""
    preds = [""] * n
    tokens, target, draft, drafted, rejected, deferred, positions, wall = 0, 0, 0, 0, 0, 0.0, 0, 0.0
    for out, chunk in zip(parts, chunks):
        for i, text in zip(chunk, out.predictions):
            preds[i] = text
        tokens += out.tokens
        target += out.target_calls
        draft += out.draft_calls
        drafted += out.drafted
        rejected += out.rejected
        deferred += out.deferrals
        positions += out.positions
        wall += 0.0 if math.isnan(out.wall_s) else out.wall_s
    return DecodeOutput(predictions=preds, tokens=tokens, target_calls=target, draft_calls=draft, drafted=drafted,
                        rejected=rejected, deferrals=deferred, positions=positions,
                        wall_s=wall if wall > 0 else math.nan)


class MergedBackend:
    """Serves decodes computed beforehand (by the ranks) to the ordinary single-process sweep code."""

    def __init__(self, real: Any, results: dict[str, DecodeOutput]) -> None:
        self.device = real.device
        self.head = getattr(real, "head", None)
        self._c = real.cost_ratio()
        self.results = results

    def cost_ratio(self) -> tuple[float, str]:
        return self._c

    def warmup(self) -> None:
        pass

    def decode(self, request: DecodeRequest, examples: list[Any]) -> DecodeOutput:
        key = request_key(request)
        if key not in self.results:
            raise RuntimeError(f"decode {key} was not planned by the data-parallel runner")
        return self.results[key]


def _dist() -> tuple[Any, int, int, int]:
    """(torch.distributed or None, rank, world size, local rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        # gloo carries only Python objects here: each rank decodes on its own device, nothing else is shared
        dist.init_process_group("gloo")
    return dist, dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def run_distributed(setup: Any, out: str, cfg: Any, device: str, head: Any = None, engine: str = "plain",
                    backend: Any = None, tp_size: int = 1,
                    named_heads: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Decode ``setup``'s pending sweep across the ranks; on rank 0 write it exactly as ``reproduce`` would.

    ``tp_size`` > 1: the ranks hold shards of one target (:mod:`specref.sharding`), so every rank decodes every
    item together with the others (their forwards meet in the target's collectives) and rank 0 writes its own
    results, once the ranks' predictions are checked to be identical.

    Returns ``(ReproResult or None on other ranks, timing)``. ``backend`` (tests) replaces the HF backend.
    """
    from pathlib import Path

    from specref.repro.reproduce import reproduce, resolve_settings, select_examples, sweep_plan
    from specref.repro.runner import RunInfo, planned_decodes, request_for
    from specref.repro.store import PointStore

    dist, rank, world, _ = _dist()
    t_start = time.perf_counter()
    r = resolve_settings(setup, cfg, device)
    examples = select_examples(setup.task.load(r["split"]), r["max_examples"])
    if not examples:
        raise ValueError(f"task {setup.task.name!r} has no {r['split']} examples")
    if backend is None:
        from specref.repro.hf import HFBackend

        backend = HFBackend.from_setup(setup, device=device, head=head, engine=engine, tp_size=tp_size)
    elif head is not None:
        backend.head = head
    points, _ = sweep_plan(r, cfg, head is not None or getattr(backend, "head", None) is not None)
    info = RunInfo(task=setup.task, pair=setup.pair, split=r["split"], examples=examples,
                   max_new_tokens=r["max_new_tokens"], batch_size=r["batch_size"], cost_ratio=0.0,
                   cost_ratio_source="")
    store = PointStore(Path(out) / setup.folder / "points.csv")
    todo = planned_decodes(store.keys(), info, points)
    requests = [request_for(p, info) for p in todo]
    plan = getattr(backend, "batch_plan", None)
    chunks = plan(examples, info.batch_size) if plan is not None else [list(range(len(examples)))]
    items = [(i, c) for i in range(len(requests)) for c in range(len(chunks))]
    costs = [_WEIGHT.get(requests[i].method, 1.5) * len(chunks[c]) for i, c in items]
    owner = [rank] * len(items) if tp_size > 1 else assign(costs, world)
    mine = [it for it, o in zip(items, owner) if o == rank]
    backend.warmup()
    t0 = time.perf_counter()
    done: dict[tuple[int, int], DecodeOutput] = {}
    for i, c in mine:
        done[(i, c)] = backend.decode(requests[i], [examples[j] for j in chunks[c]])
    decode_s = time.perf_counter() - t0
    local = {"rank": rank, "device": str(getattr(backend, "device", device)), "items": len(mine),
             "decode_seconds": decode_s}
    if tp_size > 1:
        from specref.sharding import check_ranks_agree

        check_ranks_agree([done[k].predictions for k in sorted(done)], "predictions")
        gathered = [(done, local)]
    elif dist is not None:
        gathered: list[Any] = [None] * world if rank == 0 else None
        dist.gather_object((done, local), gathered, dst=0)
    else:
        gathered = [(done, local)]
    timing: dict[str, Any] = {"world": world, "decodes": len(requests), "items": len(items),
                              "batches_per_decode": len(chunks)}
    result = None
    if rank == 0:
        allparts: dict[tuple[int, int], DecodeOutput] = {}
        timing["ranks"] = []
        for part, loc in gathered:
            allparts.update(part)
            timing["ranks"].append(loc)
        merged = {
            request_key(req): merge_outputs([allparts[(i, c)] for c in range(len(chunks))], chunks, len(examples))
            for i, req in enumerate(requests)
        }
        timing["decode_seconds_max"] = max(x["decode_seconds"] for x in timing["ranks"])
        timing["decode_seconds_sum"] = sum(x["decode_seconds"] for x in timing["ranks"])
        result = reproduce(setup, out, cfg, backend=MergedBackend(backend, merged), device=device, head=head,
                           named_heads=named_heads)
        timing["total_seconds"] = time.perf_counter() - t_start
    if dist is not None:
        dist.barrier()
    return result, timing


def main(argv: list[str] | None = None) -> int:
    # the options are `specref reproduce`'s, defined once below both this module and the command line
    from specref.loading import resolve_device
    from specref.options import add_reproduce_arguments
    from specref.repro.reproduce import config_from_args
    from specref.repro.setups import check_built, select_setups

    p = argparse.ArgumentParser(prog="torchrun -m specref.repro.distributed", description=__doc__.splitlines()[0])
    add_reproduce_arguments(p)
    p.add_argument("--timing-json", default=None, help="write per-rank decode times here (rank 0)")
    args = p.parse_args(argv)
    tp = args.tp_size > 1
    if tp:  # transformers sets up the process group for the shards (nccl on GPUs), when it loads the target
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        dist, local_rank = None, 0
    else:
        dist, rank, world, local_rank = _dist()
    try:  # every rank registers the plugin rules before the setups name them
        from specref import plugins

        plugins.load(args.plugin)
    except ImportError as err:
        print(f"specref.repro.distributed (rank {rank}): error: {' '.join(str(err).split())}", file=sys.stderr)
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
        return 2
    try:
        device = resolve_device(args.device)
        if tp:
            from specref.sharding import check_child, check_tp_device, check_tp_engine

            check_tp_engine(args.engine, args.tp_size)
            check_tp_device(device, args.tp_size)
            check_child(args.tp_size)
        elif device == "cuda":
            device = resolve_device(f"cuda:{local_rank}")  # one device per rank
    except ValueError as err:
        print(f"specref.repro.distributed (rank {rank}): error: {err}", file=sys.stderr)
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
        return 2
    import torch

    if device.startswith("cuda") and not tp:  # a sharded load binds each rank to its GPU itself
        torch.cuda.set_device(torch.device(device))
    if args.threads is not None or device == "cpu":
        torch.set_num_threads(args.threads or 1)
    try:
        from specref.repro.heads import register_heads

        head, named = register_heads(args.head)
        cfg = config_from_args(args, heads=tuple(named))
        if rank != 0:
            cfg.progress = False
        setups = select_setups(args.task, args.pair, args.config, args.standin)
        check_built(setups, args.standin)
        timings = []
        for setup in setups:
            result, timing = run_distributed(setup, args.out, cfg, device, head, args.engine, tp_size=args.tp_size,
                                             named_heads=named)
            timings.append({"setup": setup.name, **timing})
            if rank == 0 and result is not None:
                print(result.table)
                rep = result.report
                how = f"one target sharded over {world} ranks" if tp else f"{world} rank(s)"
                print(f"\n{rep.decoded} decodes on {how}, {rep.written} new rows, {rep.skipped} rows already "
                      f"in {result.out_dir / 'points.csv'}")
                if tp:
                    print(f"decode phase: {timing['decode_seconds_max']:.2f} s", file=sys.stderr)
                else:
                    print(f"decode phase: {timing['decode_seconds_max']:.2f} s (slowest rank), "
                          f"{timing['decode_seconds_sum']:.2f} s summed over ranks", file=sys.stderr)
        if rank == 0 and args.timing_json:
            with open(args.timing_json, "w") as fh:
                json.dump(timings, fh, indent=1)
    except (ValueError, OSError, ImportError) as err:
        # the same one-line errors as `specref reproduce` (a bad setup, model, tokenizer or weights file)
        print(f"specref.repro.distributed (rank {rank}): error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            tdist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
