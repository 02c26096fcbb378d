"""Train, save and evaluate ONE zoo model: ``python -m training.zoo.train_one --pair P --role R --out DIR``.

Writes ``DIR/<pair>/<role>/``: ``model/`` (config.json, fp16 model.safetensors, generation_config.json),
``predictions.json`` (greedy and T = 1 test completions), ``samples.pt`` (token ids of the T = 1 samples,
used for the pair's acceptance), ``log.json`` (steps, wall time, losses, device, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from datetime import timedelta
from pathlib import Path

import torch

from specref.zoo import ZOO_DIR, get_spec, list_pairs
from training.zoo import data as zdata
from training.zoo.config import load_config
from training.zoo.evaluate import generate
from training.zoo.models import build_model, count_parameters, set_generation_defaults
from training.zoo.module import ZooModule, pl
from training.zoo.tars import unpack_folder


def load_tokenizer(pair: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ZOO_DIR / pair / "tokenizer"), local_files_only=True)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def save_fp16(model, tokenizer, folder: Path) -> None:
    """config + fp16 safetensors + greedy generation config, loadable with ``from_pretrained``."""
    set_generation_defaults(model, tokenizer)
    model.to(torch.float16).save_pretrained(str(folder), safe_serialization=True)
    model.to(torch.float32)


def warm_start(model, source: str | Path) -> dict:
    """Load the weights of an earlier run (a model folder, a variant folder or a variant tar) into ``model``.

    Only the weights carry over: the optimizer starts fresh with this run's own warmup and schedule (a warm
    restart). The shapes must match exactly (``strict``). Returns the earlier run's ``log.json`` (``{}`` when
    ``source`` is a bare model folder), so the new log can add up both stages.
    """
    import tarfile
    import tempfile

    from safetensors.torch import load_file

    source = Path(source)
    if source.is_file() and tarfile.is_tarfile(source):
        source = unpack_folder(source, Path(tempfile.mkdtemp(prefix="zoo-init-")))
    if not source.is_dir():
        raise FileNotFoundError(f"init_from {source}: no such model folder or variant tar")
    weights = source / "model.safetensors"
    if not weights.is_file():
        weights = source / "model" / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"init_from {source}: no model.safetensors (or model/model.safetensors)")
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    own = model.state_dict()
    # tied weights are stored once; the state dict names them all
    state.update({k: state[t] for k, t in _tied_aliases(model).items() if k not in state and t in state})
    wrong = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape}
    if wrong:
        raise ValueError(f"init_from {source}: shapes differ from this config's model: {wrong}")
    model.load_state_dict(state, strict=True)
    log = weights.parent.parent / "log.json" if weights.parent.name == "model" else source / "log.json"
    return json.loads(log.read_text()) if log.is_file() else {}


def _tied_aliases(model) -> dict[str, str]:
    """``{name: name it shares storage with}`` for parameters that are the same tensor."""
    first: dict[int, str] = {}
    aliases = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = id(tensor)
        if key in first:
            aliases[name] = first[key]
            aliases[first[key]] = name
        else:
            first[key] = name
    return aliases


def chain_logs(previous: dict, log: dict, source) -> dict:
    """The log of a warm-started run: totals over every stage, and each stage's own summary."""
    keys = ("steps", "examples_seen", "train_wall_s", "budget_s", "best_val_loss", "best_step", "optim",
            "overrides", "device")
    stages = previous.get("stages") or ([{k: previous.get(k) for k in keys}] if previous else [])
    this = {k: log.get(k) for k in keys}
    this["init_from"] = str(source)
    out = dict(log)
    out["stages"] = [*stages, this]
    for total in ("steps", "examples_seen"):
        out[total] = sum(int(s.get(total) or 0) for s in out["stages"])
    out["train_wall_s"] = round(sum(s.get("train_wall_s") or 0.0 for s in out["stages"]), 1)
    out["budget_s"] = sum((s.get("budget_s") or 0) for s in out["stages"]) or None
    return out


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """``a.b.c=VALUE`` items (VALUE parsed as YAML) set nested config keys, e.g. ``models.target.lr=1e-3``."""
    import yaml

    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key.path=value")
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        node[last] = parsed
    return cfg


