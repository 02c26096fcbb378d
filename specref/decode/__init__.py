"""Batched speculative-cascade decoding over Hugging Face models (causal LMs and T5-style seq2seq).

Start with :func:`make_decoder`::

    from specref.decode import make_decoder
    dec = make_decoder(draft, target, "token_v3", alpha=0.3, gamma=5)
    out = dec.generate(input_ids, attention_mask, max_new_tokens=64, temperature=1.0, seed=0)

See ``docs/decoding.md`` for the design (KV-cache strategy, randomness, statistics) and every option.
"""

from specref.decode.adapters import ModelAdapter, shared_vocab_size
from specref.decode.baselines import (
    BiLDDecoder,
    SeqCascadeDecoder,
    SingleModelDecoder,
    TokenCascadeDecoder,
)
from specref.decode.decoder import (
    METHODS,
    RULE_METHODS,
    BaseDecoder,
    GenerateOutput,
    NonFiniteLogitsError,
    SpecCascadeDecoder,
    all_methods,
    make_decoder,
)
from specref.decode.stats import DecodeStats, RoundRecord

__all__ = [
    "METHODS",
    "RULE_METHODS",
    "BaseDecoder",
    "BiLDDecoder",
    "DecodeStats",
    "GenerateOutput",
    "ModelAdapter",
    "NonFiniteLogitsError",
    "RoundRecord",
    "SeqCascadeDecoder",
    "SingleModelDecoder",
    "SpecCascadeDecoder",
    "TokenCascadeDecoder",
    "all_methods",
    "make_decoder",
    "shared_vocab_size",
]
