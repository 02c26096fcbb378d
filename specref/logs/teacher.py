"""Logging a draft/target pair: teacher-forced over task references, or on-policy through the decoder.

Model plumbing only; the per-position math is :func:`specref.position_summary.summarize`.

* :func:`log_teacher_forced`: feed each example's reference completion to both models in one batched
  forward each (causal LMs: ``prompt + completion``; seq2seq: encoder ``prompt``, decoder
  ``start + completion[:-1]``) and log the untempered distributions at every completion position, with the
  reference token as the truth. Batched, device-agnostic, resumable (completed examples are skipped).
* :func:`log_on_policy`: decode with :class:`specref.decode.SpecCascadeDecoder` and log every position on
  the emitted path (each round's positions up to the first rejection), with the drafted token; no reference
  (train on such logs with ``truth="target"``). The rule's inputs are captured by wrapping the rule, and
  rows are matched to rounds through the decoder's ``on_round`` hook.

Distributions are cut to the pair's shared vocabulary exactly as the decoder cuts them
(:func:`specref.decode.shared_vocab_size`), so logged and live summaries agree.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from specref.logs.schema import LogLayout
from specref.position_summary import DEFAULT_ALPHAS, DEFAULT_TAIL_POINTS, DEFAULT_TOP_K, summarize
from specref.rules import Rule

__all__ = ["LogExample", "RecordingRule", "encode_examples", "log_on_policy", "log_teacher_forced", "pair_vocab"]

HIDDEN_ROLES = {"draft": "draft_hidden", "target": "target_hidden"}


@dataclass(frozen=True)
class LogExample:
    """One example as token ids. ``index`` is its position in the task split (the resume key)."""

    index: int
    id: str
    prompt: tuple[int, ...]
    completion: tuple[int, ...] = ()


def encode_examples(task: Any, examples: Sequence[Any], tokenizer: Any, start: int = 0) -> list[LogExample]:
    """Tokenize task examples the way the zoo trains on them (training/zoo/data.py).

    seq2seq: encoder input ``tok(prompt)`` and completion ``tok(completion)`` (both end with EOS, which the
    tokenizer appends); causal: ``tok(prompt)`` then ``tok(completion, add_special_tokens=False) + [eos]``.
    """
    out = []
    causal = task.model_family == "causal"
    for i, ex in enumerate(examples):
        prompt = tokenizer(task.format_prompt(ex))["input_ids"]
        if causal:
            completion = tokenizer(task.format_completion(ex), add_special_tokens=False)["input_ids"]
            if tokenizer.eos_token_id is not None:
                completion = [*completion, tokenizer.eos_token_id]
        else:
            completion = tokenizer(task.format_completion(ex))["input_ids"]
        out.append(LogExample(start + i, str(ex.id), tuple(prompt), tuple(completion)))
    return out


def pair_vocab(draft: Any, target: Any, tokenizer: Any = None, vocab_size: int | None = None) -> int:
    """The shared vocabulary size the decoder would use for this pair."""
    from specref.decode import ModelAdapter, shared_vocab_size

    return shared_vocab_size(ModelAdapter(draft, "draft"), ModelAdapter(target, "target"), tokenizer, None,
                             vocab_size)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _pad(rows: Sequence[Sequence[int]], value: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Right-padded ``[B, W]`` ids and mask (teacher forcing: padding after a row never affects it)."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def _teacher_forward(
    model: Any, batch: Sequence[LogExample], vocab: int, hidden: bool
) -> tuple[Tensor, Tensor | None]:
    """Untempered probabilities ``[B, T, V]`` at every completion position (T = longest completion), and
    the last hidden states ``[B, T, H]`` that produced them (or None)."""
    dev = _device(model)
    t_max = max(len(e.completion) for e in batch)
    if model.config.is_encoder_decoder:
        enc_ids, enc_mask = _pad([e.prompt for e in batch], 0, dev)
        start = int(model.config.decoder_start_token_id)
        dec_ids, dec_mask = _pad([(start, *e.completion[:-1]) for e in batch], 0, dev)
        out = model(input_ids=enc_ids, attention_mask=enc_mask, decoder_input_ids=dec_ids,
                    decoder_attention_mask=dec_mask, output_hidden_states=hidden, return_dict=True)
        logits = out.logits[:, :t_max]
        hs = out.decoder_hidden_states[-1][:, :t_max] if hidden else None
    else:
        if any(not e.prompt for e in batch):
            raise ValueError("causal logging needs a non-empty prompt for every example")
        ids, mask = _pad([(*e.prompt, *e.completion) for e in batch], 0, dev)
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden, return_dict=True)
        # The distribution of completion token t comes from position len(prompt) - 1 + t.
        idx = torch.tensor([[len(e.prompt) - 1 + t for t in range(t_max)] for e in batch], device=dev)
        idx = idx.clamp(max=ids.shape[1] - 1)
        logits = out.logits.gather(1, idx.unsqueeze(-1).expand(-1, -1, out.logits.shape[-1]))
        hs = None
        if hidden:
            last = out.hidden_states[-1]
            hs = last.gather(1, idx.unsqueeze(-1).expand(-1, -1, last.shape[-1]))
    probs = torch.softmax(logits[..., :vocab].float(), dim=-1)
    return probs, (hs.float() if hs is not None else None)


def _summaries(
    q: Tensor,  # [N, V]
    p: Tensor,  # [N, V]
    reference: Tensor | None,  # [N]
    layout: LogLayout,
    chunk: int,
) -> dict[str, Tensor]:
    """:func:`summarize` in row chunks (full-vocabulary float64 temporaries are the memory peak)."""
    parts: list[dict[str, Tensor]] = []
    for s in range(0, q.shape[0], chunk):
        ref = None if reference is None else reference[s : s + chunk]
        parts.append(summarize(q[s : s + chunk], p[s : s + chunk], top_k=layout.top_k, reference=ref,
                               tail_points=layout.tail_points, alphas=layout.alphas or None))
    if not parts:
        return {}
    return {k: torch.cat([part[k] for part in parts]).cpu() for k in parts[0]}


def _resume(writer: Any, examples: Sequence[Any], desc: str, progress: bool) -> tuple[list[Any], Any]:
    """The examples a resumed log still lacks (in index order), and a progress bar already counting the rest."""
    todo_idx = set(writer.pending(e.index for e in examples))
    todo = sorted((e for e in examples if e.index in todo_idx), key=lambda e: e.index)
    bar = _progress(len(examples), desc, progress)
    bar.update(len(examples) - len(todo))
    return todo, bar


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=not enabled, dynamic_ncols=True)


def _batches(items: Sequence[LogExample], size: int) -> Iterable[list[LogExample]]:
    for s in range(0, len(items), size):
        yield list(items[s : s + size])


def log_teacher_forced(
    draft: Any,
    target: Any,
    examples: Sequence[LogExample],
    out: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    vocab_size: int | None = None,
    top_k: int = DEFAULT_TOP_K,
    tail_points: int = DEFAULT_TAIL_POINTS,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    hidden: Sequence[str] = (),
    batch_size: int = 8,
    examples_per_shard: int = 64,
    chunk_rows: int = 256,
    source: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Teacher-forced logs of ``examples`` (see the module docstring) into ``out``; returns ``out``.

    ``hidden`` names the models whose last hidden states to log (``"draft"``, ``"target"``). Examples whose
    index is already in a completed shard of ``out`` are skipped, so a killed job resumes where it stopped.
    The log is marked finished when every given example is logged.
    """
    from specref.logs.store import LogWriter

    if draft.config.is_encoder_decoder != target.config.is_encoder_decoder:
        raise ValueError("draft and target must both be causal LMs or both seq2seq")
    for role in hidden:
        if role not in HIDDEN_ROLES:
            raise ValueError(f"hidden must name 'draft' and/or 'target', got {role!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from specref.decode import ModelAdapter

    vocab = pair_vocab(draft, target, tokenizer, vocab_size)
    dims = {HIDDEN_ROLES[r]: ModelAdapter(m, r).hidden_size for r, m in (("draft", draft), ("target", target))
            if r in hidden}
    layout = LogLayout(top_k=min(top_k, vocab), vocab_size=vocab, tail_points=tail_points,
                       alphas=tuple(alphas), reference=True, hidden=dims)
    src = {"mode": "teacher_forced", **dict(source or {})}
    with LogWriter(out, layout, source=src, examples_per_shard=examples_per_shard, overwrite=overwrite) as writer:
        todo, bar = _resume(writer, examples, "logging", progress)
        for batch in _batches(todo, batch_size):
            nonempty = [e for e in batch if e.completion]
            rows_by_example: dict[int, dict[str, Any]] = {}
            if nonempty:
                q, hq = _teacher_forward(draft, nonempty, vocab, "draft" in hidden)
                p, hp = _teacher_forward(target, nonempty, vocab, "target" in hidden)
                p = p.to(q.device)  # the pair may sit on two devices; the summary math needs one
                valid = torch.zeros(q.shape[:2], dtype=torch.bool, device=q.device)
                ref = torch.zeros(q.shape[:2], dtype=torch.long, device=q.device)
                for i, e in enumerate(nonempty):
                    valid[i, : len(e.completion)] = True
                    ref[i, : len(e.completion)] = torch.tensor(e.completion, device=q.device)
                if int(ref.max()) >= vocab:
                    raise ValueError(f"a reference token id is outside the shared vocabulary of {vocab} tokens")
                summary = _summaries(q[valid], p[valid], ref[valid], layout, chunk_rows)
                if hq is not None:
                    summary["draft_hidden"] = hq[valid].cpu()
                if hp is not None:
                    summary["target_hidden"] = hp[valid].cpu()
                offset = 0
                for e in nonempty:
                    n = len(e.completion)
                    rows = {k: v[offset : offset + n] for k, v in summary.items()}
                    rows["position"] = torch.arange(n)
                    rows_by_example[e.index] = rows
                    offset += n
            for e in batch:
                writer.add_example(e.index, e.id, rows_by_example.get(e.index) or _empty_rows(layout))
            bar.update(len(batch))
        bar.close()
        writer.finish()
    return Path(out)


def _empty_rows(layout: LogLayout) -> dict[str, Any]:
    import numpy as np

    from specref.logs.schema import columns

    out: dict[str, Any] = {}
    for col in columns(layout):
        if col.name in ("example_index", "example_id"):
            continue
        out[col.name] = np.zeros((0, col.width) if col.width else (0,))
    return out


# ---- on-policy logging -------------------------------------------------------------------------------


class _WantsHidden:
    wants_hidden = True


class RecordingRule(Rule):
    """Delegates every decision to ``inner`` and keeps the inputs of its latest call (the decoder calls the
    rule once per round, inside verify_block), so an ``on_round`` hook can log full distributions."""

    def __init__(self, inner: Any, want_hidden: bool = False) -> None:
        self.inner = inner
        self.alpha = inner.alpha
        self.name = inner.name
        self.token_level = inner.token_level
        self.needs_target = inner.needs_target
        inner_head = getattr(inner, "head", None)
        if want_hidden or getattr(inner_head, "wants_hidden", False):
            self.head = _WantsHidden()  # the decoder reads head.wants_hidden to pass hidden states
        self.last: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RecordingRule({self.inner!r})"

    def __call__(self, q, p, q_rule=None, p_rule=None, features=None, validate=True):
        self.last = {"q_rule": q if q_rule is None else q_rule, "p_rule": p if p_rule is None else p_rule,
                     "features": features}
        inner_features = features if getattr(getattr(self.inner, "head", None), "wants_hidden", False) else None
        return self.inner(q, p, q_rule=q_rule, p_rule=p_rule, features=inner_features, validate=validate)


def log_on_policy(
    draft: Any,
    target: Any,
    examples: Sequence[LogExample],
    out: str | os.PathLike[str],
    *,
    rule: Any = "specdecode",
    alpha: float | None = None,
    gamma: int = 5,
    tokenizer: Any = None,
    vocab_size: int | None = None,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    eos_token_id: int | None = None,
    top_k: int = DEFAULT_TOP_K,
    tail_points: int = DEFAULT_TAIL_POINTS,
    hidden: Sequence[str] = (),
    batch_size: int = 8,
    examples_per_shard: int = 64,
    source: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    rule_options: Mapping[str, Any] | None = None,
) -> Path:
    """On-policy logs: decode each prompt with the speculative cascade and log the emitted path.

    Rows: every position where a token was emitted, with ``drafted`` (-1 at a bonus position), its draft and
    target probabilities, and the usual summaries; no reference. Row i's decoding uses seed ``seed + index``,
    so a resumed job reproduces the rows an uninterrupted one would have written. ``eos_token_id`` None (the
    default) ends a row at any EOS id of the target's generation config or the tokenizer, as the decoder's
    ``generate`` does. It decodes with the reference engine: the log records what the rule object saw.
    """
    from specref import rules as rules_mod
    from specref.decode import SpecCascadeDecoder
    from specref.logs.store import LogWriter

    inner = rules_mod.get(rule, alpha=alpha, **dict(rule_options or {})) if isinstance(rule, str) else rule
    recorder = RecordingRule(inner, want_hidden=bool(hidden))
    dec = SpecCascadeDecoder(draft, target, recorder, gamma, tokenizer=tokenizer, vocab_size=vocab_size)
    vocab = dec.vocab
    dims = {}
    for role in hidden:
        if role not in HIDDEN_ROLES:
            raise ValueError(f"hidden must name 'draft' and/or 'target', got {role!r}")
        ad = dec.draft if role == "draft" else dec.target
        dims[HIDDEN_ROLES[role]] = ad.hidden_size
    layout = LogLayout(top_k=min(top_k, vocab), vocab_size=vocab, tail_points=tail_points, alphas=(),
                       reference=False, on_policy=True, hidden=dims)
    src = {"mode": "on_policy", "rule": repr(inner), "gamma": gamma, "temperature": temperature,
           "max_new_tokens": max_new_tokens, "seed": seed, **dict(source or {})}
    dev = dec.device
    with LogWriter(out, layout, source=src, examples_per_shard=examples_per_shard, overwrite=overwrite) as writer:
        todo, bar = _resume(writer, examples, "logging (on-policy)", progress)
        for batch in _batches(todo, batch_size):
            width = max(len(e.prompt) for e in batch)
            ids = torch.tensor([[0] * (width - len(e.prompt)) + list(e.prompt) for e in batch], device=dev)
            mask = torch.tensor([[0] * (width - len(e.prompt)) + [1] * len(e.prompt) for e in batch], device=dev)
            collected: list[list[dict[str, Tensor]]] = [[] for _ in batch]
            hook = _round_hook(recorder, collected, layout)
            dec.generate(ids, mask, max_new_tokens=max_new_tokens, temperature=temperature,
                         seed=[seed + e.index for e in batch], eos_token_id=eos_token_id, on_round=hook)
            for e, parts in zip(batch, collected):
                if parts:
                    rows = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
                else:
                    rows = _empty_rows(layout)
                writer.add_example(e.index, e.id, rows)
            bar.update(len(batch))
        bar.close()
        writer.finish()
    return Path(out)


def _round_hook(recorder: RecordingRule, collected: list[list[dict[str, Tensor]]], layout: LogLayout
                ) -> Callable[[Any], None]:
    def hook(record: Any) -> None:
        last = recorder.last
        if last is None:
            return
        q_rule, p_rule = last["q_rule"], last["p_rule"]  # [B, g + 1, V]
        b, g1, _ = p_rule.shape
        j = torch.arange(g1, device=p_rule.device).unsqueeze(0)
        keep = j < record.emitted.unsqueeze(1)  # positions whose token was emitted: on the path
        if not bool(keep.any()):
            return
        drafts = torch.cat([record.drafts, torch.full((b, 1), -1, device=p_rule.device, dtype=torch.long)], 1)
        s = summarize(q_rule[keep], p_rule[keep], top_k=layout.top_k, tail_points=layout.tail_points)
        d = drafts[keep]
        safe = d.clamp_min(0).unsqueeze(-1)
        s["drafted"] = d
        s["q_drafted"] = torch.where(d >= 0, q_rule[keep].gather(-1, safe).squeeze(-1), 0.0)
        s["p_drafted"] = torch.where(d >= 0, p_rule[keep].gather(-1, safe).squeeze(-1), 0.0)
        s["position"] = (record.start.unsqueeze(1) + j).expand(b, g1)[keep]
        feats = last["features"] or {}
        for name in layout.hidden:
            s[name] = feats[name][keep].float()
        owner = record.row_ids.unsqueeze(1).expand(b, g1)[keep]
        s = {k: v.detach().cpu() for k, v in s.items()}
        owner_list = owner.cpu().tolist()
        for row in sorted(set(owner_list)):
            sel = torch.tensor([o == row for o in owner_list])
            collected[row].append({k: v[sel] for k, v in s.items()})

    return hook