def run(pair: str, role: str, out: Path, minutes: float | None, max_steps: int | None, smoke: bool,
        device: str, eval_limit: int | None = None, overrides: list[str] = (), tag: str = "") -> dict:
    cfg = apply_overrides(load_config(pair, smoke=smoke), list(overrides))
    if eval_limit is not None:
        cfg["eval"]["limit"] = eval_limit
    spec = cfg["models"][role]
    if minutes is None:
        minutes = spec.get("minutes")
    if minutes is None and max_steps is None:
        raise ValueError(f"{pair}/{role}: no budget; give --minutes and/or --max-steps, or set "
                         f"models.{role}.minutes in the config")
    # a model entry may pin its own seed (e.g. to re-create a model first trained under the other role)
    seed = int(spec.get("seed", cfg["seed"] + (0 if role == "target" else 1)))
    random.seed(seed)
    torch.manual_seed(seed)
    folder = out / pair / (f"{role}-{tag}" if tag else role)
    folder.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    t0 = time.monotonic()

    tokenizer = load_tokenizer(pair)
    family = get_spec(pair).family
    collate = zdata.Collator(family, tokenizer.pad_token_id)
    val_rows = zdata.encode(tokenizer, cfg, zdata.training_examples(cfg, "validation"))
    val_batches = [collate(val_rows[i : i + 128]) for i in range(0, len(val_rows), 128)]
    if cfg["generated_train"]:
        train_data = zdata.GeneratedProblems(cfg, tokenizer)
        n_train = None
        loader = torch.utils.data.DataLoader(
            train_data, batch_size=spec["batch_size"], collate_fn=collate,
            num_workers=cfg["loader_workers"] if dev.type == "cuda" else 0)
    else:
        train_data = zdata.encode(tokenizer, cfg, zdata.training_examples(cfg, "train"))
        n_train = len(train_data)
        generator = torch.Generator().manual_seed(seed)
        drop_last = n_train > spec["batch_size"]
        if spec["bucket_batches"]:
            buckets = zdata.LengthBuckets([zdata.row_length(r) for r in train_data], spec["batch_size"],
                                          spec["bucket_batches"], generator, drop_last=drop_last)
            loader = torch.utils.data.DataLoader(train_data, batch_sampler=buckets, collate_fn=collate,
                                                 num_workers=0)
        else:
            loader = torch.utils.data.DataLoader(
                train_data, batch_size=spec["batch_size"], shuffle=True, drop_last=drop_last,
                collate_fn=collate, num_workers=0, generator=generator)
    model = build_model(pair, spec["arch"], tokenizer)
    previous = warm_start(model, spec["init_from"]) if spec.get("init_from") else None
    params = count_parameters(model)
    print(f"{pair}/{role}: {params / 1e6:.2f}M params, {n_train or 'streamed'} train rows, "
          f"setup {time.monotonic() - t0:.1f}s, device {device_name(dev)}", flush=True)

    budget_s = minutes * 60 if minutes else None
    module = ZooModule(model, spec, val_batches, budget_s=budget_s, max_steps=max_steps)
    gpu = dev.type == "cuda"
    trainer = pl.Trainer(
        accelerator="gpu" if gpu else "cpu", devices=[dev.index or 0] if gpu else 1,
        precision="bf16-mixed" if gpu else "32-true", max_epochs=-1, max_steps=max_steps or -1,
        max_time=timedelta(seconds=budget_s) if budget_s else None, gradient_clip_val=spec["grad_clip"],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, deterministic=False)
    t_fit = time.monotonic()
    trainer.fit(module, train_dataloaders=loader)
    train_wall = time.monotonic() - t_fit
    module.restore_best()

    model_dir = folder / "model"
    model = module.model.to("cpu")
    save_fp16(model, tokenizer, model_dir)

    # Evaluate the weights exactly as shipped: fp16 on disk, loaded back in fp32.
    from specref.loading import load_model

    model = load_model(model_dir, device=str(dev), dtype=torch.float32)
    task = zdata.task_of(pair)
    examples = zdata.eval_examples(cfg)
    ev = cfg["eval"]
    t_eval = time.monotonic()
    greedy, _ = generate(model, tokenizer, task, examples, sample=False, max_new_tokens=ev["max_new_tokens"],
                         batch_size=ev["batch_size"], seed=seed, device=dev)
    sampled, sample_tokens = generate(model, tokenizer, task, examples, sample=True,
                                      max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"],
                                      seed=seed, device=dev)
    eval_wall = time.monotonic() - t_eval
    (folder / "predictions.json").write_text(json.dumps({
        "pair": pair, "role": role, "split": "test", "ids": [e.id for e in examples],
        "greedy": greedy, "sampled_t1": sampled,
        "settings": {"max_new_tokens": ev["max_new_tokens"], "greedy": "do_sample=False",
                     "sampled_t1": "do_sample=True, temperature=1, top_k=0, top_p=1", "seed": seed},
    }, ensure_ascii=False, indent=0))
    torch.save(sample_tokens, folder / "samples.pt")

    import transformers

    log = {
        "pair": pair, "role": role, "params": params, "arch": spec["arch"],
        "optim": {k: spec[k] for k in ("batch_size", "lr", "weight_decay", "warmup_frac", "min_lr_frac",
                                       "betas", "grad_clip", "label_smoothing", "bucket_batches")},
        "seed": seed,
        "steps": int(trainer.global_step), "examples_seen": int(trainer.global_step) * spec["batch_size"],
        "train_rows": n_train if n_train is not None else "stream of generated problems",
        "train_wall_s": round(train_wall, 1), "eval_wall_s": round(eval_wall, 1),
        "budget_s": budget_s, "max_steps": max_steps, "final_train_loss": module.history[-1]["train_loss"],
        "best_val_loss": round(module.best_val, 4), "best_step": module.best_step, "history": module.history,
        "device": device_name(dev), "precision": "bf16-mixed" if gpu else "fp32",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "lightning": pl.__version__, "python": platform.python_version()},
        "smoke": smoke, "skipped_steps": module.skipped_steps, "overrides": list(overrides),
    }
    if previous is not None:
        log = chain_logs(previous, log, spec["init_from"])
    (folder / "log.json").write_text(json.dumps(log, indent=1))
    print(f"{pair}/{role}: done, {log['steps']} steps in {train_wall:.0f}s, best val {module.best_val:.4f}",
          flush=True)
    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.zoo.train_one", description=__doc__)
    parser.add_argument("--pair", required=True, choices=list_pairs())
    parser.add_argument("--role", required=True, choices=("draft", "target"))
    parser.add_argument("--out", type=Path, required=True, help="work folder (the pair's files go below it)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-clock training budget (default: the model's `minutes` in the config)")
    parser.add_argument("--max-steps", type=int, default=None, help="step budget (smoke tests, CPU checks)")
    parser.add_argument("--smoke", action="store_true", help="tiny models and data: a CPU test in seconds")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N test examples")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. models.target.lr=1e-3 (repeatable)")
    parser.add_argument("--tag", default="", help="suffix of the output folder (config experiments)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("ZOO_THREADS", "2")),
                        help="CPU threads for this process (six share a machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    run(args.pair, args.role, args.out, args.minutes, args.max_steps, args.smoke, args.device, args.eval_limit,
        args.overrides, args.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
