"""Tokenized training data and batch collation for the zoo models.

Everything is tokenized once up front into lists of ids (the corpora are small), and batches are padded
dynamically, so no DataLoader workers are needed: six training processes share one machine's CPUs.
"""

from __future__ import annotations

import torch

from specref.tasks import Example, Task, get_task
from specref.zoo import get_spec

IGNORE = -100  # label value HF models skip in the loss


def task_of(pair: str) -> Task:
    return get_task(get_spec(pair).task)


def _split(cfg: dict, split: str) -> list[Example]:
    """Shipped examples, or for a config with its own ``difficulty`` the generator's splits at it."""
    if not cfg.get("difficulty"):
        return task_of(cfg["pair"]).load(split)
    from specref.tasks.builders import reasoning

    sizes = {**reasoning.SIZES, "train": 0}
    rows = reasoning.build_splits(sizes, difficulty=reasoning.Difficulty(**cfg["difficulty"]))[split]
    return [Example(**row) for row in rows]


def training_examples(cfg: dict, split: str) -> list[Example]:
    """The examples of ``split`` (the first ``train_limit`` / ``val_limit`` when configured)."""
    limit = cfg.get("train_limit") if split == "train" else cfg.get("val_limit")
    return _split(cfg, split)[:limit]


def eval_examples(cfg: dict) -> list[Example]:
    """The test examples a model is evaluated on (the first ``eval.limit`` when configured)."""
    return _split(cfg, "test")[: cfg["eval"].get("limit")]


class GeneratedProblems(torch.utils.data.IterableDataset):
    """An endless stream of fresh reasoning problems, tokenized, from the task's own generator.

    Why: arithmetic needs far more distinct examples than the 20k that ship; a stream never repeats, and
    generating + tokenizing in DataLoader workers costs no training time. Questions of the validation and
    test splits are skipped, so nothing held out is ever trained on. Worker ``w`` draws from seed
    ``seed + 7919 * w``: the stream is reproducible for a given number of workers.
    """

    def __init__(self, cfg: dict, tokenizer, chunk: int = 256) -> None:
        super().__init__()
        task = task_of(cfg["pair"])
        self.cfg, self.tokenizer, self.task, self.chunk = cfg, tokenizer, task, chunk
        self.held_out = {e.source for s in ("validation", "test") for e in _split(cfg, s)}
        self.difficulty = cfg.get("difficulty") or {}

    def __iter__(self):
        import random

        from specref.tasks.builders import reasoning

        info = torch.utils.data.get_worker_info()
        rng = random.Random(self.cfg["generated_seed"] + 7919 * (info.id if info else 0))
        while True:
            difficulty = reasoning.Difficulty(**self.difficulty)
            problems = [reasoning.generate_problem(rng, difficulty) for _ in range(self.chunk)]
            examples = [Example(id="gen", source=p["source"], reference=p["reference"], answer=p["answer"])
                        for p in problems if p["source"] not in self.held_out]
            yield from encode_causal(self.tokenizer, self.task, examples, self.cfg["max_source_len"], check=4)


def encode_seq2seq(tokenizer, task: Task, examples: list[Example], max_source: int, max_target: int):
    """(input ids, label ids) per example; both end with </s> (the tokenizer appends it)."""
    sources = tokenizer([task.format_prompt(e) for e in examples], truncation=True, max_length=max_source)
    targets = tokenizer([task.format_completion(e) for e in examples], truncation=True, max_length=max_target)
    return list(zip(sources["input_ids"], targets["input_ids"]))


