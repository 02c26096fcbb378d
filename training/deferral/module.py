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

from specref import rules
from specref.heads.features import FeatureSpec, candidate_set, context_features, token_features
from specref.heads.modules import CascadeHead, Head, MixtureHead, TokenHead
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

OBJECTIVES = ("bce", "brier", "loglik")
_PROB_FLOOR = 1e-12  # log of a reference probability that underflowed to 0 stays finite
CANDIDATE_WEIGHTS = ("uniform", "draft")
_SCALER_ROWS = 20000


class DeferralModule(pl.LightningModule):
    """Trains a :class:`CascadeHead`, :class:`TokenHead` or :class:`MixtureHead` (an MLP body;
    ``hidden_sizes=[]`` is logistic regression).

    A mixture head is trained with the ``loglik`` objective (the only one it takes): for every logged position
    a price ``lam`` is drawn uniformly in ``[0, max_price]`` and the head's weight ``w`` at that price
    (:func:`specref.rules.mixture_weight`) is scored by ``-log((1 - w) q(y) + w p(y)) + lam * w * TV(p, q)``:
    the reference's negative log-likelihood under ``pi`` plus the price of the rejections it causes (Lemma 3:
    ``w * TV``). Summed over a sequence it is the sequence's log-likelihood against its expected rejections;
    unlike the 0-1 losses it is strictly convex in ``w``, so the best weight can be fractional.

    Args:
        kind: ``"cascade"`` (estimate E[l(q)], E[l(p)]), ``"token"`` (estimate P(y = v) per candidate) or
            ``"mixture"`` (a weight on the target per position and price).
        k: sorted top probabilities per model among the features.
        candidates: token heads: top-``candidates`` tokens of each model form the scored set.
        hidden_features: hidden-state columns to read (``draft_hidden``, ``target_hidden``) ...
        hidden_dims: ... and their widths (as in the logs).
        hidden_sizes: MLP hidden layer widths.
        loss: cascade heads: the 0-1 loss estimated, ``"argmax"`` or ``"sampled"``.
        truth: ``"reference"`` (teacher-forced logs) or ``"target"`` (P = p; on-policy logs).
        objective: ``"bce"`` or ``"brier"`` (cascade, token); ``"loglik"`` (mixture).
        max_price: mixture heads: prices are drawn in ``[0, max_price]``; validation reports the objective at
            ``eval_alphas`` as prices.
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
        max_price: float = 1.0,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if (kind == "mixture") != (objective == "loglik"):
            raise ValueError(f"objective {objective!r} with kind {kind!r}: a mixture head trains with objective "
                             "'loglik', cascade and token heads with 'bce' or 'brier'")
        if kind == "mixture" and truth != "reference":
            raise ValueError("a mixture head needs the reference token's probabilities (truth='reference'; "
                             "on-policy logs have none)")
        if not (math.isfinite(max_price) and max_price > 0):
            raise ValueError(f"max_price must be a finite number > 0, got {max_price!r}")
        if candidate_weight not in CANDIDATE_WEIGHTS:
            raise ValueError(f"candidate_weight must be one of {CANDIDATE_WEIGHTS}, got {candidate_weight!r}")
        self.save_hyperparameters()
        spec = FeatureSpec(kind=kind, k=k, candidates=candidates if kind == "token" else 0,
                           hidden=tuple(hidden_features), hidden_dims=tuple(hidden_dims))
        body = {"type": "mlp", "in_dim": spec.dim, "out_dim": 1 if kind == "token" else 2,
                "hidden": list(hidden_sizes), "activation": activation, "dropout": dropout}
        info = {"trained_with": "lightning", "truth": truth, "objective": objective}
        if kind == "mixture":
            info["max_price"] = float(max_price)
        self.head: Head = (CascadeHead(spec, body, target=loss, info=info) if kind == "cascade"
                           else MixtureHead(spec, body, info=info) if kind == "mixture"
                           else TokenHead(spec, body, info=info))
        self._val: list[dict[str, Tensor]] = []

    # -- data ------------------------------------------------------------------------------------------
    def _features(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(features, targets, weights) for the batch; token heads flatten valid candidates."""
        hp = self.hparams
        spec = self.head.spec
        if spec.kind == "mixture":
            x = context_features(batch, spec)
            y = torch.stack([batch["q_ref"].float(), batch["p_ref"].float(), batch["tv"].float()], dim=-1)
            return x, y, torch.ones_like(y[..., :1])
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
    def _mixture_loss(self, out: Tensor, y: Tensor, price: Tensor) -> Tensor:  # [N, 2], [N, 3], [N] -> [N]
        """``-log pi(y) + price * w * TV`` per row, ``y`` = (q(y), p(y), TV)."""
        w = rules.mixture_weight(out, price)
        pi_ref = ((1 - w) * y[..., 0] + w * y[..., 1]).clamp_min(_PROB_FLOOR)
        return -torch.log(pi_ref) + price * w * y[..., 2]

    def _prices(self, n: int) -> Tensor:
        """One price per row, uniform in [0, max_price] (the global generator: Lightning seeds it)."""
        return torch.rand(n, device=self.device) * float(self.hparams.max_price)

    def _loss(self, logits: Tensor, y: Tensor, w: Tensor) -> Tensor:
        if self.hparams.objective == "loglik":
            return self._mixture_loss(logits, y, self._prices(int(y.shape[0]))).mean()
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
        if self.head.kind == "mixture":
            self._validate_mixture(batch, logits, y)
            return
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

    @torch.no_grad()
    def _validate_mixture(self, batch: Mapping[str, Tensor], out: Tensor, y: Tensor) -> None:
        """The objective on a fixed price grid (``eval_alphas`` and ``max_price / 2``: deterministic, unlike the
        training draws) and the rule's offline L_spec (sampled loss) at ``eval_alphas``."""
        n = int(y.shape[0])
        prices = [*map(float, self.hparams.eval_alphas), float(self.hparams.max_price) / 2]
        per = torch.stack([self._mixture_loss(out, y, torch.full((n,), a, device=out.device)).sum()
                           for a in prices])
        lspec = torch.stack([cascade_outcome(rules.mixture_weight(out, a), batch).l_spec(a, "sampled").sum()
                             for a in map(float, self.hparams.eval_alphas)])
        self._val.append({"obj_sum": per.cpu(), "lspec_sum": lspec.cpu(), "rows": torch.tensor(float(n))})

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        if self.head.kind == "mixture":
            rows = max(sum(float(e["rows"]) for e in self._val), 1.0)
            obj = torch.stack([e["obj_sum"] for e in self._val]).sum(0) / rows
            lspec = torch.stack([e["lspec_sum"] for e in self._val]).sum(0) / rows
            self.log("val_loss", float(obj.mean()), prog_bar=True)
            for a, v, ls in zip(self.hparams.eval_alphas, obj.tolist(), lspec.tolist()):
                self.log(f"val_loglik_obj_{float(a):g}", v)
                self.log(f"val_lspec_{float(a):g}", ls)
            if len(lspec):
                self.log("val_lspec", float(lspec.mean()))
            self._val = []
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
