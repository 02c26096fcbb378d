"""Metrics on hand-made cases: values we can work out by hand or that the libraries define."""

import pytest

from specref.tasks import metrics


def test_bleu_perfect_and_disjoint():
    refs = ["el principio crió Dios los cielos y la tierra .", "y dijo Dios : sea la luz"]
    assert metrics.bleu(refs, refs) == pytest.approx(100.0)
    assert metrics.bleu(["xx yy zz ww", "qq rr ss tt"], refs) == pytest.approx(0.0)


def test_bleu_partial_is_between():
    refs = ["the cat sat on the mat today"]
    score = metrics.bleu(["the cat sat on the mat"], refs)
    assert 0.0 < score < 100.0


def test_rouge2_hand_computed():
    # reference bigrams: "return the", "the value", "value of", "of x" (4); prediction bigrams:
    # "return the", "the value" (2) -> P = 1, R = 0.5, F1 = 2/3.
    score = metrics.rouge2(["Return the value"], ["Return the value of x"])
    assert score == pytest.approx(100 * 2 / 3)
    assert metrics.rouge2(["a b"], ["c d"]) == 0.0


def test_rouge2_averages_examples():
    assert metrics.rouge2(["a b c", "x y"], ["a b c", "p q"]) == pytest.approx(50.0)


@pytest.mark.parametrize("text, expected", [
    ("3 * 4 = 12. 12 - 5 = 7. The answer is 7.", "7"),
    ("The answer is 1,200.", "1200"),
    ("the answer is: $45.50", "45.5"),
    ("The answer is 12. Then more 99 text", "12"),  # the phrase wins over the last number
    ("The answer is 3. Wait, the answer is 4.", "4"),  # the LAST phrase wins
    ("so #### 42", "42"),
    ("I think 5 + 6 = 11", "11"),  # fallback: last number
    ("The answer is -3.", "-3"),
    ("no numbers here", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert metrics.extract_answer(text) == expected


@pytest.mark.parametrize("raw, expected", [("12", "12"), ("12.0", "12"), ("1,234", "1234"), ("0.50", "0.5"),
                                           ("7.", "7"), ("abc", None), ("nan", None)])
def test_normalize_number(raw, expected):
    assert metrics.normalize_number(raw) == expected


def test_accuracy():
    preds = ["2 * 3 = 6. The answer is 6.", "The answer is 5.", "garbage", "The answer is 1,000."]
    assert metrics.accuracy(preds, ["6", "4", "1", "1000"]) == pytest.approx(50.0)


def test_accuracy_rejects_non_numeric_gold():
    with pytest.raises(ValueError, match="not a number"):
        metrics.accuracy(["The answer is 1."], ["one"])


@pytest.mark.parametrize("fn", [metrics.bleu, metrics.rouge2, metrics.accuracy])
def test_length_mismatch_and_empty(fn):
    with pytest.raises(ValueError, match="pair up"):
        fn(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])


@pytest.mark.parametrize("text, loop", [
    ("the the the the", True),
    ("of the land of the land of the land of the land", True),
    ("holy, holy, holy is Yahweh", False),  # three repeats is natural text
    ("a b c d e f g h i j", False),
    ("", False),
    ("x y " * 3 + "x", False),
    ("and " * 10, True),
])
def test_repetition_loop(text, loop):
    assert metrics.has_repetition_loop(text) is loop


def test_degeneracy_rates():
    stats = metrics.degeneracy(["fine text", "", "  ", "go go go go go"])
    assert stats == {"empty_rate": 0.5, "loop_rate": 0.25}
    with pytest.raises(ValueError):
        metrics.degeneracy([])
    with pytest.raises(ValueError):
        metrics.has_repetition_loop("a", min_repeats=1)