def encode_causal(tokenizer, task: Task, examples: list[Example], max_total: int, check: int = 64):
    """(ids, labels) per example: <s> prompt completion </s>, loss only on the completion and </s>.

    Prompt and completion are tokenized separately and concatenated. That equals tokenizing the whole text
    because the byte-level pre-tokenizer always splits before the completion's leading space and BPE never
    merges across pre-tokens; the first ``check`` examples are verified against the joint tokenization.
    """
    prompts = tokenizer([task.format_prompt(e) for e in examples])["input_ids"]
    completions = tokenizer([task.format_completion(e) for e in examples], add_special_tokens=False)["input_ids"]
    joint = tokenizer([task.format_prompt(e) + task.format_completion(e) for e in examples[:check]])["input_ids"]
    for prompt, completion, full in zip(prompts, completions, joint):
        if prompt + completion != full:
            raise ValueError("prompt + completion tokens differ from the joint tokenization; check the tokenizer")
    rows = []
    for prompt, completion in zip(prompts, completions):
        ids = (prompt + completion + [tokenizer.eos_token_id])[:max_total]
        labels = ([IGNORE] * len(prompt) + ids[len(prompt):])[: len(ids)]
        rows.append((ids, labels))
    return rows


def encode(tokenizer, cfg: dict, examples: list[Example]):
    task = task_of(cfg["pair"])
    if task.model_family == "causal":
        return encode_causal(tokenizer, task, examples, cfg["max_source_len"])
    return encode_seq2seq(tokenizer, task, examples, cfg["max_source_len"], cfg["max_target_len"])


def pad_right(seqs: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and the matching attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
    return ids, mask


def collate_seq2seq(rows, pad_id: int) -> dict[str, torch.Tensor]:
    sources, targets = zip(*rows)
    input_ids, mask = pad_right(list(sources), pad_id)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": pad_right(list(targets), IGNORE)[0]}


def collate_causal(rows, pad_id: int) -> dict[str, torch.Tensor]:
    """Right padding: fine for teacher-forced training (positions start at 0 for every row)."""
    ids, labels = zip(*rows)
    input_ids, mask = pad_right(list(ids), pad_id)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": pad_right(list(labels), IGNORE)[0]}


class Collator:
    """Picklable collate function for the pair's family."""

    def __init__(self, family: str, pad_id: int) -> None:
        self.family, self.pad_id = family, pad_id

    def __call__(self, rows):
        if self.family == "causal":
            return collate_causal(rows, self.pad_id)
        return collate_seq2seq(rows, self.pad_id)


class LengthBuckets(torch.utils.data.Sampler):
    """Batches of similar length (the classic NMT bucketing): each epoch shuffles the rows, cuts them into
    chunks of ``chunk_batches`` batches, sorts each chunk by length, splits it into batches and shuffles the
    batch order.

    Why: random batches of Bible verses are ~60% padding (a 115-token verse pads 383 short ones), and T5's
    attention cost grows with the padded length squared; chunks of 50 batches cut the padding to ~20%, so a
    time-budgeted run sees about twice the examples. Batches stay random mixes of the corpus at the chunk
    level. Yields lists of row indices (a ``batch_sampler``); every row appears at most once per epoch and,
    with ``drop_last``, only the rows of a last partial batch are left out.
    """

    def __init__(self, lengths: list[int], batch_size: int, chunk_batches: int, generator: torch.Generator,
                 drop_last: bool = True) -> None:
        if batch_size < 1 or chunk_batches < 1:
            raise ValueError(f"batch_size and chunk_batches must be >= 1, got {batch_size}, {chunk_batches}")
        self.lengths, self.batch_size, self.chunk = list(lengths), batch_size, chunk_batches * batch_size
        self.generator, self.drop_last = generator, drop_last

    def _batches(self) -> list[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches = []
        for start in range(0, len(order), self.chunk):
            chunk = sorted(order[start : start + self.chunk], key=self.lengths.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        return [batches[i] for i in torch.randperm(len(batches), generator=self.generator).tolist()]

    def __iter__(self):
        yield from self._batches()

    def __len__(self) -> int:
        # every chunk but the last is a whole number of batches, so only the last can leave a partial one
        return len(self.lengths) // self.batch_size if self.drop_last else -(-len(self.lengths) // self.batch_size)


def row_length(row) -> int:
    """Padded cost of one encoded row: both of its id lists (source + target, or ids + labels)."""
    return len(row[0]) + len(row[1])
