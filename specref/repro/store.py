"""The tidy, resumable CSV of sweep points: one row per (task, pair, method, alpha, ..., seed).

Why append-only with a checksum instead of rewriting the whole file per row: a full sweep has thousands of
rows, and rewriting a megabyte file after every point is quadratic. Instead every row is written with ONE
``write`` of a complete line, then flushed and fsync'ed, and carries ``row_crc32``, a CRC of its other
fields. The reader validates every line: a last line cut short by an interruption (no newline, wrong field
count or bad checksum) is dropped and truncated away before the next append; damage anywhere else is a
clear error, never skipped silently. Keys already present are never written again, so an interrupted sweep
resumes with no lost and no duplicated rows. An advisory lock (``fcntl.flock`` on the CSV itself) keeps two
processes from appending to one file at once.

Files written before a column was added still read: their header names an older layout
(:data:`LEGACY_LAYOUTS`), their rows read with the missing columns empty (NaN / None), and their checksums are
checked against the fields they were written with. The first append to such a file rewrites it once in the
current layout (every row validated first, a temporary file in the same folder, then ``os.replace``), so a
file never mixes layouts.
"""

from __future__ import annotations

import csv
import io
import math
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from specref.atomic import write_atomic

__all__ = [
    "COLUMNS",
    "KEY_COLUMNS",
    "LEGACY_LAYOUTS",
    "CorruptStoreError",
    "PointStore",
    "atomic_write",
    "row_key",
    "format_value",
]

#: Columns that identify a point; a row with the same values is the same measurement.
KEY_COLUMNS: tuple[str, ...] = (
    "task", "pair", "method", "alpha", "options", "temperature", "gamma", "top_p", "seed",
    "split", "n_examples", "max_new_tokens",
)

#: Every column, in file order (``row_crc32`` is always last).
COLUMNS: tuple[str, ...] = (
    *KEY_COLUMNS,
    # what the point is
    "label", "param", "metric",
    # quality; quality_se is the standard error of ``quality`` from a bootstrap over the examples and
    # quality_diff_se that of ``quality`` minus the target-only baseline's on the same resamples
    # (noise_method "bootstrap", n_boot resamples; see specref.repro.runner): the noise one seed carries
    "quality", "empty_rate", "loop_rate", "quality_se", "quality_diff_se", "noise_method", "n_boot",
    # cost (latency_* are relative to target-only decoding of the same examples; 1.0 = as slow as it)
    "latency_model", "latency_wall", "rejection_rate", "target_calls_per_token", "tokens_per_target_call",
    "acceptance_rate", "deferral_rate",
    # raw counts behind the ratios
    "tokens", "target_calls", "draft_calls", "wall_s", "baseline_wall_s", "baseline_target_calls",
    "cost_ratio", "cost_ratio_source", "cost_ratio_measured",
    # provenance
    "predictions_sha", "run_id", "device", "batch_size", "specref_version", "time_utc",
    "row_crc32",
)

#: Columns added since the first layout; files with an older header read with these empty.
_ADDED: tuple[tuple[str, ...], ...] = (("quality_se", "quality_diff_se", "noise_method", "n_boot"),)

#: Earlier headers this version still reads (newest first).
LEGACY_LAYOUTS: tuple[tuple[str, ...], ...] = tuple(
    tuple(c for c in COLUMNS if not any(c in added for added in _ADDED[i:])) for i in range(len(_ADDED))
)[::-1]

_INT_COLUMNS = {"gamma", "seed", "n_examples", "max_new_tokens", "tokens", "batch_size", "n_boot"}
_STR_COLUMNS = {
    "task", "pair", "method", "options", "split", "label", "param", "metric", "cost_ratio_source",
    "predictions_sha", "run_id", "device", "specref_version", "time_utc", "row_crc32", "noise_method",
}


class CorruptStoreError(ValueError):
    """A line other than the last is damaged, or the header is not ours: refuse rather than guess."""


def format_value(column: str, value: Any) -> str:
    """Canonical text of a value, so a key read back from the file equals the key about to be written.

    Floats use ``repr`` (shortest round-trip form); ``None`` and NaN are the empty string.
    """
    if value is None:
        return ""
    if column in _STR_COLUMNS:
        return str(value)
    if column in _INT_COLUMNS:
        return str(int(value))
    f = float(value)
    if math.isnan(f):
        return ""
    if f == 0.0:
        f = 0.0  # -0.0 and 0.0 are one key
    return repr(f)


def parse_value(column: str, text: str) -> Any:
    """Inverse of :func:`format_value` (empty -> None for keys and strings, NaN for measurements)."""
    if column in _STR_COLUMNS:
        return text
    if text == "":
        return None if column in KEY_COLUMNS or column in _INT_COLUMNS else math.nan
    if column in _INT_COLUMNS:
        return int(text)
    return float(text)


