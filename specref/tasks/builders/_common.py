"""Shared plumbing of the builders: deterministic gzip JSON lines, checksums, the command line."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from specref.tasks import DATA_DIR, SPLITS

CHECKSUM_FILE = "CHECKSUMS.sha256"


def jsonl_gz_bytes(rows: Iterable[dict]) -> bytes:
    """Rows as gzip'd JSON lines whose bytes are reproducible (mtime 0, no file name, level 9)."""
    raw = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buffer, mtime=0) as handle:
        handle.write(raw)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_checksums(out: Path) -> dict[str, str]:
    """``relative path -> sha256`` from ``out/CHECKSUMS.sha256`` (empty if absent)."""
    file = out / CHECKSUM_FILE
    if not file.is_file():
        return {}
    table = {}
    for line in file.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            table[name.strip()] = digest
    return table


def write_splits(task: str, splits: dict[str, list[dict]], out: Path) -> dict[str, str]:
    """Write the three splits of ``task`` under ``out`` and record their checksums; returns them."""
    if set(splits) != set(SPLITS):
        raise ValueError(f"a builder must produce exactly the splits {SPLITS}, got {sorted(splits)}")
    (out / task).mkdir(parents=True, exist_ok=True)
    table = read_checksums(out)
    digests = {}
    for split in SPLITS:
        data = jsonl_gz_bytes(splits[split])
        rel = f"{task}/{split}.jsonl.gz"
        (out / rel).write_bytes(data)
        digests[rel] = table[rel] = sha256(data)
    lines = [f"{table[name]}  {name}\n" for name in sorted(table)]
    (out / CHECKSUM_FILE).write_text("".join(lines))
    return digests


def compare_with_shipped(digests: dict[str, str]) -> list[str]:
    """Names whose fresh checksum differs from the one recorded in the package data."""
    shipped = read_checksums(DATA_DIR)
    return [name for name, digest in digests.items() if shipped.get(name) != digest]


def main(task: str, build: Callable[[argparse.Namespace], dict[str, list[dict]]],
         add_arguments: Callable[[argparse.ArgumentParser], None], argv: list[str] | None = None) -> int:
    """The common command line: ``--out DIR`` (default: the package data) and ``--check``."""
    parser = argparse.ArgumentParser(prog=f"python -m specref.tasks.builders.{task}")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="data root (default: the package's)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless the built files match the checksums shipped with the package")
    add_arguments(parser)
    args = parser.parse_args(argv)
    splits = build(args)
    digests = write_splits(task, splits, args.out)
    for split in SPLITS:
        print(f"{task}/{split}: {len(splits[split])} examples, sha256 {digests[f'{task}/{split}.jsonl.gz']}")
    if args.check:
        bad = compare_with_shipped(digests)
        if bad:
            print(f"MISMATCH with the shipped checksums: {bad}")
            return 1
        print("all files match the shipped checksums")
    return 0
