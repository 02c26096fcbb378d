"""Per-pair training configs (``configs/<pair>.yaml``) with defaults, and the tiny smoke-test override."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Shared optimization defaults; a model entry in the YAML may override any of them.
MODEL_DEFAULTS = {
    "batch_size": 128,
    "lr": 1.0e-3,
    "weight_decay": 0.01,
    "warmup_frac": 0.05,  # of the time (or step) budget
    "min_lr_frac": 0.05,  # cosine decays to this fraction of the peak
    "betas": [0.9, 0.98],
    "grad_clip": 1.0,
    "label_smoothing": 0.0,  # training loss only; validation and the cards report plain cross-entropy
    "val_every_frac": 0.1,  # validation loss checks; the best checkpoint is kept
    "bucket_batches": 0,  # > 0: batches of similar length from chunks of this many batches (data.LengthBuckets)
    "minutes": None,  # this model's wall-clock budget when the command gives no --minutes (the shipped recipe)
    "init_from": None,  # a model folder / variant tar to warm-start from (weights only; train_one.warm_start)
}
PAIR_DEFAULTS = {
    "generated_train": False, "generated_seed": 0, "loader_workers": 0, "seed": 1234,
    "eval": {"batch_size": 256},
}

_SMOKE_ARCH = {
    "seq2seq": {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4, "num_layers": 1,
                "num_decoder_layers": 1, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0},
    "causal": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
               "num_key_value_heads": 4, "max_position_embeddings": 256},
}


def config_path(pair: str) -> Path:
    path = CONFIG_DIR / f"{pair}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no training config for pair {pair!r} at {path}")
    return path


def load_config(pair: str, smoke: bool = False) -> dict:
    """The full config of ``pair``; ``smoke`` shrinks everything for a seconds-long CPU run."""
    raw = yaml.safe_load(config_path(pair).read_text())
    if raw.get("pair") != pair:
        raise ValueError(f"{config_path(pair)} declares pair {raw.get('pair')!r}, expected {pair!r}")
    cfg = copy.deepcopy(PAIR_DEFAULTS)
    cfg.update({k: v for k, v in raw.items() if k not in ("eval", "models")})
    cfg["eval"] = {**PAIR_DEFAULTS["eval"], **raw.get("eval", {})}
    cfg["models"] = {role: {**MODEL_DEFAULTS, **spec} for role, spec in raw["models"].items()}
    if set(cfg["models"]) != {"draft", "target"}:
        raise ValueError(f"{config_path(pair)} must define exactly models.draft and models.target")
    if smoke:
        cfg = smoke_config(cfg)
    return cfg


def smoke_config(cfg: dict) -> dict:
    """Tiny models, tiny batches, a handful of examples: exercises every code path in seconds on CPU."""
    from specref.zoo import get_spec

    cfg = copy.deepcopy(cfg)
    family = get_spec(cfg["pair"]).family
    cfg["train_limit"] = 64
    cfg["val_limit"] = 8
    cfg["eval"].update({"limit": 6, "max_new_tokens": 8, "batch_size": 4})
    for spec in cfg["models"].values():
        spec["arch"] = dict(_SMOKE_ARCH[family])
        spec["batch_size"] = 8
        spec["val_every_frac"] = 0.5
        spec["minutes"] = None  # smoke runs are step-budgeted
    return cfg
