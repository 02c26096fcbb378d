"""The points store (specref.repro.store): schema round trip and dedup, torn last lines, damage, atomic writes."""

from __future__ import annotations

import csv
import math
import os

import pytest
from test_repro import _row

from specref.repro.store import COLUMNS, KEY_COLUMNS, CorruptStoreError, PointStore, atomic_write


def _full_row(**kw):
    row = {c: None for c in COLUMNS if c != "row_crc32"}
    row.update(_row("chow", 0.5, 12.5, 0.7))
    row.update(kw)
    return row


def test_store_schema_roundtrip_and_dedup(tmp_path):
    store = PointStore(tmp_path / "points.csv")
    assert store.append(_full_row(tokens=7, cost_ratio_source="params"))
    assert not store.append(_full_row(tokens=8))  # same key: skipped
    assert store.append(_full_row(alpha=0.25))
    rows = store.read()
    assert len(rows) == 2 and rows[0]["tokens"] == 7 and rows[0]["alpha"] == 0.5 and rows[0]["top_p"] is None
    assert math.isnan(rows[0]["acceptance_rate"]) and rows[0]["cost_ratio_source"] == "params"
    with open(tmp_path / "points.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == COLUMNS and header[-1] == "row_crc32"
    assert set(KEY_COLUMNS) < set(COLUMNS)
    with pytest.raises(ValueError, match="unknown columns"):
        store.append({**_full_row(alpha=0.1), "bogus": 1})


def test_store_drops_torn_last_line_and_refuses_damage(tmp_path):
    path = tmp_path / "points.csv"
    store = PointStore(path)
    store.append(_full_row(alpha=0.1))
    store.append(_full_row(alpha=0.2))
    text = path.read_text()
    path.write_text(text + text.splitlines()[-1][:25])  # an append cut short by an interruption
    assert len(PointStore(path).read()) == 2
    assert PointStore(path).append(_full_row(alpha=0.3))
    assert [r["alpha"] for r in PointStore(path).read()] == [0.1, 0.2, 0.3]
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("12.5", "13.5")  # a complete line whose checksum fails: real damage
    path.write_text("".join(lines))
    with pytest.raises(CorruptStoreError, match="line 2"):
        PointStore(path).read()
    path.write_text("a,b\n1,2\n")
    with pytest.raises(CorruptStoreError, match="header"):
        PointStore(path).read()


def test_atomic_write_uses_unique_temporaries_and_leaves_none(tmp_path, monkeypatch):
    target = tmp_path / "summary.md"
    (tmp_path / "summary.md.tmp").write_text("someone else's temporary")
    atomic_write(target, "one")
    assert target.read_text() == "one" and (tmp_path / "summary.md.tmp").read_text() == "someone else's temporary"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "two")
    assert target.read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.md", "summary.md.tmp"]


def test_atomic_write_gives_the_ordinary_permissions(tmp_path):
    """Summaries and run.json are readable like any file the user writes (0o666 less the umask), not 0o600."""
    umask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "sub" / "run.json", "{}")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
