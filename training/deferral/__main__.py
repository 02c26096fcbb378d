"""``python -m training.deferral {fit,validate} --config ...`` (LightningCLI)."""

from training.deferral.cli import cli_main

cli_main()
