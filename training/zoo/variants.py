"""Config experiments for one zoo model, and pairs assembled from their winners.

Three steps, for when a pair misses its quality bar (see ``EXPERIMENTS.md``):

1. ``train`` (GPU): several variants of ONE model at once, each a ``train_one`` process with its own config
   overrides, spread over the GPUs; each variant comes back as ``OUT/<role>-<name>.tar`` (``model/``,
   ``predictions.json``, ``log.json``, ``samples.pt``, ``train.log``; ~12 MiB for a 5.8M T5)::

       python -m training.zoo.variants train --pair bible-en-es-t5 --role target --out OUT --minutes 7 \\
           --devices 0,1 --variant base --variant ls label_smoothing=0.1 --variant hot lr=2e-3 arch.dropout_rate=0.3

   ``KEY=VALUE`` items are relative to ``models.<role>`` unless they start with ``models.`` (VALUE is YAML).
2. ``score`` (CPU, here: sacreBLEU / rouge-score live here): one table of every variant's steps, validation
   loss, task metric and degeneracy rates on the test split::

       python -m training.zoo.variants score --pair bible-en-es-t5 OUT/*.tar

   (``train --keep-models N`` scores on the GPU machine already and ships the weights of the N best variants
   only: the others come back as ``*.nomodel.tar``, still scoreable, for outputs with a size cap.)

3. ``assemble`` (CPU): the chosen draft and target (variant folders or tars, in either role) become the
   ``<pair>.tar`` + ``eval.tar`` that ``finalize`` installs; the acceptance is measured here on the target's
   own T = 1 samples::

       python -m training.zoo.variants assemble --pair bible-en-es-t5 --target OUT/target-ls.tar \\
           --draft OUT/draft-base.tar --out PAIR && python -m training.zoo.finalize --from PAIR
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from specref.zoo import ROLES, list_pairs
from training.zoo.config import load_config
from training.zoo.jobs import launch, train_one_command, wait_all
from training.zoo.tars import add_folder, unpack_folder
from training.zoo.train_all import measure_acceptance, pack

VARIANT_FILES = ("predictions.json", "log.json")  # besides model/; the target also needs samples.pt


def parse_variants(items: list[list[str]], role: str) -> dict[str, list[str]]:
    """``[[name, key=value, ...], ...]`` -> ``{name: ["models.<role>.key=value", ...]}``."""
    variants: dict[str, list[str]] = {}
    for name, *sets in items:
        if not name or "=" in name or "/" in name or name.startswith("."):
            raise ValueError(f"a variant starts with its name (letters, digits, - or _), got {name!r}")
        if name in variants:
            raise ValueError(f"variant {name!r} given twice")
        overrides = []
        for item in sets:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"variant {name!r}: {item!r} must look like KEY=VALUE")
            overrides.append(f"{key if key.startswith('models.') else f'models.{role}.{key}'}={value}")
        variants[name] = overrides
    if not variants:
        raise ValueError("give at least one --variant NAME [KEY=VALUE ...]")
    return variants


def _train_command(args: argparse.Namespace, name: str, overrides: list[str], work: Path) -> list[str]:
    cmd = train_one_command(args.pair, args.role, work, args.minutes, args.max_steps, args.smoke) + ["--tag", name]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def train(args: argparse.Namespace) -> int:
    variants = parse_variants(args.variant, args.role)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if not devices:
        raise SystemExit("--devices needs at least one GPU index or 'cpu'")
    work = args.work or Path(tempfile.mkdtemp(prefix="zoo-variants-"))
    args.out.mkdir(parents=True, exist_ok=True)
    started, failed, procs = time.time(), [], []
    for i, (name, overrides) in enumerate(variants.items()):
        device = devices[i % len(devices)]
        folder = work / args.pair / f"{args.role}-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        if args.inprocess:  # tests: one interpreter, sequential
            from training.zoo.train_one import run

            run(args.pair, args.role, work, args.minutes, args.max_steps, args.smoke,
                "cpu" if device == "cpu" else "cuda:0", None, overrides, name)
            continue
        proc, handle = launch(_train_command(args, name, overrides, work), device, folder / "train.log")
        procs.append((name, proc, handle, folder / "train.log"))
        print(f"started {args.role}-{name} on {device}: {' '.join(overrides) or '(config as is)'}", flush=True)
    failed = wait_all(procs)
    done = [work / args.pair / f"{args.role}-{name}" for name in variants if name not in failed]
    done = [f for f in done if (f / "model" / "model.safetensors").is_file()]
    keep = {f.name for f in done}
    if args.keep_models is not None and done:
        rows = score_rows(args.pair, done)
        (args.out / "scores.json").write_text(json.dumps(rows, indent=1))
        best = sorted(rows, key=lambda r: -r["greedy"]["metric"])[: args.keep_models]
        keep = {r["variant"] for r in best}
        print(f"keeping the weights of {sorted(keep)} (best greedy {rows[0]['metric_name']})", flush=True)
    for folder in done:
        path = args.out / f"{folder.name}.tar" if folder.name in keep else args.out / f"{folder.name}.nomodel.tar"
        with tarfile.open(path, "w") as tar:
            add_folder(tar, folder, folder.name, skip=() if folder.name in keep else ("model", "samples.pt"))
        print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)", flush=True)
    print(f"{len(variants) - len(failed)} of {len(variants)} variants done in {time.time() - started:.0f}s",
          flush=True)
    return 1 if failed else 0


def open_variant(source: Path, scratch: Path, need_model: bool = True) -> Path:
    """A variant folder (``model/``, ``log.json``, ...) from a folder or a tar written by ``train``;
    ``need_model=False`` also accepts the weightless ``*.nomodel.tar`` of ``train --keep-models`` (scoring)."""
    if source.is_dir():
        folder = source
    elif source.is_file() and tarfile.is_tarfile(source):
        folder = unpack_folder(source, scratch / source.name.removesuffix(".tar").removesuffix(".nomodel"))
    else:
        raise FileNotFoundError(f"{source} is neither a variant folder nor a tar of one")
    wanted = ("model/model.safetensors", "model/config.json", *VARIANT_FILES) if need_model else VARIANT_FILES
    missing = [n for n in wanted if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"{source}: not a trained variant (missing {', '.join(missing)})")
    return folder


def score_rows(pair: str, folders: list[Path]) -> list[dict]:
    from specref.tasks import get_task
    from specref.zoo import get_spec

    task = get_task(get_spec(pair).task)
    by_id = {e.id: e for e in task.load("test")}
    rows = []
    for folder in folders:
        log = json.loads((folder / "log.json").read_text())
        if log.get("pair") != pair:
            raise ValueError(f"{folder} was trained for {log.get('pair')!r}, not {pair!r}")
        preds = json.loads((folder / "predictions.json").read_text())
        examples = [by_id[i] for i in preds["ids"]]
        row = {"variant": folder.name, "params": log["params"], "steps": log["steps"],
               "best_val_loss": log["best_val_loss"], "overrides": log.get("overrides", []),
               "device": log.get("device"), "n": len(examples)}
        for mode in ("greedy", "sampled_t1"):
            s = task.score(preds[mode], examples)
            row[mode] = {"metric": s[task.metric_name], "loop_rate": s["loop_rate"], "empty_rate": s["empty_rate"]}
        row["metric_name"] = task.metric_name
        rows.append(row)
    return rows


def score(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        rows = score_rows(args.pair, [open_variant(s, Path(scratch), need_model=False) for s in args.sources])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    m = rows[0]["metric_name"] if rows else "metric"
    print(f"| variant | params | steps | best val loss | {m} greedy | {m} T=1 | greedy loops | T=1 loops | "
          "empty (worst) | overrides |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        g, s = r["greedy"], r["sampled_t1"]
        print(f"| {r['variant']} | {r['params']:,} | {r['steps']} | {r['best_val_loss']} | {g['metric']:.2f} | "
              f"{s['metric']:.2f} | {100 * g['loop_rate']:.1f}% | {100 * s['loop_rate']:.1f}% | "
              f"{100 * max(g['empty_rate'], s['empty_rate']):.1f}% | {' '.join(r['overrides']) or '-'} |")
    return 0


def assemble(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    logs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for role in ROLES:
            src = open_variant(getattr(args, role), Path(scratch) / role)
            if role == "target" and not (src / "samples.pt").is_file():
                raise ValueError(f"{getattr(args, role)}: the target needs samples.pt (its T = 1 test samples)")
            dest = work / args.pair / role
            shutil.copytree(src / "model", dest / "model")
            for name in (*VARIANT_FILES, "samples.pt", "train.log"):
                if (src / name).is_file():
                    shutil.copy2(src / name, dest / name)
            logs[role] = json.loads((src / "log.json").read_text())
            if logs[role].get("pair") != args.pair:
                raise ValueError(f"{getattr(args, role)} was trained for {logs[role].get('pair')!r}, not {args.pair!r}")
    if logs["draft"]["params"] >= logs["target"]["params"]:
        print(f"WARNING: the draft ({logs['draft']['params']:,} params) is not smaller than the target "
              f"({logs['target']['params']:,})", flush=True)
    accept = measure_acceptance(args.pair, work, args.device)
    print(f"{args.pair}: acceptance {accept['acceptance']:.3f}", flush=True)
    budgets = {role: (logs[role].get("budget_s") or 0) / 60 or None for role in ROLES}
    run_info = {
        "argv": sys.argv, "assembled_from": {role: str(getattr(args, role)) for role in ROLES},
        "trained_as": {role: f"{logs[role].get('role')} ({' '.join(logs[role].get('overrides', [])) or 'config'})"
                       for role in ROLES},
        "gpus": sorted({logs[role].get("device") for role in ROLES}), "devices": None,
        "minutes": budgets, "max_steps": None, "wall_s": None, "acceptance": {args.pair: accept},
    }
    for path in pack([args.pair], work, args.out, run_info):
        print(f"wrote {path}", flush=True)
    print(f"next: python -m training.zoo.finalize --from {args.out} --pairs {args.pair}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.zoo.variants", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train variants of one model (GPU)")
    t.add_argument("--pair", required=True, choices=list_pairs())
    t.add_argument("--role", required=True, choices=ROLES)
    t.add_argument("--variant", action="append", nargs="+", required=True, metavar="NAME [KEY=VALUE",
                   help="a variant: its name, then config overrides (repeatable)")
    t.add_argument("--out", type=Path, required=True, help="where the variant tars go")
    t.add_argument("--minutes", type=float, default=None, help="budget of each variant (default: the config's)")
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--devices", default="0", help="comma-separated GPU indices (round robin), or 'cpu'")
    t.add_argument("--work", type=Path, default=None)
    t.add_argument("--smoke", action="store_true", help="tiny models and data (CPU tests)")
    t.add_argument("--inprocess", action="store_true", help="train sequentially in this process (tests)")
    t.add_argument("--keep-models", type=int, default=None, metavar="N",
                   help="score here (needs the task's metric library) and keep the weights of the N best variants "
                        "only; the others come back as NAME.nomodel.tar (log, predictions): for size-capped outputs")
    s = sub.add_parser("score", help="score variants on the test split (CPU)")
    s.add_argument("--pair", required=True, choices=list_pairs())
    s.add_argument("sources", nargs="+", type=Path, help="variant folders or tars")
    s.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = sub.add_parser("assemble", help="build finalize's input from a chosen draft and target (CPU)")
    a.add_argument("--pair", required=True, choices=list_pairs())
    a.add_argument("--target", type=Path, required=True)
    a.add_argument("--draft", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--device", default="cpu", help="where to measure the acceptance")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        if args.minutes is None and args.max_steps is None and (
                args.smoke or load_config(args.pair)["models"][args.role].get("minutes") is None):
            raise SystemExit(f"give --minutes and/or --max-steps (models.{args.role} of {args.pair} has no `minutes`)")
        return train(args)
    return score(args) if args.command == "score" else assemble(args)


if __name__ == "__main__":
    raise SystemExit(main())
