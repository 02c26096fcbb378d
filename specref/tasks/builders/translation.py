"""English -> Spanish verse pairs from the World English Bible and the Reina-Valera 1909.

Toolchain (Debian bookworm): ``diatheke`` 1.9.0+dfsg-4+b4 reading the SWORD modules ``engWEB2015eb``
(package ``sword-text-web`` 426.0-1) and ``spaRV1909eb`` (``sword-text-sparv`` 2.60-1); both texts are in
the public domain. Install them with ``apt-get install -y diatheke sword-text-web sword-text-sparv``, or
``apt-get download`` the two text packages, ``dpkg -x`` them into a folder and set ``SWORD_PATH`` to its
``usr/share/sword``.

Rules: verses are read per book in OSIS markup and joined on (book, chapter, verse); pairs whose character
length ratio Spanish/English lies outside [0.5, 2] are dropped (the two modules use different
versification in a few places, e.g. parts of Job, which misaligns ~80 pairs); the split is BY BOOK, so no
verse of a test book is seen in training.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess

from specref.tasks.builders import _common

ENGLISH, SPANISH = "engWEB2015eb", "spaRV1909eb"
MIN_RATIO, MAX_RATIO = 0.5, 2.0
# Whole books held out (~1000 test, ~470 validation verses), mixing narrative, poetry, prophecy and letters.
TEST_BOOKS = ("Ruth", "Esther", "Lamentations", "Jonah", "Habakkuk", "Zephaniah", "Haggai", "Philippians",
              "Philemon", "James", "I Peter", "Jude")
VALIDATION_BOOKS = ("Joel", "Nahum", "Malachi", "Colossians", "II Thessalonians", "Titus", "I John")

_NOTE = re.compile(r"<note\b.*?</note>", re.DOTALL)
_GLUED_WORDS = re.compile(r"</w>\s*<w")
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_TRAILER = re.compile(r"^\([A-Za-z0-9_]+\)\s*$")


def clean_markup(text: str) -> str:
    """Plain text of an OSIS fragment: notes removed, glued word tags separated, tags stripped."""
    text = _NOTE.sub(" ", text)
    text = _GLUED_WORDS.sub("</w> <w", text)
    text = _TAG.sub("", text)
    return _SPACE.sub(" ", html.unescape(text)).strip()


def parse_osis(text: str, book: str) -> dict[tuple[int, int], str]:
    """``(chapter, verse) -> plain text`` from ``diatheke -f OSIS -k <book>`` output.

    A verse line carries ``<book> <chapter>:<verse>:`` anywhere in the line: text before it is a heading
    (psalm superscriptions, acrostic letters), which diatheke repeats on every verse of the chapter. We keep
    a heading only on the verse where it first appears, which is where the Spanish text carries it too.
    Lines without a marker continue the current verse; the final ``(<module>)`` line is dropped.
    """
    marker = re.compile(re.escape(book) + r" (\d+):(\d+):")
    parts: dict[tuple[int, int], list[str]] = {}
    last_heading: dict[int, str] = {}
    current: tuple[int, int] | None = None
    for line in text.splitlines():
        found = marker.search(line)
        if found is None:
            if current is not None and not _TRAILER.match(line):
                parts[current].append(line)
            continue
        chapter, verse = int(found.group(1)), int(found.group(2))
        current = (chapter, verse)
        heading = clean_markup(line[: found.start()])
        body = [line[found.end():]]
        if heading and heading != last_heading.get(chapter):
            body.insert(0, heading)
        last_heading[chapter] = heading
        parts[current] = body
    verses = {key: clean_markup(" ".join(chunks)) for key, chunks in parts.items()}
    return {key: value for key, value in verses.items() if value}


def _diatheke(module: str, fmt: str, key: str) -> str:
    exe = shutil.which("diatheke")
    if exe is None:
        raise FileNotFoundError(
            "diatheke is not installed: apt-get install -y diatheke sword-text-web sword-text-sparv "
            "(or see this module's docstring for a SWORD_PATH install without root)"
        )
    done = subprocess.run([exe, "-b", module, "-f", fmt, "-k", key], capture_output=True, text=True,
                          env=dict(os.environ), check=True)
    if not done.stdout.strip():
        raise FileNotFoundError(f"diatheke returned nothing for module {module}; is its package installed?")
    return done.stdout


def list_books() -> list[str]:
    """The 66 book names in canonical order, as diatheke spells them."""
    books: list[str] = []
    for line in _diatheke(SPANISH, "plain", "Gen 1:1-Rev 22:21").splitlines():
        found = re.match(r"^(.+?) \d+:\d+:", line)
        if found and found.group(1) not in books:
            books.append(found.group(1))
    if len(books) != 66:
        raise ValueError(f"expected 66 books from {SPANISH}, found {len(books)}: module version differs?")
    return books


def pair_book(book: str, english: str, spanish: str) -> list[dict]:
    """Aligned, length-filtered rows of one book from its two OSIS dumps."""
    eng, spa = parse_osis(english, book), parse_osis(spanish, book)
    rows = []
    for chapter, verse in sorted(set(eng) & set(spa)):
        source, target = eng[(chapter, verse)], spa[(chapter, verse)]
        if MIN_RATIO <= len(target) / len(source) <= MAX_RATIO:
            rows.append({"id": f"{book} {chapter}:{verse}", "source": source, "reference": target})
    return rows


def split_of(book: str) -> str:
    if book in TEST_BOOKS:
        return "test"
    return "validation" if book in VALIDATION_BOOKS else "train"


def build(args: argparse.Namespace) -> dict[str, list[dict]]:
    books = list_books()
    if args.books:
        unknown = set(args.books) - set(books)
        if unknown:
            raise ValueError(f"unknown books {sorted(unknown)}; diatheke spells them like {books[:3]}")
        books = [b for b in books if b in args.books]
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for book in books:
        rows = pair_book(book, _diatheke(ENGLISH, "OSIS", book), _diatheke(SPANISH, "OSIS", book))
        splits[split_of(book)].extend(rows)
    return splits


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--books", nargs="*", default=None,
                        help="only these books (for a quick sample); default: all 66")


def main(argv: list[str] | None = None) -> int:
    return _common.main("translation", build, _add_arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
