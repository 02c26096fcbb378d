"""LightningCLI entry point for training deferral heads.

    python -m training.deferral fit --config training/deferral/configs/cascade.yaml --data.logs runs/logs/train

Any option can be overridden on the command line (``--model.hidden_sizes=[128,128]``,
``--trainer.max_epochs=5``); ``--print_config`` shows the full resolved configuration.
"""

from __future__ import annotations

from typing import Any

from training.deferral._lightning import LightningCLI
from training.deferral.data import LogsDataModule
from training.deferral.module import DeferralModule

__all__ = ["cli_main"]


def cli_main(args: Any = None, run: bool = True) -> LightningCLI:
    return LightningCLI(
        DeferralModule,
        LogsDataModule,
        args=args,
        run=run,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    cli_main()
