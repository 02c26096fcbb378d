"""The :class:`~specref.repro.backend.Backend` over :mod:`specref.decode` and a Hugging Face pair.

Batches are formed from examples sorted by prompt length (less padding) and each example's random stream
is keyed by (trial seed, example id) through the decoder's per-row seeds, so the predictions do not depend
on the batch size, on the batch an example lands in, or on which other examples were selected.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch

from specref.decode.step_cost import step_cost_ratio
from specref.defaults import ENGINES
from specref.repro.backend import DecodeOutput, DecodeRequest
from specref.repro.setups import Setup

__all__ = ["HFBackend", "example_seed", "step_cost_ratio", "build_standin_model"]


def example_seed(seed: int, example_id: str) -> int:
    """A 56-bit seed for one example of one trial: a pure function of the trial seed and the example id."""
    digest = hashlib.sha256(f"{int(seed)}\x00{example_id}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def build_standin_model(arch: dict[str, Any], family: str, tokenizer: Any, seed: int) -> Any:
    """A random-init model from a Hugging Face config dict (``model_type`` plus sizes), deterministic in
    ``seed`` and without touching the global random state."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    arch = dict(arch)
    model_type = arch.pop("model_type")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = {"pad_token_id": pad, "eos_token_id": tokenizer.eos_token_id}
    if family == "seq2seq":
        ids["decoder_start_token_id"] = pad
    elif tokenizer.bos_token_id is not None:
        ids["bos_token_id"] = tokenizer.bos_token_id
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **ids, **arch)
    auto = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config)
    return model.eval()


