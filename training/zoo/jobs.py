"""Training processes: the ``train_one`` command line of one model, started on one device, waited for.

``train_all`` (every model of the zoo) and ``variants`` (several configs of one model) both spread
``train_one`` processes over GPUs this way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def train_one_command(pair: str, role: str, work: Path, minutes: float | None, max_steps: int | None,
                      smoke: bool) -> list[str]:
    """The ``python -m training.zoo.train_one`` command that trains ``pair``'s ``role`` model into ``work``."""
    cmd = [sys.executable, "-m", "training.zoo.train_one", "--pair", pair, "--role", role, "--out", str(work)]
    if minutes is not None:
        cmd += ["--minutes", str(minutes)]
    if max_steps is not None:
        cmd += ["--max-steps", str(max_steps)]
    if smoke:
        cmd.append("--smoke")
    return cmd


def launch(cmd: list[str], device: str, log_path: Path) -> tuple[subprocess.Popen, Any]:
    """Start a ``train_one`` command on ``device`` (a GPU index: it sees only that GPU, or ``cpu``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if device == "cpu":
        cmd = [*cmd, "--device", "cpu"]
    else:
        env["CUDA_VISIBLE_DEVICES"] = device
        cmd = [*cmd, "--device", "cuda:0"]
    handle = log_path.open("w")
    return subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env), handle


def wait_all(procs: list[tuple[str, subprocess.Popen, Any, Path]]) -> list[str]:
    """Wait for ``(name, process, log handle, log path)`` items; returns the failed names (log tails printed)."""
    failed = []
    for name, proc, handle, log_path in procs:
        code = proc.wait()
        handle.close()
        if code != 0:
            tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-30:])
            print(f"FAILED {name} (exit {code}); last lines of {log_path}:\n{tail}", flush=True)
            failed.append(name)
        else:
            print(f"finished {name}", flush=True)
    return failed
