"""LightningDataModule over logged probabilities (specref.logs), split by example id.

Batches are dicts of summary columns (the same dict a head builds at decode time), so the LightningModule
computes features with the head's own feature code and the data module stays head-agnostic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from specref.logs.schema import LogLayout
from specref.logs.split import holdout_mask
from training.deferral._lightning import pl

__all__ = ["LogsDataModule", "load_summary"]

# The exact token-rule columns are for offline evaluation only; training never reads them.
_SKIP_PREFIXES = ("token_v1_", "token_v2_", "token_v3_")


def load_summary(paths: str | Sequence[str]) -> tuple[dict[str, Any], LogLayout]:
    """Validated columns of one or more log directories, without the evaluation-only columns."""
    from specref.logs.store import read_summary

    return read_summary(paths, skip=_SKIP_PREFIXES)


def select(summary: Mapping[str, Any], mask: Tensor) -> dict[str, Any]:
    idx = mask.nonzero().squeeze(-1)
    out: dict[str, Any] = {}
    for name, value in summary.items():
        out[name] = [value[i] for i in idx.tolist()] if isinstance(value, list) else value[idx]
    return out


def _check_disjoint(train_ids: Sequence[str], val_ids: Sequence[str]) -> None:
    """Validation examples that are also trained on would make every validation metric optimistic."""
    shared = sorted(set(train_ids) & set(val_ids))
    if shared:
        shown = ", ".join(repr(e) for e in shared[:5]) + (", ..." if len(shared) > 5 else "")
        raise ValueError(f"the validation logs share {len(shared)} examples with the training logs ({shown}); "
                         "validate on held-out examples only")


class _Rows(Dataset):
    """Indexable by a LIST of row indices (used with a BatchSampler): one gather per batch, no collate."""

    def __init__(self, summary: Mapping[str, Any]) -> None:
        self.data = {k: v for k, v in summary.items() if isinstance(v, Tensor)}
        self.n = int(next(iter(self.data.values())).shape[0]) if self.data else 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        return {k: v.index_select(0, index) for k, v in self.data.items()}


class LogsDataModule(pl.LightningDataModule):
    """Train/validation rows from logs.

    Args:
        logs: log directory (or list) to train on.
        val_logs: separate validation logs; if None, ``val_fraction`` of the EXAMPLES of ``logs`` are held out
            by a hash of their id (:func:`specref.logs.split.holdout_mask`, the split ``specref evaluate
            --holdout`` reproduces).
        val_fraction: fraction of examples held out when ``val_logs`` is None.
        split_seed: seed of the hash split.
        batch_size: rows (positions) per batch.
        max_train_rows: optional cap on training rows (a fixed random subset), for quick runs.
    """

    def __init__(
        self,
        logs: str | list[str],
        val_logs: str | list[str] | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 1024,
        num_workers: int = 0,
        max_train_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train: dict[str, Any] | None = None
        self.val: dict[str, Any] | None = None
        self.layout: LogLayout | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        hp = self.hparams
        summary, self.layout = load_summary(hp.logs)
        if hp.val_logs is not None:
            train, (val, _) = summary, load_summary(hp.val_logs)
            _check_disjoint(train["example_id"], val["example_id"])
        else:
            held = holdout_mask(summary["example_id"], hp.val_fraction, hp.split_seed)
            train, val = select(summary, ~held), select(summary, held)
        n_train = int(train["q_max"].shape[0])
        if hp.max_train_rows is not None and n_train > hp.max_train_rows:
            gen = torch.Generator().manual_seed(hp.split_seed)
            keep = torch.zeros(n_train, dtype=torch.bool)
            keep[torch.randperm(n_train, generator=gen)[: hp.max_train_rows]] = True
            train = select(train, keep)
        if int(train["q_max"].shape[0]) == 0:
            raise ValueError("no training rows: the logs are empty or every example was held out")
        if int(val["q_max"].shape[0]) == 0:
            raise ValueError("no validation rows: raise val_fraction or pass val_logs")
        self.train, self.val = train, val

    def _loader(self, summary: Mapping[str, Any], shuffle: bool) -> DataLoader:
        rows = _Rows(summary)
        if shuffle:
            gen = torch.Generator().manual_seed(self.hparams.split_seed)
            base: Any = RandomSampler(rows, generator=gen)
        else:
            base = SequentialSampler(rows)
        sampler = BatchSampler(base, batch_size=self.hparams.batch_size, drop_last=False)
        return DataLoader(rows, sampler=sampler, batch_size=None, num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        assert self.train is not None, "call setup() first"
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val is not None, "call setup() first"
        return self._loader(self.val, shuffle=False)
