"""Training of the benchmark pair in the run: numerically safe, within a wall-clock budget."""

from __future__ import annotations

import math
import time
from typing import Any

from bench.lazy import F, torch


def batches(stream: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    hi = stream.numel() - seq - 1
    while True:
        starts = torch.randint(0, hi, (batch,), generator=gen)
        yield stream[starts.unsqueeze(1) + torch.arange(seq + 1)]


def train(model: Any, stream: torch.Tensor, seconds: float, device: str, batch: int, seq: int, lr: float,
          teacher: Any = None, warmup: int = 100, log_every: int = 50) -> dict[str, Any]:
    """Train for a wall-clock budget: next-token cross-entropy, or KL(teacher || model) when distilling.

    Safety: bf16 autocast on CUDA (fp32 master weights), linear warm-up then cosine decay to 10% of ``lr``
    over the budget, weight decay on matrices only, gradient clipping at 1, and a step whose loss or
    gradient norm is not finite is skipped (and ``lr`` halved). Raises if the weights end non-finite.
    """
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    cuda = device.startswith("cuda")
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=cuda)
    gen = torch.Generator().manual_seed(1 if teacher is None else 2)
    it = batches(stream, batch, seq, gen)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    losses, step, skipped, t0 = [], 0, 0, time.perf_counter()
    last = float("nan")
    while time.perf_counter() - t0 < seconds:
        x = next(it).to(device, non_blocking=True)
        inp, tgt = x[:, :-1], x[:, 1:]
        frac = min(1.0, (time.perf_counter() - t0) / max(seconds, 1e-9))
        cur = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = cur
        with amp:
            logits = model(input_ids=inp).logits.float()
            if teacher is None:
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
            else:
                with torch.no_grad():
                    t_logits = teacher(input_ids=inp).logits.float()
                loss = F.kl_div(F.log_softmax(logits, -1).reshape(-1, logits.shape[-1]),
                                F.log_softmax(t_logits, -1).reshape(-1, logits.shape[-1]),
                                log_target=True, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(loss)):
            skipped += 1
            lr *= 0.5
            step += 1
            continue
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not bool(torch.isfinite(norm)):  # never let a bad step poison the weights
            opt.zero_grad(set_to_none=True)
            skipped += 1
            lr *= 0.5
        else:
            opt.step()
        if step % log_every == 0:
            last = round(float(loss.detach()), 4)
            losses.append((step, last))
        step += 1
    model.eval()
    del opt
    for p in model.parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise RuntimeError("training produced non-finite weights")
    return {"steps": step, "skipped_steps": skipped, "seconds": round(time.perf_counter() - t0, 1),
            "tokens": step * batch * seq, "loss_curve": losses, "final_loss": last}
