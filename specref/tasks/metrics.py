"""Task metrics through well-kept libraries, plus the degeneracy checks of the zoo's quality bars.

BLEU is sacreBLEU's corpus BLEU (default 13a tokenization, so numbers are comparable with published ones);
ROUGE-2 is rouge-score's F1 averaged over examples, x100 (the paper reports ROUGE-2 for XSum / CNN-DM);
accuracy is exact match of the final numeric answer. sacrebleu and rouge-score are imported lazily: they
are evaluation extras, and importing :mod:`specref.tasks` must not require them (the GPU training machine
has neither).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

__all__ = [
    "bleu",
    "rouge2",
    "extract_answer",
    "normalize_number",
    "accuracy",
    "has_repetition_loop",
    "degeneracy",
]


def _check_lengths(predictions: Sequence[str], references: Sequence[object]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions for {len(references)} references; they must pair up"
        )
    if not predictions:
        raise ValueError("cannot score an empty set of predictions")


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) of ``predictions`` against one reference each, sacreBLEU defaults."""
    _check_lengths(predictions, references)
    try:
        import sacrebleu
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("BLEU needs sacrebleu: pip install 'specref[eval]'") from err
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def rouge2(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-2 F1 x100 (rouge-score, Porter stemming as in the usual summarization setups)."""
    _check_lengths(predictions, references)
    try:
        from rouge_score import rouge_scorer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("ROUGE needs rouge-score: pip install 'specref[eval]'") from err
    scorer = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=True)
    total = sum(scorer.score(ref, pred)["rouge2"].fmeasure for pred, ref in zip(predictions, references))
    return 100.0 * total / len(predictions)


# A number as written in an answer: optional sign, digits with optional thousands commas, optional decimals.
_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_ANSWER_PATTERNS = (
    re.compile(r"the answer is\s*:?\s*\$?\s*(" + _NUMBER + ")", re.IGNORECASE),
    re.compile(r"####\s*\$?\s*(" + _NUMBER + ")"),
)
_ANY_NUMBER = re.compile(_NUMBER)


def normalize_number(text: str) -> str | None:
    """Canonical string of a number: no thousands commas, no trailing zeros ("1,200.50" -> "1200.5").

    Returns None when ``text`` is not a number, so a garbled answer never matches.
    """
    cleaned = text.strip().replace(",", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a worked solution, normalized, or None if there is none.

    Rules, in order (why: models often keep writing after the answer, and worked solutions contain many
    intermediate numbers, so the explicit answer phrase must win over "the last number"):
    1. the LAST "The answer is N" (case-insensitive, optional colon and "$");
    2. else the last GSM8K-style "#### N";
    3. else the last number anywhere in the text.
    Thousands commas and trailing zeros are normalized by :func:`normalize_number`.
    """
    for pattern in _ANSWER_PATTERNS:
        found = pattern.findall(text)
        if found:
            return normalize_number(found[-1])
    numbers = _ANY_NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Exact-match accuracy (0-100) of the extracted final answer against the gold numeric answers."""
    _check_lengths(predictions, answers)
    hits = 0
    for pred, gold in zip(predictions, answers):
        gold_norm = normalize_number(str(gold))
        if gold_norm is None:
            raise ValueError(f"gold answer {gold!r} is not a number")
        hits += extract_answer(pred) == gold_norm
    return 100.0 * hits / len(predictions)


def has_repetition_loop(text: str, min_repeats: int = 4, max_n: int = 8) -> bool:
    """True if some n-gram of whitespace tokens (n <= ``max_n``) occurs ``min_repeats`` times back to back.

    Why this definition: a degenerate decoder repeats a short span verbatim ("the the the the", "of the
    land of the land of the land of the land"); natural text, even the Bible's "holy, holy, holy", rarely
    repeats any span four times in a row. A trailing partial repetition is not required.
    """
    if min_repeats < 2 or max_n < 1:
        raise ValueError("min_repeats must be >= 2 and max_n >= 1")
    words = text.split()
    n_words = len(words)
    for n in range(1, max_n + 1):
        span = n * min_repeats
        for start in range(0, n_words - span + 1):
            unit = words[start : start + n]
            if all(words[start + k * n : start + (k + 1) * n] == unit for k in range(1, min_repeats)):
                return True
    return False


def degeneracy(predictions: Sequence[str]) -> dict[str, float]:
    """Fractions of empty outputs and of outputs with a repetition loop (see :func:`has_repetition_loop`)."""
    if not predictions:
        raise ValueError("cannot measure degeneracy of an empty set of predictions")
    n = len(predictions)
    empty = sum(not p.strip() for p in predictions)
    loops = sum(has_repetition_loop(p) for p in predictions)
    return {"empty_rate": empty / n, "loop_rate": loops / n}
