"""Multi-step arithmetic word problems with worked solutions, GSM8K-style, from a fixed seed.

A problem is a short story: a start quantity (plain, or ``a`` containers of ``b`` items) followed by
operations told in words (buys more, gives away, doubles, shares equally...). The solution writes one
equation per arithmetic step and ends with "The answer is N."::

    Question: Mia buys 3 boxes of pencils. Each box has 12 pencils. She gives 5 pencils to Leo. Then the
    number of pencils doubles. How many pencils does Mia have now?
    Answer: 3 * 12 = 36. 36 - 5 = 31. 31 * 2 = 62. The answer is 62.

The solution is terse on purpose: most of its tokens are digits the model must compute, so model size
shows in the accuracy (the whole point of a draft/target pair). :class:`Difficulty` bounds the number of
steps and every number. The defaults (2-4 steps, amounts <= 999, factors <= 19, results <= 99999) were
chosen on an H100: with results <= 999 and factors <= 9 a 0.4M-parameter model solved 99.8% in minutes and
agreed with a 4M one on nearly every token, so the pair could not show a quality gap. Splits come from
disjoint seeds, and validation/train problems whose question text equals a held-out one are dropped (no
leakage).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterable
from dataclasses import dataclass

from specref.tasks.builders import _common

SEEDS = {"test": 1001, "validation": 2002, "train": 3003}
SIZES = {"test": 1000, "validation": 500, "train": 20000}

NAMES = (
    ("Mia", "She", "her"), ("Leo", "He", "his"), ("Ava", "She", "her"), ("Noah", "He", "his"),
    ("Emma", "She", "her"), ("Liam", "He", "his"), ("Zoe", "She", "her"), ("Omar", "He", "his"),
    ("Lena", "She", "her"), ("Ravi", "He", "his"), ("Sara", "She", "her"), ("Tom", "He", "his"),
    ("Nina", "She", "her"), ("Ivan", "He", "his"), ("Rosa", "She", "her"), ("Ken", "He", "his"),
)
# (plural item, container, container plural)
ITEMS = (
    ("apples", "basket", "baskets"), ("pencils", "box", "boxes"), ("marbles", "bag", "bags"),
    ("stickers", "sheet", "sheets"), ("cookies", "jar", "jars"), ("books", "shelf", "shelves"),
    ("eggs", "carton", "cartons"), ("cards", "pack", "packs"), ("shells", "bucket", "buckets"),
    ("beads", "string", "strings"), ("stamps", "album", "albums"), ("flowers", "pot", "pots"),
    ("coins", "purse", "purses"), ("toys", "crate", "crates"), ("candles", "case", "cases"),
    ("buttons", "tin", "tins"),
)
FRIENDS = ("a friend", "a neighbor", "a classmate", "a cousin", "a teacher")
GROUPS = ("friends", "bags", "boxes", "children", "teams")


@dataclass(frozen=True)
class Difficulty:
    """Bounds of the generator. Every intermediate result stays within ``[1, max_value]``."""

    min_steps: int = 2
    max_steps: int = 4
    max_operand: int = 999  # start counts and the amounts added or removed
    max_factor: int = 19  # container counts, multipliers, divisors
    max_value: int = 99999

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError("need 1 <= min_steps <= max_steps")
        if self.max_operand < 2 or self.max_factor < 2 or self.max_value < 2 * self.max_operand:
            raise ValueError("need max_operand >= 2, max_factor >= 2 and max_value >= 2 * max_operand")


def _op_sentence(rng: random.Random, op: str, x: int, pron: str, poss: str, items: str) -> str:
    if op == "+":
        return rng.choice((
            f"{pron} buys {x} more {items}.",
            f"{pron} finds {x} more {items}.",
            f"{pron} gets {x} more {items} from {rng.choice(FRIENDS)}.",
        ))
    if op == "-":
        return rng.choice((
            f"{pron} gives {x} {items} to {rng.choice(FRIENDS)}.",
            f"{pron} loses {x} {items}.",
            f"{pron} sells {x} of {poss} {items}.",
        ))
    if op == "*":
        grow = {2: "doubles", 3: "triples"}.get(x, f"grows {x} times")
        return rng.choice((
            f"Then the number of {items} {grow}.",
            f"Later {pron.lower()} has {x} times as many {items} as before.",
        ))
    return f"{pron} shares the {items} equally among {x} {rng.choice(GROUPS)} and keeps one share."


def _next_op(rng: random.Random, value: int, d: Difficulty) -> tuple[str, int]:
    """A random operation whose result stays within bounds (division only when it is exact)."""
    options = []
    if value + 1 <= d.max_value:
        options.append("+")
    if value > 1:
        options.append("-")
    if value * 2 <= d.max_value:
        options.append("*")
    divisors = [k for k in range(2, d.max_factor + 1) if value % k == 0]
    if divisors:
        options.append("/")
    op = rng.choice(options)
    if op == "+":
        return op, rng.randint(1, min(d.max_operand, d.max_value - value))
    if op == "-":
        return op, rng.randint(1, min(d.max_operand, value - 1))
    if op == "*":
        return op, rng.randint(2, min(d.max_factor, d.max_value // value))
    return op, rng.choice(divisors)


def generate_problem(rng: random.Random, difficulty: Difficulty = Difficulty()) -> dict:
    """One problem as ``{source, reference, answer}`` drawn from ``rng``."""
    d = difficulty
    name, pron, poss = rng.choice(NAMES)
    items, container, containers = rng.choice(ITEMS)
    steps = rng.randint(d.min_steps, d.max_steps)
    story: list[str] = []
    work: list[str] = []
    if rng.random() < 0.5:
        a, b = rng.randint(2, d.max_factor), rng.randint(2, min(d.max_operand, d.max_value // d.max_factor))
        value = a * b
        story.append(rng.choice((
            f"{name} buys {a} {containers} of {items}. Each {container} has {b} {items}.",
            f"{name} has {a} {containers} with {b} {items} in each.",
        )))
        work.append(f"{a} * {b} = {value}.")
        steps -= 1
    else:
        value = rng.randint(2, d.max_operand)
        story.append(rng.choice((f"{name} has {value} {items}.", f"{name} collects {value} {items}.")))
    for _ in range(steps):
        op, x = _next_op(rng, value, d)
        new = {"+": value + x, "-": value - x, "*": value * x, "/": value // x}[op]
        story.append(_op_sentence(rng, op, x, pron, poss, items))
        work.append(f"{value} {op} {x} = {new}.")
        value = new
    story.append(f"How many {items} does {name} have now?")
    work.append(f"The answer is {value}.")
    return {"source": " ".join(story), "reference": " ".join(work), "answer": str(value)}


def generate(n: int, seed: int, difficulty: Difficulty = Difficulty(),
             exclude: Iterable[str] = ()) -> list[dict]:
    """``n`` distinct problems from ``seed``, none whose question is in ``exclude``."""
    rng = random.Random(seed)
    seen = set(exclude)
    rows: list[dict] = []
    while len(rows) < n:
        problem = generate_problem(rng, difficulty)
        if problem["source"] not in seen:
            seen.add(problem["source"])
            rows.append(problem)
    return rows


def build_splits(sizes: dict[str, int] = SIZES, seeds: dict[str, int] = SEEDS,
                 difficulty: Difficulty = Difficulty()) -> dict[str, list[dict]]:
    """The three splits: test first, then validation and train excluding every earlier question."""
    splits: dict[str, list[dict]] = {}
    taken: set[str] = set()
    for split in ("test", "validation", "train"):
        rows = generate(sizes[split], seeds[split], difficulty, exclude=taken)
        taken.update(row["source"] for row in rows)
        splits[split] = [
            {"id": f"arith-{split}-{i:05d}", "source": r["source"], "reference": r["reference"],
             "answer": r["answer"]}
            for i, r in enumerate(rows)
        ]
    return splits


def build(args: argparse.Namespace) -> dict[str, list[dict]]:
    sizes = dict(SIZES)
    if args.limit is not None:
        sizes = {split: min(size, args.limit) for split, size in sizes.items()}
    return build_splits(sizes)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=None, help="at most this many problems per split")


def main(argv: list[str] | None = None) -> int:
    return _common.main("reasoning", build, _add_arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
