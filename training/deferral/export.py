"""Export a trained head from a Lightning checkpoint to safetensors + JSON (specref.heads.save).

    python -m training.deferral.export --ckpt runs/deferral/cascade/checkpoints/best.ckpt --out runs/head

Also a callback, :class:`ExportHead`, that exports the best checkpoint's head when ``fit`` ends.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from specref.heads import Head, save
from training.deferral._lightning import Callback

__all__ = ["CheckpointError", "ExportHead", "export_checkpoint", "head_from_checkpoint"]


class CheckpointError(ValueError):
    """A Lightning checkpoint that is missing, truncated, corrupt or not from DeferralModule."""


def head_from_checkpoint(path: str | os.PathLike[str]) -> Head:
    """The head stored in a DeferralModule checkpoint. Loads with ``weights_only=True`` (no arbitrary code)."""
    from training.deferral.module import DeferralModule

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError / UnpicklingError / EOFError / zip errors
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict / hyper_parameters)")
    # LightningCLI adds bookkeeping entries (``_instantiator``, ``_class_path``) to the hyper-parameters.
    hparams = {k: v for k, v in dict(ckpt["hyper_parameters"]).items() if not k.startswith("_")}
    try:
        module = DeferralModule(**hparams)
    except TypeError as err:
        raise CheckpointError(f"{path} was not written by DeferralModule: {err}") from None
    state = {k[len("head."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("head.")}
    try:
        module.head.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not match its hyper-parameters: {err}") from None
    return module.head.eval()


def export_checkpoint(ckpt: str | os.PathLike[str], out: str | os.PathLike[str], **info: Any) -> Path:
    head = head_from_checkpoint(ckpt)
    head.info.update({"checkpoint": str(ckpt), **info})
    return save(head, out)


class ExportHead(Callback):
    """On fit end, export the best checkpoint's head (or the current weights without checkpointing) to
    ``dirpath`` (default ``<trainer.default_root_dir>/head``)."""

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.exported: Path | None = None

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        out = self.dirpath or os.path.join(trainer.default_root_dir, "head")
        ckpt_cb = trainer.checkpoint_callback
        best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
        if best:
            score = getattr(ckpt_cb, "best_model_score", None)
            info = {"monitor": getattr(ckpt_cb, "monitor", None),
                    "best_score": None if score is None else float(score)}
            self.exported = export_checkpoint(best, out, **info)
        else:
            head = pl_module.head
            head.info.update({"checkpoint": None})
            self.exported = save(head.cpu().eval(), out)
        print(f"exported deferral head to {self.exported}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a deferral head from a Lightning checkpoint")
    parser.add_argument("--ckpt", required=True, help="DeferralModule checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="output directory (head.json + head.safetensors)")
    args = parser.parse_args(argv)
    try:
        print(export_checkpoint(args.ckpt, args.out))
    except (CheckpointError, ValueError) as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
