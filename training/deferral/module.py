"""LightningModule training a deferral head from :mod:`specref.heads` on logged probabilities.

Losses are proper scoring rules on the realized losses (specref.heads.targets): BCE (log loss, default) or
Brier. Validation reports the loss, calibration (ECE per output), ranking (AUC per output, hard targets
only) and the offline objective L_spec of the learned rule at ``eval_alphas`` (specref.logs.offline), which
is what deferral ultimately cares about.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from specref.heads.features import FeatureSpec, candidate_set, context_features, token_features
from specref.heads.modules import CascadeHead, Head, TokenHead
from specref.heads.targets import cascade_targets, token_targets
from specref.logs.offline import (
    cascade_decisions,
    cascade_outcome,
    learned_token_decisions,
    token_outcome_candidates,
)
from training.deferral._lightning import pl
from training.deferral.metrics import auc, ece

__all__ = ["DeferralModule"]

OBJECTIVES = ("bce", "brier")
CANDIDATE_WEIGHTS = ("uniform", "draft")
_SCALER_ROWS = 20000


class DeferralModule(pl.LightningModule):
    """Trains a :class:`CascadeHead` or :class:`TokenHead` (an MLP body; ``hidden_sizes=[]`` is logistic
    regression).

    Args:
        kind: ``"cascade"`` (estimate E[l(q)], E[l(p)]) or ``"token"`` (estimate P(y = v) per candidate).
        k: sorted top probabilities per model among the features.
        candidates: token heads: top-``candidates`` tokens of each model form the scored set.
        hidden_features: hidden-state columns to read (``draft_hidden``, ``target_hidden``) ...
        hidden_dims: ... and their widths (as in the logs).
        hidden_sizes: MLP hidden layer widths.
        loss: cascade heads: the 0-1 loss estimated, ``"argmax"`` or ``"sampled"``.
        truth: ``"reference"`` (teacher-forced logs) or ``"target"`` (P = p; on-policy logs).
        objective: ``"bce"`` or ``"brier"``.
        candidate_weight: token heads: weight candidates ``"uniform"``ly or by their ``"draft"``
            probability (the decisions that matter most are on tokens the draft actually proposes).
        eval_alphas: alphas at which validation reports the learned rule's L_spec.
    """

    def __init__(
        self,
        kind: str = "cascade",
        k: int = 4,
        candidates: int = 8,
        hidden_features: Sequence[str] = (),
        hidden_dims: Sequence[int] = (),
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "gelu",
        dropout: float = 0.0,
        loss: str = "argmax",
        truth: str = "reference",
        objective: str = "bce",
        candidate_weight: str = "uniform",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        eval_alphas: Sequence[float] = (0.1, 0.3, 0.5),
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if candidate_weight not in CANDIDATE_WEIGHTS:
            raise ValueError(f"candidate_weight must be one of {CANDIDATE_WEIGHTS}, got {candidate_weight!r}")
        self.save_hyperparameters()
        spec = FeatureSpec(kind=kind, k=k, candidates=candidates if kind == "token" else 0,
                           hidden=tuple(hidden_features), hidden_dims=tuple(hidden_dims))
        body = {"type": "mlp", "in_dim": spec.dim, "out_dim": 2 if kind == "cascade" else 1,
                "hidden": list(hidden_sizes), "activation": activation, "dropout": dropout}
        info = {"trained_with": "lightning", "truth": truth, "objective": objective}
        self.head: Head = (CascadeHead(spec, body, target=loss, info=info) if kind == "cascade"
                           else TokenHead(spec, body, info=info))
        self._val: list[dict[str, Tensor]] = []

    # -- data ------------------------------------------------------------------------------------------
    def _features(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(features, targets, weights) for the batch; token heads flatten valid candidates."""
        hp = self.hparams
        spec = self.head.spec
        if spec.kind == "cascade":
            x = context_features(batch, spec)
            y = cascade_targets(batch, hp.loss, hp.truth)
            return x, y, torch.ones_like(y)
        _, x, valid = token_features(batch, spec)
        y, _ = token_targets(batch, spec.candidates, hp.truth)
        if hp.candidate_weight == "draft":
            w = candidate_set(batch, spec.candidates)[1]
        else:
            w = torch.ones_like(y)
        return x[valid], y[valid].unsqueeze(-1), w[valid].unsqueeze(-1)

    def setup(self, stage: str | None = None) -> None:
        """Check the logs fit the head, and fit the standardiser on training features (a checkpoint restored
        afterwards overwrites it with the saved values)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or getattr(dm, "train", None) is None:
            return
        layout = dm.layout
        spec = self.head.spec
        if layout.top_k < spec.top_k:
            raise ValueError(f"the head needs top-{spec.top_k} lists, the logs keep top-{layout.top_k}")
        for name, dim in zip(spec.hidden, spec.hidden_dims):
            if layout.hidden.get(name) != dim:
                raise ValueError(f"the head reads {name} of width {dim}, the logs have {layout.hidden.get(name)}")
        if self.hparams.truth == "reference" and not layout.reference:
            raise ValueError("these logs have no reference token: train with truth='target'")
        if stage == "fit":
            n = int(dm.train["q_max"].shape[0])
            gen = torch.Generator().manual_seed(0)
            idx = torch.randperm(n, generator=gen)[:_SCALER_ROWS]
            sample = {k: v[idx] for k, v in dm.train.items() if isinstance(v, Tensor)}
            x, _, _ = self._features(sample)
            self.head.scaler.fit(x)

    # -- steps -----------------------------------------------------------------------------------------
    def _loss(self, logits: Tensor, y: Tensor, w: Tensor) -> Tensor:
        if self.hparams.objective == "bce":
            per = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        else:
            per = (torch.sigmoid(logits) - y) ** 2
        return (per * w).sum() / w.sum().clamp_min(1e-12)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        x, y, w = self._features(batch)
        loss = self._loss(self.head.logits(x), y, w)
        self.log("train_loss", loss, prog_bar=True, batch_size=int(y.shape[0]))
        return loss

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        x, y, w = self._features(batch)
        logits = self.head.logits(x)
        loss = self._loss(logits, y, w)
        self.log("val_loss", loss, prog_bar=True, batch_size=int(y.shape[0]))
        entry = {"prob": torch.sigmoid(logits).detach().cpu(), "target": y.cpu(), "weight": w.cpu()}
        entry.update(self._lspec(batch))
        self._val.append(entry)

    @torch.no_grad()
    def _lspec(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Sum over the batch of the learned rule's L_spec per eval alpha (reference truth only)."""
        hp = self.hparams
        if hp.truth != "reference" or not hp.eval_alphas:
            return {}
        loss = hp.loss if self.head.kind == "cascade" else "sampled"
        out = []
        if self.head.kind == "cascade":
            est = self.head.predict(context_features(batch, self.head.spec))
            for a in hp.eval_alphas:
                o = cascade_outcome(cascade_decisions("learned", batch, float(a), estimates=est), batch)
                out.append(o.l_spec(float(a), loss).sum())
        else:
            from specref.logs.evaluate import head_estimates

            scores = head_estimates(self.head, batch)
            valid = candidate_set(batch, batch["q_topk_ids"].shape[-1])[3]
            vocab = self.trainer.datamodule.layout.vocab_size
            for a in hp.eval_alphas:
                d, tail = learned_token_decisions(scores, valid, float(a))
                o = token_outcome_candidates(batch, d, tail, vocab)
                out.append(o.l_spec(float(a), loss).sum())
        return {"lspec_sum": torch.stack(out).cpu(), "rows": torch.tensor(float(batch["q_max"].shape[0]))}

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        prob = torch.cat([e["prob"] for e in self._val])
        target = torch.cat([e["target"] for e in self._val])
        weight = torch.cat([e["weight"] for e in self._val])
        names = ("q", "p") if self.head.kind == "cascade" else ("token",)
        for o, name in enumerate(names):
            self.log(f"val_ece_{name}", ece(prob[:, o], target[:, o], weight=weight[:, o]))
            a = auc(prob[:, o], target[:, o])
            if not math.isnan(a):
                self.log(f"val_auc_{name}", a)
        if "lspec_sum" in self._val[0]:
            rows = sum(float(e["rows"]) for e in self._val)
            total = torch.stack([e["lspec_sum"] for e in self._val]).sum(0) / max(rows, 1.0)
            for a, v in zip(self.hparams.eval_alphas, total.tolist()):
                self.log(f"val_lspec_{float(a):g}", v)
            self.log("val_lspec", float(total.mean()))
        self._val = []

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.head.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
