"""The data builders: parsing on inline samples everywhere, and byte-exact reproduction of the shipped files
where the toolchain is present (the reasoning generator always is)."""

import gzip
import json
import shutil
import sys
from pathlib import Path

import pytest

from specref.tasks import DATA_DIR, get_task
from specref.tasks.builders import _common, reasoning, summarization, translation

OSIS_SAMPLE = """\
Genesis 1:1: <w>In</w> <w>the</w> <w>beginning</w>, <w>God</w><w>created</w> <w>the</w> <w>earth</w>.<milestone/>
Genesis 1:2: <w>The</w> <w>earth</w> <note type="x">a note to drop</note><w>was</w> &amp; <w lemma="H1">empty</w>.
<w>A</w> <w>continuation</w> <w>line</w>.
A Psalm by David.  Genesis 2:1: <w>Heading</w> <w>here</w>.
A Psalm by David.  Genesis 2:2: <w>Same</w> <w>heading</w> <w>repeated</w>.
BETH  Genesis 2:3: <w>New</w> <w>heading</w>.
Genesis 2:4:   <milestone type="line"/>
(engWEB2015eb)
"""


def test_parse_osis_inline():
    verses = translation.parse_osis(OSIS_SAMPLE, "Genesis")
    assert verses[(1, 1)] == "In the beginning, God created the earth."  # glued </w><w> split
    assert verses[(1, 2)] == "The earth was & empty. A continuation line."  # note gone, entity, continuation
    assert verses[(2, 1)] == "A Psalm by David. Heading here."  # heading kept where it first appears
    assert verses[(2, 2)] == "Same heading repeated."  # diatheke's repeat of it dropped
    assert verses[(2, 3)] == "BETH New heading."
    assert (2, 4) not in verses  # empty verse
    assert all("engWEB" not in v for v in verses.values())  # module trailer is not text


def test_parse_osis_multiword_book_name():
    text = "I Samuel 3:4: <w>Yahweh</w> <w>called</w>\n(engWEB2015eb)\n"
    assert translation.parse_osis(text, "I Samuel") == {(3, 4): "Yahweh called"}


def test_pair_book_filters_length_ratio():
    eng = "Ruth 1:1: <w>One two three four</w>\nRuth 1:2: <w>Short</w>\nRuth 1:3: <w>Only English</w>\n"
    spa = "Ruth 1:1: <w>Uno dos tres cuatro</w>\nRuth 1:2: <w>Una frase mucho mucho más larga</w>\n"
    rows = translation.pair_book("Ruth", eng, spa)
    assert rows == [{"id": "Ruth 1:1", "source": "One two three four", "reference": "Uno dos tres cuatro"}]
    assert translation.split_of("Ruth") == "test" and translation.split_of("Genesis") == "train"
    assert not set(translation.TEST_BOOKS) & set(translation.VALIDATION_BOOKS)


def test_gzip_bytes_are_reproducible():
    rows = [{"id": "a", "source": "x", "reference": "y"}]
    first, second = _common.jsonl_gz_bytes(rows), _common.jsonl_gz_bytes(rows)
    assert first == second
    assert first[4:8] == b"\x00\x00\x00\x00"  # gzip mtime field is zero
    assert json.loads(gzip.decompress(first)) == rows[0]


def test_checksums_file_matches_shipped_files():
    table = _common.read_checksums(DATA_DIR)
    assert len(table) == 9
    for name, digest in table.items():
        assert _common.sha256((DATA_DIR / name).read_bytes()) == digest, name


def test_reasoning_builder_reproduces_shipped_files(tmp_path):
    assert reasoning.main(["--out", str(tmp_path), "--check"]) == 0
    for split in ("train", "validation", "test"):
        rel = f"reasoning/{split}.jsonl.gz"
        assert (tmp_path / rel).read_bytes() == (DATA_DIR / rel).read_bytes()


def test_reasoning_generator_properties():
    rows = reasoning.generate(300, seed=7)
    assert rows == reasoning.generate(300, seed=7)  # seeded
    for row in rows:
        steps = row["reference"].count(" = ")
        assert 2 <= steps <= 4
        # every equation in the worked solution is right, and the last result is the answer
        for eq in row["reference"].split(". ")[:-1]:
            left, right = eq.rstrip(".").split(" = ")
            a, op, b = left.split(" ")
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b),
                    "/": int(a) // int(b)}[op] == int(right)
            assert op != "/" or int(a) % int(b) == 0
            assert 1 <= int(right) <= reasoning.Difficulty().max_value
        assert row["reference"].endswith(f"The answer is {row['answer']}.")
    excluded = reasoning.generate(20, seed=7, exclude=[rows[0]["source"]])
    assert rows[0]["source"] not in {r["source"] for r in excluded}