class HFBackend:
    """Decodes task examples with :func:`specref.decode.make_decoder` on a loaded draft/target pair."""

    def __init__(self, draft: Any, target: Any, tokenizer: Any, task: Any, device: str = "cpu",
                 cost_ratio: float | None = None, cost_ratio_source: str = "given", head: Any = None,
                 card: dict[str, Any] | None = None, engine: str = "plain") -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
        self.draft, self.target, self.tokenizer, self.task = draft, target, tokenizer, task
        self.torch_device = torch.device(device)
        self.device = str(self.torch_device)
        if self.torch_device.type == "cuda":
            self.device += f" ({torch.cuda.get_device_name(self.torch_device)})"
        self.head = head
        self.card = card or {}
        #: decoding engine handed to make_decoder (identical outputs at different speeds; docs/performance.md)
        self.engine = engine
        if cost_ratio is not None:
            self._c = (float(cost_ratio), cost_ratio_source)
        elif isinstance(self.card.get("cost_ratio"), (int, float)):
            self._c = (float(self.card["cost_ratio"]), "card")
        else:
            self._c = (round(step_cost_ratio(draft, target), 6), "params")
        # (example id, source) -> prompt token ids: every decode of a sweep tokenizes the same prompts
        self._prompt_ids: dict[tuple[str, str], list[int]] = {}
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one (e.g. tokenizer.pad_token = tokenizer.eos_token)")

    @classmethod
    def from_setup(cls, setup: Setup, device: str = "cpu", cost_ratio: float | None = None,
                   head: Any = None, engine: str = "plain", tp_size: int = 1) -> HFBackend:
        """Load (or, for stand-ins, build) the setup's models on ``device`` through :mod:`specref.loading`.

        ``draft`` / ``target`` / ``tokenizer`` may be model folders, zoo names, .gguf files or hub ids; the
        tokenizer and each model's own tokenizer (where it has one) must share one token->id map.
        ``tp_size`` > 1 (inside a torchrun of that many processes): the target sharded over them
        (:mod:`specref.sharding`).
        """
        from specref.loading import load_pair, load_tokenizer, resolve_device

        device = resolve_device(device)
        if setup.is_standin and tp_size > 1:
            raise ValueError(f"--tp-size {tp_size} shards a loaded target; --standin builds its models in the run "
                             "(use --tp-size 1)")
        if setup.is_standin:
            tokenizer = load_tokenizer(setup.tokenizer)
            draft = build_standin_model(setup.draft, setup.family, tokenizer, setup.standin_seed)
            target = build_standin_model(setup.target, setup.family, tokenizer, setup.standin_seed + 1)
            draft, target = draft.to(device), target.to(device)
        else:
            pair = load_pair(draft=setup.draft, target=setup.target, tokenizer=setup.tokenizer, device=device,
                             dtype=setup.dtype, tp_size=tp_size)
            draft, target, tokenizer, device = pair.draft, pair.target, pair.tokenizer, pair.device
            family = "seq2seq" if getattr(target.config, "is_encoder_decoder", False) else "causal"
            if family != setup.family:
                raise ValueError(f"setup {setup.name!r} says models.family {setup.family}, but the target "
                                 f"{setup.target!r} is a {family} model")
        return cls(draft, target, tokenizer, setup.task, device, cost_ratio, "given", head, setup.card, engine)

    # -- Backend protocol ------------------------------------------------------------------------------
    def cost_ratio(self) -> tuple[float, str]:
        return self._c

    def warmup(self) -> None:
        examples = self.task.load("test", limit=2) if hasattr(self.task, "load") else []
        for method in ("target", "specdecode"):
            if examples:
                self.decode(DecodeRequest(method=method, max_new_tokens=4, batch_size=2), examples)

    def _ids(self, example: Any) -> list[int]:
        key = (str(example.id), str(getattr(example, "source", "")))
        if key not in self._prompt_ids:
            self._prompt_ids[key] = list(self.tokenizer(self.task.format_prompt(example)).input_ids)
        return self._prompt_ids[key]

    def batch_plan(self, examples: Sequence[Any], batch_size: int) -> list[list[int]]:
        """The batches :meth:`decode` forms: example indices sorted by prompt length, cut every ``batch_size``.

        Decoding one batch's examples on their own (in this order) reproduces that batch exactly, which is
        what lets :mod:`specref.repro.distributed` split a decode across devices and merge it bit for bit.
        """
        ids = [self._ids(e) for e in examples]
        order = sorted(range(len(examples)), key=lambda i: (len(ids[i]), i))
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]

    def decode(self, request: DecodeRequest, examples: Sequence[Any]) -> DecodeOutput:
        from specref.decode import make_decoder

        options = dict(request.options)
        if request.method == "learned":
            if self.head is None:
                raise ValueError("method 'learned' needs a deferral head (--head PATH)")
            options["head"] = self.head
        dec = make_decoder(self.draft, self.target, request.method, alpha=request.alpha, gamma=request.gamma,
                           tokenizer=self.tokenizer, c=self._c[0], engine=self.engine, **options)
        tok = self.tokenizer
        ids = [self._ids(e) for e in examples]
        seeds = [example_seed(request.seed, str(e.id)) for e in examples]
        texts: list[str] = [""] * len(examples)
        acc = dict(tokens=0, target=0, draft=0, drafted=0, rejected=0, deferred=0.0, positions=0, wall=0.0)
        for chunk in self.batch_plan(examples, request.batch_size):
            width = max(len(ids[i]) for i in chunk)
            pad = tok.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(ids[i])) + ids[i] for i in chunk])
            mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in chunk])
            out = dec.generate(
                input_ids.to(self.torch_device), mask.to(self.torch_device), max_new_tokens=request.max_new_tokens,
                temperature=request.temperature, top_p=request.top_p, seed=[seeds[i] for i in chunk],
            )
            for i, toks in zip(chunk, out.token_lists()):
                texts[i] = tok.decode(toks, skip_special_tokens=True)
            s = out.stats
            acc["tokens"] += int(s.tokens.sum())
            acc["target"] += int(s.target_calls.sum())
            acc["draft"] += int(s.draft_calls.sum())
            acc["drafted"] += int(s.drafted.sum())
            acc["rejected"] += int(s.rejections.sum())
            acc["deferred"] += float(s.deferred.sum())
            acc["positions"] += int(s.defer_positions.sum())
            acc["wall"] += float(s.wall_time_s)
        return DecodeOutput(
            predictions=texts, tokens=acc["tokens"], target_calls=acc["target"], draft_calls=acc["draft"],
            drafted=acc["drafted"], rejected=acc["rejected"], deferrals=acc["deferred"],
            positions=acc["positions"], wall_s=acc["wall"] if acc["wall"] > 0 else math.nan,
        )
