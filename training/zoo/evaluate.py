"""Test-split evaluation of one trained model (greedy and T = 1 samples) and the pair's acceptance.

Runs on the training machine, which has no sacreBLEU / rouge-score: it writes predictions as JSON and the
scores are computed later by ``training.zoo.finalize`` with :mod:`specref.tasks`. The acceptance of the
pair is the expected lossless SpecDecode acceptance per drafted token at T = 1, i.e. the mean over
positions of 1 - TV(p_t, q_t), along sequences the target itself sampled at T = 1 (teacher-forced forward
of both models over those samples).
"""

from __future__ import annotations

import torch

from specref.tasks import Example, Task
from training.zoo.data import pad_right


def _order(examples: list[Example], task: Task) -> list[int]:
    """Indices sorted by prompt length, so batches waste little padding (results are put back in order)."""
    return sorted(range(len(examples)), key=lambda i: len(task.format_prompt(examples[i])))


@torch.no_grad()
def generate(model, tokenizer, task: Task, examples: list[Example], *, sample: bool, max_new_tokens: int,
             batch_size: int, seed: int, device: torch.device) -> tuple[list[str], list[dict]]:
    """Decoded completions in example order, and per example the prompt ids and generated ids (to </s>)."""
    texts: list[str] = [""] * len(examples)
    tokens: list[dict] = [{}] * len(examples)
    order = _order(examples, task)
    causal = not model.config.is_encoder_decoder
    torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        prompts = [tokenizer(task.format_prompt(examples[i]))["input_ids"] for i in idx]
        if causal:  # left padding so every row's continuation starts at the same column
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        else:
            ids, mask = pad_right(prompts, tokenizer.pad_token_id)
        options = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {
            "do_sample": False}
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=max_new_tokens, **options)
        new = out[:, ids.shape[1]:] if causal else out[:, 1:]  # drop the prompt / decoder start token
        for row, i in enumerate(idx):
            seq = new[row].tolist()
            if tokenizer.eos_token_id in seq:
                seq = seq[: seq.index(tokenizer.eos_token_id) + 1]
            tokens[i] = {"prompt": prompts[row], "generated": seq}
            texts[i] = tokenizer.decode(seq, skip_special_tokens=True).strip()
    return texts, tokens


@torch.no_grad()
def teacher_forced_probs(model, prompts: list[list[int]], generated: list[list[int]], pad_id: int,
                         start_id: int, device: torch.device) -> list[torch.Tensor]:
    """Per example, the model's next-token distributions [len(generated), V] along the given tokens."""
    if model.config.is_encoder_decoder:
        enc_ids, enc_mask = pad_right(prompts, pad_id)
        dec_ids, _ = pad_right([[start_id] + g[:-1] for g in generated], pad_id)
        logits = model(input_ids=enc_ids.to(device), attention_mask=enc_mask.to(device),
                       decoder_input_ids=dec_ids.to(device)).logits
        return [torch.softmax(logits[r, : len(g)].float(), -1) for r, g in enumerate(generated)]
    ids, mask = pad_right([p + g for p, g in zip(prompts, generated)], pad_id)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    return [torch.softmax(logits[r, len(p) - 1 : len(p) - 1 + len(g)].float(), -1)
            for r, (p, g) in enumerate(zip(prompts, generated))]


@torch.no_grad()
def acceptance(draft, target, samples: list[dict], pad_id: int, start_id: int, device: torch.device,
               batch_size: int = 128) -> dict:
    """Mean 1 - TV(p_t, q_t) over all positions of the target's own T = 1 samples (token-weighted)."""
    rows = [s for s in samples if s["generated"]]
    if not rows:
        raise ValueError("no target samples to measure acceptance on")
    total, count, per_seq = 0.0, 0, []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompts = [r["prompt"] for r in chunk]
        gens = [r["generated"] for r in chunk]
        ps = teacher_forced_probs(target, prompts, gens, pad_id, start_id, device)
        qs = teacher_forced_probs(draft, prompts, gens, pad_id, start_id, device)
        for p, q in zip(ps, qs):
            accept = 1.0 - 0.5 * (p - q).abs().sum(-1)
            total += float(accept.sum())
            count += accept.numel()
            per_seq.append(float(accept.mean()))
    return {"acceptance": total / count, "acceptance_seq_mean": sum(per_seq) / len(per_seq),
            "n_sequences": len(rows), "n_positions": count, "temperature": 1.0}
