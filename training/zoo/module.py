"""The LightningModule around a zoo model: AdamW, warmup + cosine decay over a TIME (or step) budget,
periodic validation loss with the best weights kept in memory.

Why a time-based schedule: all six models train at once on shared GPUs for a fixed wall-clock budget, so
the number of steps is unknown in advance; the learning rate follows the fraction of the budget used.
"""

from __future__ import annotations

import copy
import math
import time

import torch

try:  # the GPU machine may only have the old package name
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on the environment
    import pytorch_lightning as pl


def lr_factor(progress: float, warmup_frac: float, min_lr_frac: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_lr_frac``; ``progress`` in [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup_frac > 0 and progress < warmup_frac:
        return progress / warmup_frac
    span = max(1e-9, 1.0 - warmup_frac)
    cosine = 0.5 * (1.0 + math.cos(math.pi * (progress - warmup_frac) / span))
    return min_lr_frac + (1.0 - min_lr_frac) * cosine


def training_loss(model, batch: dict, label_smoothing: float = 0.0) -> torch.Tensor:
    """The model's token cross-entropy, optionally label-smoothed (training only: validation stays plain NLL).

    ``batch`` holds ``labels`` ``[B, T]`` with -100 on ignored positions; causal models predict ``labels[t+1]``
    from position t (HF's convention), seq2seq models ``labels[t]`` at decoder position t.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if label_smoothing == 0.0:
        return model(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    if model.config.is_encoder_decoder:
        # T5 builds its decoder inputs from the labels when none are given
        inputs.setdefault("decoder_input_ids", model.prepare_decoder_input_ids_from_labels(labels=labels))
        logits = model(**inputs).logits  # [B, T, V]
    else:
        logits = model(**inputs).logits[:, :-1]  # [B, T - 1, V]
        labels = labels[:, 1:]
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                             label_smoothing=label_smoothing)


class ZooModule(pl.LightningModule):
    """Trains ``model`` on its own HF loss; ``budget_s`` or ``max_steps`` defines training progress."""

    def __init__(self, model, spec: dict, val_batches: list[dict], budget_s: float | None,
                 max_steps: int | None) -> None:
        super().__init__()
        if budget_s is None and max_steps is None:
            raise ValueError("give a time budget or a step budget")
        self.model = model
        self.spec = spec
        self.val_batches = val_batches
        self.budget_s = budget_s
        self.max_steps_budget = max_steps
        self.start = None
        self.next_val = spec["val_every_frac"]
        self.best_val = math.inf
        self.best_state: dict | None = None
        self.best_step = 0
        self.history: list[dict] = []
        self.recent_losses: list[float] = []
        self.skipped_steps = 0

    def progress(self) -> float:
        parts = []
        if self.budget_s is not None and self.start is not None:
            parts.append((time.monotonic() - self.start) / self.budget_s)
        if self.max_steps_budget:
            parts.append(self.global_step / self.max_steps_budget)
        return max(parts) if parts else 0.0

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
        groups = [{"params": decay, "weight_decay": self.spec["weight_decay"]},
                  {"params": no_decay, "weight_decay": 0.0}]
        # Not fused: Lightning's gradient clipping under AMP needs the optimizer to leave unscaling to it.
        return torch.optim.AdamW(groups, lr=self.spec["lr"], betas=tuple(self.spec["betas"]))

    def on_train_start(self) -> None:
        self.start = time.monotonic()

    def on_train_batch_start(self, batch, batch_idx) -> None:
        factor = lr_factor(self.progress(), self.spec["warmup_frac"], self.spec["min_lr_frac"])
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = self.spec["lr"] * factor

    def training_step(self, batch, batch_idx):
        loss = training_loss(self.model, batch, self.spec.get("label_smoothing", 0.0))
        value = float(loss.detach())  # one sync per step: negligible at these sizes
        if not math.isfinite(value):
            self.skipped_steps += 1
            return None  # Lightning skips backward and the optimizer step
        self.recent_losses.append(value)
        self.recent_losses = self.recent_losses[-100:]
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip the gradient norm; skip the update entirely if it is not finite (a bf16 loss spike).

        Why here and not ``Trainer(gradient_clip_val=...)``: a non-finite norm would turn every weight into
        NaN after clipping; dropping the gradients makes AdamW skip the step instead.
        """
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.spec["grad_clip"])
        if not torch.isfinite(norm):
            self.skipped_steps += 1
            for p in params:
                p.grad = None

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.progress() >= self.next_val:
            self.next_val += self.spec["val_every_frac"]
            self.validate_now()

    def on_train_end(self) -> None:
        self.validate_now()

    @torch.no_grad()
    def validate_now(self) -> float:
        """Mean validation loss (token-weighted); keeps a CPU copy of the weights if it is the best."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        for batch in self.val_batches:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                logits = self.model(**batch).logits.float()
            labels = batch["labels"]
            if not self.model.config.is_encoder_decoder:
                logits, labels = logits[:, :-1], labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((labels != -100).sum())
        self.model.train(was_training)
        val = total / max(count, 1)
        elapsed = time.monotonic() - self.start if self.start else 0.0
        train = sum(self.recent_losses) / len(self.recent_losses) if self.recent_losses else float("nan")
        self.history.append({"step": int(self.global_step), "time_s": round(elapsed, 2),
                             "train_loss": round(train, 4), "val_loss": round(val, 4)})
        print(f"step {self.global_step} t={elapsed:.0f}s train_loss={train:.4f} val_loss={val:.4f}", flush=True)
        if val < self.best_val:
            self.best_val, self.best_step = val, int(self.global_step)
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return val

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(copy.deepcopy(self.best_state))
