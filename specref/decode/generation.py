"""transformers' generation conventions for ``generate``: argument checks, ``GenerationConfig`` resolution,
default EOS ids. Model-free: nothing here touches a session or a model forward."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from specref.defaults import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE

# ---- argument checks --------------------------------------------------------------------------------


def check_int(name: str, value: Any, low: int) -> int:
    """``value`` as an int >= ``low`` (an integral float counts), else a one-line ValueError naming ``name``.

    Public because every decoder's constructor checks its integer options (``gamma``) the way ``generate``
    checks its own, with the same message."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_nonnegative(name: str, value: Any) -> float:
    """``value`` as a finite float >= 0, else a one-line ValueError naming ``name``.

    Public because the decoders check the cost ratio ``c`` with the same rule and message as ``temperature``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_confidence_threshold(name: str, value: Any) -> float:
    """``value`` as a float in the open interval (0, 1), else a one-line ValueError naming ``name``.

    Public because the speculative decoder checks its ``draft_confidence_threshold`` with it, and ``generate``
    a GenerationConfig's ``assistant_confidence_threshold``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 < float(value) < 1.0
    if not ok:  # NaN fails the comparison too
        raise ValueError(f"{name} must be a number in (0, 1) (None: no draft stop), got {value!r}")
    return float(value)


def _check_sampling(temperature: Any, top_k: Any, top_p: Any) -> tuple[float, int | None, float | None]:
    t = check_nonnegative("temperature", temperature)
    if top_k is not None:
        # transformers' convention: top_k = 0 turns the filter off
        top_k = check_int("top_k", top_k, 0) or None
    if top_p is not None:
        try:
            top_p = float(top_p)
        except (TypeError, ValueError):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}") from None
        if not (0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    return t, top_k, top_p


def row_seeds(seed: Any, batch: int, device: torch.device) -> Tensor:
    """The ``[B]`` long per-row seeds of a ``generate`` call: a list gives one per row, an int ``s`` gives
    ``s, s + 1, ...``. Public because the decoders' shared call setup (:mod:`specref.decode.base`) builds them."""
    if isinstance(seed, Tensor):
        seed = seed.tolist()
    if isinstance(seed, (list, tuple)):
        if len(seed) != batch:
            raise ValueError(f"seed list has {len(seed)} entries for a batch of {batch} rows")
        vals = [check_int("seed", s, -(2**63)) for s in seed]
    else:
        base = check_int("seed", seed, -(2**63))
        vals = [base + i for i in range(batch)]
    return torch.tensor(vals, dtype=torch.long, device=device)


def eos_ids(eos_token_id: Any, vocab: int, device: torch.device) -> Tensor:
    """The ``[E]`` long EOS token ids (``E`` may be 0), each checked against the shared vocabulary.
    Public because the decoders' shared call setup (:mod:`specref.decode.base`) builds them."""
    if eos_token_id is None:
        ids: list[int] = []
    elif isinstance(eos_token_id, (list, tuple, set)):
        ids = [check_int("eos_token_id", e, 0) for e in eos_token_id]
    else:
        ids = [check_int("eos_token_id", eos_token_id, 0)]
    for e in ids:
        if e >= vocab:
            raise ValueError(f"eos_token_id {e} is outside the shared vocabulary of {vocab} tokens")
    return torch.tensor(ids, dtype=torch.long, device=device)


# ---- transformers' generation conventions -------------------------------------------------------------

#: GenerationConfig fields generate() honours.
_HONOURED = ("do_sample", "max_new_tokens", "max_length", "temperature", "top_k", "top_p", "eos_token_id")
#: Fields that never change which tokens are sampled (bookkeeping, caching, output format, assistants).
_HARMLESS = frozenset(
    {
        "pad_token_id", "bos_token_id", "decoder_start_token_id", "use_cache", "cache_implementation",
        "cache_config", "max_cache_len", "output_attentions", "output_hidden_states", "output_scores",
        "output_logits", "return_dict_in_generate", "compile_config", "disable_compile", "low_memory",
        "prefill_chunk_size", "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule",
        "assistant_confidence_threshold", "prompt_lookup_num_tokens", "max_matching_ngram_size",
        "assistant_early_exit", "assistant_lookbehind", "target_lookbehind", "continuous_batching_config",
        "early_stopping", "length_penalty", "transformers_version",
    }
)
#: The one assistant field the speculative decoder reads: its in-round draft stop (``draft_confidence_threshold``)
_STOP = "assistant_confidence_threshold"
#: Fields that change decoding unless they hold their no-op value (a value, or a set of them).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "num_beams": (1,), "num_beam_groups": (1,), "num_return_sequences": (1,), "repetition_penalty": (1.0,),
    "encoder_repetition_penalty": (1.0,), "no_repeat_ngram_size": (0,), "encoder_no_repeat_ngram_size": (0,),
    "min_length": (0,), "min_new_tokens": (0,), "typical_p": (1.0,), "epsilon_cutoff": (0.0,),
    "eta_cutoff": (0.0,), "min_p": (0.0,), "guidance_scale": (1.0,), "diversity_penalty": (0.0,),
    "penalty_alpha": (0.0,), "renormalize_logits": (False,), "remove_invalid_values": (False,),
    "token_healing": (False,), "bad_words_ids": ([],), "suppress_tokens": ([],), "begin_suppress_tokens": ([],),
    "sequence_bias": ({},), "use_mtp": (False,),
}


