"""Train all six zoo models at once and pack the results:
``python -m training.zoo.train_all --out OUT --minutes 7 --devices 0,1``.

One process per model (``training.zoo.train_one``), spread over the listed GPUs (targets first, round
robin), each training for the same wall-clock budget, then evaluating itself on the test split. When all
are done this process measures each pair's acceptance on the target's T = 1 samples and writes:

- ``OUT/<pair>.tar``: ``draft/`` and ``target/`` (config.json, fp16 model.safetensors,
  generation_config.json) and ``tokenizer/`` (copied from the package), ready for ``finalize``;
- ``OUT/eval.tar``: ``<pair>/<role>/{predictions,log}.json``, ``<pair>/<role>/train.log``,
  ``<pair>/acceptance.json`` and ``run.json`` (command, budget, devices, wall time).

The work folder (``--work``, default a fresh temporary folder) holds everything else and stays behind.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from specref.zoo import ROLES, ZOO_DIR, list_pairs
from training.zoo.jobs import launch, train_one_command, wait_all
from training.zoo.tars import add_bytes, add_folder

TAR_LIMIT = 15 * 1024 * 1024  # results of a GPU run come back as files of at most 16 MB


def plan(pairs: list[str], devices: list[str]) -> list[tuple[str, str, str]]:
    """(pair, role, device) for every model: targets first, then drafts, round robin over devices."""
    jobs = [(pair, role) for role in ("target", "draft") for pair in pairs]
    return [(pair, role, devices[i % len(devices)]) for i, (pair, role) in enumerate(jobs)]


def train_spawned(jobs, args, work: Path) -> list[str]:
    """Run every job in its own process; returns the names of the failed ones."""
    procs = []
    for pair, role, device in jobs:
        log_path = work / pair / role / "train.log"
        cmd = train_one_command(pair, role, work, args.minutes, args.max_steps, args.smoke)
        proc, handle = launch(cmd, device, log_path)
        procs.append((f"{pair}/{role}", proc, handle, log_path))
        print(f"started {pair}/{role} on {device} (log: {log_path})", flush=True)
    return wait_all(procs)


def train_inprocess(jobs, args, work: Path) -> list[str]:
    """Sequential, in this process (tests and debugging: one interpreter start instead of six)."""
    from training.zoo.train_one import run

    for pair, role, device in jobs:
        dev = "cpu" if device == "cpu" else "cuda:0"
        run(pair, role, work, args.minutes, args.max_steps, args.smoke, dev)
    return []


def measure_acceptance(pair: str, work: Path, device: str) -> dict:
    """1 - TV(p, q) along the target's T = 1 test samples, teacher-forced through both models."""
    import torch

    from specref.loading import load_model, load_tokenizer
    from training.zoo.evaluate import acceptance

    dev = torch.device("cpu" if device == "cpu" else "cuda:0")
    tokenizer = load_tokenizer(ZOO_DIR / pair / "tokenizer")
    draft = load_model(work / pair / "draft" / "model", device=str(dev))
    target = load_model(work / pair / "target" / "model", device=str(dev))
    samples = torch.load(work / pair / "target" / "samples.pt", weights_only=True)  # token ids only: no pickle
    result = acceptance(draft, target, samples, tokenizer.pad_token_id, tokenizer.pad_token_id, dev)
    result["samples_from"] = "target, test split prompts, T = 1 (no top-k / top-p)"
    (work / pair / "acceptance.json").write_text(json.dumps(result, indent=1))
    return result


def pack(pairs: list[str], work: Path, out: Path, run_info: dict) -> list[Path]:
    """Write the pair tars (when both models exist) and eval.tar; returns the written paths."""
    written = []
    for pair in pairs:
        if not all((work / pair / role / "model" / "model.safetensors").is_file() for role in ROLES):
            continue
        path = out / f"{pair}.tar"
        with tarfile.open(path, "w") as tar:
            for role in ROLES:
                add_folder(tar, work / pair / role / "model", role)
            add_folder(tar, ZOO_DIR / pair / "tokenizer", "tokenizer")
        if path.stat().st_size > TAR_LIMIT:
            print(f"WARNING: {path} is {path.stat().st_size / 2**20:.1f} MiB, over the 15 MiB limit", flush=True)
        written.append(path)
    path = out / "eval.tar"
    with tarfile.open(path, "w") as tar:
        for pair in pairs:
            for role in ROLES:
                for name in ("predictions.json", "log.json", "train.log"):
                    file = work / pair / role / name
                    if file.is_file():
                        add_bytes(tar, f"{pair}/{role}/{name}", file.read_bytes())
            file = work / pair / "acceptance.json"
            if file.is_file():
                add_bytes(tar, f"{pair}/acceptance.json", file.read_bytes())
        add_bytes(tar, "run.json", json.dumps(run_info, indent=1).encode())
    written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.zoo.train_all", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where the tars go")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training budget of every model (default: each model's `minutes` in its config, "
                             "the shipped recipe)")
    parser.add_argument("--max-steps", type=int, default=None, help="step budget instead / as well")
    parser.add_argument("--devices", default="0", help="comma-separated GPU indices, or 'cpu'")
    parser.add_argument("--pairs", nargs="*", default=list_pairs(), choices=list_pairs())
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a new temp folder)")
    parser.add_argument("--smoke", action="store_true", help="tiny models and data (CPU tests)")
    parser.add_argument("--inprocess", action="store_true", help="train sequentially in this process")
    args = parser.parse_args(argv)
    budgets = None  # each model's own `minutes` from its config, when the command gives no budget
    if args.minutes is None and args.max_steps is None:
        from training.zoo.config import load_config

        if args.smoke:
            parser.error("give --minutes and/or --max-steps")
        budgets = {f"{pair}/{role}": spec.get("minutes") for pair in args.pairs
                   for role, spec in load_config(pair)["models"].items()}
        unbudgeted = [name for name, minutes in budgets.items() if minutes is None]
        if unbudgeted:
            parser.error(f"give --minutes and/or --max-steps (no `minutes` in the config of {unbudgeted})")
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if not devices:
        parser.error("--devices needs at least one GPU index or 'cpu'")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="zoo-work-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", flush=True)
    started = time.time()
    jobs = plan(args.pairs, devices)
    failed = (train_inprocess if args.inprocess else train_spawned)(jobs, args, work)
    accept = {}
    for pair in args.pairs:
        if any(f.startswith(f"{pair}/") for f in failed):
            continue
        accept[pair] = measure_acceptance(pair, work, devices[0])
        print(f"{pair}: acceptance {accept[pair]['acceptance']:.3f}", flush=True)
    gpus = []
    try:
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - informational only
        pass
    run_info = {"argv": sys.argv, "minutes": args.minutes if budgets is None else budgets,
                "max_steps": args.max_steps, "devices": devices,
                "gpus": gpus, "pairs": args.pairs, "smoke": args.smoke, "failed": failed,
                "wall_s": round(time.time() - started, 1), "acceptance": accept,
                "plan": [list(job) for job in jobs]}
    for path in pack(args.pairs, work, args.out, run_info):
        print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)", flush=True)
    print(f"total wall time {run_info['wall_s']:.0f}s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
