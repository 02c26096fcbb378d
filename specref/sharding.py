"""A target sharded over the processes of one host: transformers' tensor parallelism under torchrun.

``--tp-size N`` (``specref generate`` and ``specref reproduce``) re-launches the command as N torchrun
processes; each loads the target with ``tp_plan="auto"`` (its weights split N ways, one shard per GPU with
``--device cuda``, gloo processes on a CPU), the draft whole, and runs the *same* decoder on the same
uniforms. Tensor parallelism all-gathers the target's logits, so every rank sees the same distributions,
draws the same tokens and keeps the same statistics; rank 0 prints and writes, and the ranks' tokens are
compared at the end (a rank that disagreed is an error, never a silent answer from one of them).

What is refused, with one line each: a model family without a tensor-parallel plan in transformers (the T5
pairs, for one), head or MLP sizes that do not split N ways, the engines that capture CUDA graphs or compile
the forward (a graph around a collective is not what we measured), and ``--device cpu`` on a machine whose
accelerator transformers would shard over instead.

Nothing here imports torch at module level: the command line imports it for ``--help``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from typing import Any

__all__ = [
    "TP_ENGINES",
    "check_tp_config",
    "check_tp_engine",
    "check_ranks_agree",
    "relaunch",
    "tp_kwargs",
    "tp_rank",
    "tp_world",
]

#: engines whose forwards run eagerly around the target's collectives
TP_ENGINES = ("plain", "fast", "static")

#: config fields whose size the tensor-parallel plan splits across ranks
_SPLIT_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")

#: set in the processes :func:`relaunch` starts, so that they do not re-launch themselves
CHILD_ENV = "SPECREF_TP_SIZE"


def tp_world() -> int:
    """The number of torchrun processes this one belongs to (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def tp_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def check_tp_engine(engine: str, tp_size: int) -> None:
    if tp_size > 1 and engine not in TP_ENGINES:
        raise ValueError(f"--engine {engine} with --tp-size {tp_size}: a sharded target runs with engine "
                         f"{', '.join(TP_ENGINES)} (graphs and compiled forwards around its collectives are not "
                         "supported)")


def check_tp_device(device: str, tp_size: int) -> None:
    """transformers shards over the accelerator it detects, whatever device the draft is on."""
    import torch

    if tp_size <= 1:
        return
    if device.startswith("cuda") and ":" in device:
        raise ValueError(f"--tp-size {tp_size} gives each process its own GPU: use --device cuda, not {device}")
    if device == "cpu" and torch.cuda.is_available():
        raise ValueError(f"--tp-size {tp_size} with --device cpu: transformers shards over this machine's GPUs; "
                         "use --device cuda (or hide the GPUs with CUDA_VISIBLE_DEVICES=)")
    if device == "mps":
        raise ValueError(f"--tp-size {tp_size}: tensor parallelism has no MPS mesh; use cpu or cuda")
    if device.startswith("cuda") and torch.cuda.device_count() < tp_size:
        raise ValueError(f"--tp-size {tp_size} needs {tp_size} GPUs, {torch.cuda.device_count()} visible")


def check_tp_config(config: Any, tp_size: int, role: str = "target") -> None:
    """A model whose family has a tensor-parallel plan and whose split sizes divide by ``tp_size``."""
    if tp_size <= 1:
        return
    kind = getattr(config, "model_type", type(config).__name__)
    if getattr(config, "is_encoder_decoder", False) or not getattr(config, "base_model_tp_plan", None):
        raise ValueError(f"--tp-size {tp_size}: the {role} is a {kind!r} model, which has no tensor-parallel plan "
                         "in transformers (decoder-only families such as llama, mistral, qwen2 and gemma have one); "
                         "use --tp-size 1")
    for name in _SPLIT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value % tp_size:
            raise ValueError(f"--tp-size {tp_size}: the {role}'s {name} is {value}, which does not split into "
                             f"{tp_size} equal shards; use a --tp-size that divides it")


def tp_kwargs(tp_size: int) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for the target's shards (the config object where it exists)."""
    try:
        from transformers import DistributedConfig
    except ImportError:  # transformers before DistributedConfig took the plan directly
        return {"tp_plan": "auto", "tp_size": tp_size}
    return {"distributed_config": DistributedConfig(tp_plan="auto", tp_size=tp_size)}


def relaunch(argv: list[str], module: str, tp_size: int, extra: list[str] | None = None) -> int:
    """Run ``python -m module *argv`` as ``tp_size`` torchrun processes and return their exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(tp_size),
           "-m", module, *argv, *(extra or [])]
    env = dict(os.environ, **{CHILD_ENV: str(tp_size)})
    # torchrun's own banner (OMP_NUM_THREADS) is noise on every run; errors of the ranks still come through
    env.setdefault("OMP_NUM_THREADS", "1")
    print(f"specref: target sharded over {tp_size} processes: {' '.join(cmd[1:])}", file=sys.stderr)
    return subprocess.run(cmd, env=env).returncode


def check_child(tp_size: int) -> None:
    """In a process that should be one of ``tp_size`` ranks: torchrun started exactly that many."""
    world = tp_world()
    if world != tp_size:
        raise ValueError(f"--tp-size {tp_size} inside a torchrun of {world} process(es): the world must equal "
                         "--tp-size (run the command without torchrun and it launches itself)")


def check_ranks_agree(tokens: list[list[int]], what: str = "tokens") -> None:
    """Every rank decoded the same ``tokens``; else an error on every rank naming the first that differs."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    digest = hashlib.sha256(json.dumps(tokens).encode()).hexdigest()
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, digest)
    bad = [r for r, d in enumerate(every) if d != every[0]]
    if bad:
        raise RuntimeError(f"tensor-parallel ranks decoded different {what}: rank {bad[0]} differs from rank 0 "
                           "(the target's logits were not identical across ranks); nothing was written")