def test_reasoning_splits_disjoint_and_difficulty():
    splits = reasoning.build_splits({"test": 50, "validation": 50, "train": 200})
    seen = [{r["source"] for r in splits[s]} for s in ("test", "validation", "train")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    easy = reasoning.Difficulty(min_steps=2, max_steps=2, max_operand=9, max_factor=3, max_value=50)
    for row in reasoning.generate(100, seed=1, difficulty=easy):
        assert int(row["answer"]) <= 50 and row["reference"].count(" = ") == 2
    with pytest.raises(ValueError):
        reasoning.Difficulty(min_steps=3, max_steps=2)


def test_first_sentence():
    fs = summarization.first_sentence
    assert fs("Return the sum of a and b.\n\nMore details.") == "Return the sum of a and b."
    assert fs("Return x, e.g. 3 or 4. Then more.") == "Return x, e.g. 3 or 4."
    assert fs("Open the file\nand read it. Second sentence.") == "Open the file and read it."
    assert fs("Compute the value of obj.attr here.") == "Compute the value of obj.attr here."
    assert fs("Too short.") is None
    assert fs("foo(a, b) -> int") is None  # C-style signature line
    assert fs(" ".join(["word"] * 50) + ".") is None


FAKE_MODULE = '''
import os


def add(a, b):
    """Add two numbers together.

    Longer explanation.
    """

    return a + b


class Box:
    @property
    def size(self):
        """Return the size of the box."""
        return self._size

    def only_doc(self):
        """Nothing else here at all."""


def undocumented():
    return 1
'''


def test_summarization_extract_examples():
    rows = summarization.extract_examples(FAKE_MODULE, "fake")
    assert [r["id"] for r in rows] == ["fake:add:5", "fake:Box.size:16"]
    assert rows[0]["source"] == "def add(a, b):\n    return a + b"
    assert rows[0]["reference"] == "Add two numbers together."
    assert rows[1]["source"] == "@property\ndef size(self):\n    return self._size"
    assert summarization.extract_examples("def broken(:\n", "bad") == []


def test_summarization_builder_on_small_tree(tmp_path):
    lib = tmp_path / "lib"
    for name in ("alpha", "beta", "gamma", "delta"):
        (lib / name).mkdir(parents=True)
        (lib / name / "__init__.py").write_text(FAKE_MODULE.replace("a + b", f"a + b  # {name}"))
    (lib / "dup.py").write_text(FAKE_MODULE)  # identical inputs to... itself only once
    (lib / "site-packages").mkdir()
    (lib / "site-packages" / "skipme.py").write_text(FAKE_MODULE.replace("a + b", "a - b"))
    out = tmp_path / "out"
    assert summarization.main(["--stdlib", str(lib), "--out", str(out)]) == 0
    rows = {s: [json.loads(x) for x in gzip.open(out / "summarization" / f"{s}.jsonl.gz", "rt")]
            for s in ("train", "validation", "test")}
    modules = {s: {r["id"].split(":")[0] for r in rows[s]} for s in rows}
    assert "skipme" not in str(rows)
    assert not (modules["train"] & modules["test"]) and not (modules["validation"] & modules["test"])
    sources = [r["source"] for s in rows for r in rows[s]]
    assert len(sources) == len(set(sources))  # "Box.size" is identical everywhere: kept once


@pytest.mark.slow
@pytest.mark.skipif(".".join(map(str, sys.version_info[:3])) != summarization.SHIPPED_FROM,
                    reason=f"the shipped summarization split comes from CPython {summarization.SHIPPED_FROM}")
def test_summarization_builder_reproduces_shipped_files(tmp_path):
    assert summarization.main(["--out", str(tmp_path), "--check"]) == 0


@pytest.mark.skipif(shutil.which("diatheke") is None,
                    reason="diatheke not installed (apt-get install -y diatheke sword-text-web sword-text-sparv)")
def test_translation_builder_sample_matches_shipped(tmp_path):
    books = ["Ruth", "Jude", "Joel"]
    assert translation.main(["--out", str(tmp_path), "--books", *books]) == 0
    task = get_task("translation")
    for split in ("test", "validation"):
        built = [json.loads(x) for x in gzip.open(Path(tmp_path) / "translation" / f"{split}.jsonl.gz", "rt")]
        shipped = [{"id": e.id, "source": e.source, "reference": e.reference} for e in task.load(split)
                   if e.id.rsplit(" ", 1)[0] in books]
        assert built == shipped and built
