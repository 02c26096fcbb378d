"""Lightning import with a fallback to the older ``pytorch_lightning`` package name."""

from __future__ import annotations

try:  # lightning >= 2.0 ships the trainer as lightning.pytorch
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI
except ImportError:  # pragma: no cover - exercised only where just pytorch_lightning is installed
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
    from pytorch_lightning.cli import LightningCLI

__all__ = ["Callback", "EarlyStopping", "LightningCLI", "ModelCheckpoint", "pl"]