def row_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The identity of a point as canonical strings (missing key columns are an error)."""
    missing = [c for c in KEY_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"row lacks key columns {missing}")
    return tuple(format_value(c, row[c]) for c in KEY_COLUMNS)


def _crc(fields: Iterable[str]) -> str:
    return format(zlib.crc32("\x1f".join(fields).encode("utf-8")), "08x")


def _line(fields: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()


def _encode(row: Mapping[str, Any]) -> str:
    """One complete CSV line of ``row`` in the current layout, checksum last."""
    fields = [format_value(c, row.get(c)) for c in COLUMNS[:-1]]
    fields.append(_crc(fields))
    return _line(fields)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` all or nothing (:func:`specref.atomic.write_atomic`: a uniquely named temp
    file in the same folder, fsync, rename, with the ordinary file permissions), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, data.encode("utf-8") if isinstance(data, str) else data)


class PointStore:
    """Append-only CSV of points with validated reads; see the module docstring for the guarantees."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # (size, mtime_ns) of the file when last scanned -> its keys, valid prefix length and layout, so that
        # appending n rows reads the file once, not n times.
        self._cache: tuple[tuple[int, int], set[tuple[str, ...]], int, tuple[str, ...]] | None = None

    # -- reading --------------------------------------------------------------------------------------
    def _scan(self) -> tuple[list[dict[str, str]], int, tuple[str, ...]]:
        """Valid rows as raw strings (every current column; missing ones ""), the byte length of the valid
        prefix of the file, and the layout (header) the file was written with."""
        if not self.path.exists():
            return [], 0, COLUMNS
        data = self.path.read_bytes()
        if not data:
            return [], 0, COLUMNS
        rows: list[dict[str, str]] = []
        lines = data.split(b"\n")
        header_text = lines[0].decode("utf-8", errors="replace")
        if len(lines) == 1:  # header itself cut short
            return [], 0, COLUMNS
        header = tuple(next(csv.reader([header_text]), []))
        if header not in (COLUMNS, *LEGACY_LAYOUTS):
            raise CorruptStoreError(
                f"{self.path}: header does not match this version's columns; move the file away or use another --out"
            )
        pos = len(lines[0]) + 1
        body = lines[1:]
        for i, raw in enumerate(body):
            last = i == len(body) - 1
            if last and raw == b"":  # the file ends with a newline: nothing after it
                break
            problem = self._check_line(raw, header)
            if problem is None and not last:
                got = dict(zip(header, next(csv.reader([raw.decode("utf-8")]))))
                rows.append({c: got.get(c, "") for c in COLUMNS})
                pos += len(raw) + 1
                continue
            if last:  # an unterminated last line: an interrupted append, whatever it contains
                break
            raise CorruptStoreError(f"{self.path}: line {i + 2} is damaged ({problem}); refusing to guess")
        return rows, pos, header

    @staticmethod
    def _check_line(raw: bytes, layout: tuple[str, ...] = COLUMNS) -> str | None:
        try:
            text = raw.decode("utf-8")
            fields = next(csv.reader([text]))
        except (UnicodeDecodeError, csv.Error, StopIteration) as err:
            return f"unreadable: {err}"
        if len(fields) != len(layout):
            return f"{len(fields)} fields, expected {len(layout)}"
        if _crc(fields[:-1]) != fields[-1]:
            return "checksum mismatch"
        return None

    def read(self) -> list[dict[str, Any]]:
        """All valid rows, typed (see :func:`parse_value`), in file order; columns an older file lacks are
        NaN (measurements) or None / "" (counts, strings)."""
        raw, _, _ = self._scan()
        return [{c: parse_value(c, r[c]) for c in COLUMNS} for r in raw]

    def _stamp(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return (-1, -1)
        return (st.st_size, st.st_mtime_ns)

    def _index(self) -> tuple[set[tuple[str, ...]], int, tuple[str, ...]]:
        stamp = self._stamp()
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1], self._cache[2], self._cache[3]
        raw, valid, layout = self._scan()
        keys = {tuple(r[c] for c in KEY_COLUMNS) for r in raw}
        if len(keys) != len(raw):
            raise CorruptStoreError(f"{self.path}: duplicated keys; the file was edited by hand or by two writers")
        self._cache = (stamp, keys, valid, layout)
        return keys, valid, layout

    def keys(self) -> set[tuple[str, ...]]:
        """Keys of the stored rows (canonical strings, in :data:`KEY_COLUMNS` order)."""
        return set(self._index()[0])

    def __contains__(self, row: Mapping[str, Any]) -> bool:
        return row_key(row) in self._index()[0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.read())

    # -- writing --------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[int]:
        """The CSV opened for writing, under an exclusive advisory lock held until the block ends.

        Why the inode check: an upgrade of an old layout replaces the file; a writer that was waiting on the
        old file's lock must not append to the replaced (unlinked) file, so it reopens the path.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - non-POSIX: single writer assumed
                pass
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            yield fd
        finally:
            os.close(fd)  # closing releases the lock

    def _upgrade(self) -> None:
        """Rewrite a file of an older layout in the current one (caller holds the lock)."""
        raw, _, _ = self._scan()
        rows = [{c: parse_value(c, r[c]) for c in COLUMNS} for r in raw]
        st = os.stat(self.path)
        atomic_write(self.path, _line(list(COLUMNS)) + "".join(_encode(r) for r in rows))
        os.chmod(self.path, st.st_mode & 0o777)
        self._cache = None

    def append(self, row: Mapping[str, Any]) -> bool:
        """Write ``row`` unless its key is already stored; True when written.

        Unknown columns are an error (a typo would otherwise vanish); missing non-key columns are empty.
        """
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown columns {sorted(unknown)}")
        key = row_key(row)
        line = _encode(row)
        while True:
            with self._locked() as fd:
                keys, valid, layout = self._index()
                if key in keys:
                    return False
                if layout != COLUMNS and valid > 0:
                    self._upgrade()
                    continue  # the path is a new file now: lock that one
                size = os.fstat(fd).st_size
                if size != valid:  # drop an interrupted last line (or a cut header) before appending
                    os.ftruncate(fd, valid)
                    size = valid
                payload = ((_line(list(COLUMNS)) if size == 0 else "") + line).encode("utf-8")
                os.lseek(fd, 0, os.SEEK_END)
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                self._cache = (self._stamp(), keys | {key}, size + len(payload), COLUMNS)
            return True