@dataclass
class _Generation:
    """Resolved generation settings of one ``generate`` call."""

    max_new: int
    temperature: float
    top_k: int | None
    top_p: float | None
    #: explicit EOS ids (None: use the decoder's defaults; [] with ``no_eos``)
    eos: Any
    #: ``assistant_confidence_threshold`` of the config or keywords: None (not given: the decoder's own
    #: ``draft_confidence_threshold``), 0.0 (transformers' "never stop": no draft stop in this call), or a
    #: threshold in (0, 1)
    draft_stop: float | None = None


def _generation_fields(generation_config: Any) -> dict[str, Any]:
    """The fields a ``GenerationConfig`` sets (transformers 5 leaves every unset field None)."""
    from transformers import GenerationConfig

    if not isinstance(generation_config, GenerationConfig):
        raise ValueError(
            f"generation_config must be a transformers GenerationConfig, got {type(generation_config).__name__}"
        )
    return {
        k: v
        for k, v in generation_config.to_dict().items()
        if v is not None and not k.startswith("_") and k not in _HARMLESS
    }


def _refuse_unsupported(fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        if name in _HONOURED or name in _HARMLESS:
            continue
        if name in _NEUTRAL and any(value == ok for ok in _NEUTRAL[name]):
            continue
        raise ValueError(
            f"{name}={value!r} changes decoding and specref's decoder does not implement it; it honours "
            f"{', '.join(_HONOURED)}"
        )


def resolve_generation(
    generation_config: Any,
    given: dict[str, Any],
    extra: dict[str, Any],
    *,
    prompt_width: int,
    seq2seq: bool,
    no_eos: bool,
) -> _Generation:
    """transformers' rules for the settings of one call; ``given`` are generate()'s own keyword arguments
    (None = not given) and ``extra`` any other GenerationConfig field passed as a keyword.

    Keywords override the config (as ``generate(**kwargs)`` updates it in transformers). ``do_sample=False``
    is greedy (T = 0); ``top_k`` of 0 is off; ``max_length`` counts the prompt's (padded) width for causal
    models and the decoder's start token for seq2seq ones, as in transformers. Fields that would change
    decoding and are not implemented (``repetition_penalty``, ``num_beams > 1``, ...) are refused.
    """
    from transformers import GenerationConfig

    fields = {} if generation_config is None else _generation_fields(generation_config)
    if extra:
        known = set(GenerationConfig().to_dict())
        for name in extra:
            if name not in known:
                raise ValueError(f"generate() got an unknown argument {name!r}")
    # the draft stop: a keyword wins over the config, as for every field (None: not given)
    stop = extra.get(_STOP)
    if stop is None and generation_config is not None:
        stop = getattr(generation_config, _STOP, None)
    kw = {k: v for k, v in {**extra, **given}.items() if v is not None and k not in _HARMLESS}
    # a keyword length replaces the config's length of either kind
    if "max_new_tokens" in kw or "max_length" in kw:
        fields.pop("max_new_tokens", None)
        fields.pop("max_length", None)
    fields.update(kw)
    _refuse_unsupported(fields)
    if "max_new_tokens" in fields and "max_length" in fields:
        raise ValueError(
            f"give max_new_tokens or max_length, not both (got {fields['max_new_tokens']!r} and "
            f"{fields['max_length']!r})"
        )
    if "max_length" in fields:
        length = check_int("max_length", fields["max_length"], 1)
        # transformers: causal max_length counts input_ids.shape[-1]; seq2seq, the decoder start token
        used = 1 if seq2seq else prompt_width
        what = "the decoder start token" if seq2seq else f"a prompt of width {prompt_width}"
        if length - used < 1:
            raise ValueError(f"max_length={length} leaves no room for new tokens after {what}")
        max_new = length - used
    else:
        max_new = check_int("max_new_tokens", fields.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS), 1)
    do_sample = fields.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
    if do_sample is False:
        temperature: Any = 0.0  # greedy: the temperature and filters cannot change an argmax
    else:
        temperature = fields.get("temperature", DEFAULT_TEMPERATURE)
        if do_sample is True and isinstance(temperature, numbers.Real) and temperature == 0:
            raise ValueError("do_sample=True needs temperature > 0 (temperature=0 is greedy: pass do_sample=False)")
    t, k, p = _check_sampling(temperature, fields.get("top_k"), fields.get("top_p"))
    eos = fields.get("eos_token_id")
    if no_eos:
        if given.get("eos_token_id") is not None:
            raise ValueError(f"no_eos=True turns EOS off; do not also pass eos_token_id={given['eos_token_id']!r}")
        eos = []
    if stop is not None and not (isinstance(stop, numbers.Real) and not isinstance(stop, bool) and stop == 0):
        stop = check_confidence_threshold(_STOP, stop)  # 0 is transformers' value for "never stop"
    return _Generation(max_new, t, k, p, eos, None if stop is None else float(stop))


def default_eos_ids(target_model: Any, tokenizers: Sequence[Any] = ()) -> list[int]:
    """Every EOS id of the target's generation config (an int or a list) and of the tokenizers, in order,
    without repeats."""
    ids: list[int] = []
    gc = getattr(target_model, "generation_config", None)
    sources = [getattr(gc, "eos_token_id", None), *(getattr(t, "eos_token_id", None) for t in tokenizers)]
    for src in sources:
        for e in src if isinstance(src, (list, tuple)) else [src]:
            if isinstance(e, numbers.Integral) and not isinstance(e, bool) and e >= 0 and int(e) not in ids:
                ids.append(int(e))
    return ids
