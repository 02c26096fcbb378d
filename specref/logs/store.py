"""Sharded, atomic, resumable Parquet storage of logs, and a reader that validates everything it reads.

Directory layout::

    DIR/manifest.json          the only source of truth for which shards (and examples) are complete
    DIR/shard-000000.parquet   whole examples only; never rewritten once listed
    DIR/.lock                  advisory lock so that two jobs never write one directory

Crash safety. A shard is serialised in memory, written to a temporary file, fsync'd and renamed into
place (os.replace is atomic on POSIX), the directory is fsync'd, and only then is the manifest (written the
same way) updated to list it. A crash at any point leaves either the old manifest (the shard's examples
are redone on resume; a stray temporary or unlisted shard file is deleted) or the new one. Rows are never
lost (an example is complete only once listed) nor duplicated (a listed example is never written again).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from specref.atomic import fsync_dir, write_atomic
from specref.logs.schema import FORMAT, VERSION, Column, LogFormatError, LogLayout, check_names, columns

__all__ = ["LogBusyError", "LogWriter", "Logs", "open_logs", "read_logs", "read_summary"]

MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^shard-(\d{6})\.parquet$")
_ARROW = {"int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(), "string": pa.string()}
_NUMPY = {"int32": np.int32, "int64": np.int64, "float32": np.float32}
#: Shards decoded at once by the reader (each single-threaded; see _read_shard).
_READ_THREADS = min(8, os.cpu_count() or 1)


class LogBusyError(ValueError):
    """Another process holds the lock of a log directory (two writers would interleave their shards)."""


def arrow_schema(layout: LogLayout) -> pa.Schema:
    fields = []
    for col in columns(layout):
        base = _ARROW[col.kind]
        fields.append(pa.field(col.name, pa.list_(base, col.width) if col.width else base, nullable=False))
    return pa.schema(fields)


# ---- atomic file operations ------------------------------------------------------------------------


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`specref.atomic.write_atomic`: unique temp name in
    the log folder, fsync, rename, fsync the folder)."""
    write_atomic(path, data, commit=lambda tmp, dst: _commit(tmp, dst))


def _commit(tmp: Path, path: Path) -> None:
    # Separate so tests can inject a crash between the temp write and the rename.
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- ranges of example indices ------------------------------------------------------------------------


def _to_ranges(indices: Sequence[int]) -> list[list[int]]:
    """Sorted distinct indices -> half-open ranges ``[[start, end), ...]``."""
    ranges: list[list[int]] = []
    for i in indices:
        if ranges and ranges[-1][1] == i:
            ranges[-1][1] = i + 1
        else:
            ranges.append([i, i + 1])
    return ranges


def _from_ranges(ranges: Iterable[Sequence[int]]) -> set[int]:
    out: set[int] = set()
    for start, end in ranges:
        out.update(range(int(start), int(end)))
    return out


# ---- manifest ---------------------------------------------------------------------------------------


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise LogFormatError(f"{directory} has no {MANIFEST}; it is not a specref log directory")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LogFormatError(f"{path} is corrupt (not valid JSON): {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LogFormatError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise LogFormatError(f"{path} has format version {manifest.get('version')!r}; this reader reads {VERSION}")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise LogFormatError(f"{path} has no shard list")
    seen: set[int] = set()
    for shard in shards:
        try:
            name, rows, ranges = shard["file"], int(shard["rows"]), shard["examples"]
            str(shard["sha256"]), int(shard["bytes"])
        except (KeyError, TypeError, ValueError):
            raise LogFormatError(f"{path} has a malformed shard entry {shard!r}") from None
        if not _SHARD_RE.match(str(name)) or rows < 0:
            raise LogFormatError(f"{path} has a malformed shard entry {shard!r}")
        covered = _from_ranges(ranges)
        if covered & seen:
            raise LogFormatError(f"{path}: shard {name} repeats examples listed by an earlier shard")
        seen |= covered
    return manifest


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8")


# ---- writer ------------------------------------------------------------------------------------------


class LogWriter:
    """Append whole examples to a log directory; resumes an existing one with the same layout and source.

    Use as a context manager::

        with LogWriter(out, layout, source={"task": "translation", ...}) as writer:
            for i in writer.pending(range(n)):
                writer.add_example(i, example_id, rows)   # rows: {column: array [n_positions, ...]}

    ``examples_per_shard`` examples are buffered, then written as one shard. Leaving the ``with`` block
    normally flushes the rest; ``finish()`` also marks the log finished (every requested example logged).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        layout: LogLayout,
        source: Mapping[str, Any] | None = None,
        examples_per_shard: int = 64,
        overwrite: bool = False,
    ) -> None:
        if examples_per_shard < 1:
            raise ValueError(f"examples_per_shard must be >= 1, got {examples_per_shard}")
        self.directory = Path(directory)
        self.layout = layout
        self.source = dict(source or {})
        self.examples_per_shard = int(examples_per_shard)
        self._columns: list[Column] = columns(layout)
        self._schema = arrow_schema(layout)
        self._buffer: list[tuple[int, str, dict[str, np.ndarray]]] = []
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"the log output {self.directory} exists and is not a folder; give a folder")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.directory / ".lock", "a+")  # noqa: SIM115 - held for the writer's lifetime
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            # Checked before the manifest is read or anything is cleaned up: the running job loses nothing.
            raise LogBusyError(
                f"another process is writing logs to {self.directory} (it holds {self.directory / '.lock'}); "
                "wait for it to finish or write to another folder"
            ) from None
        self._manifest = self._open_manifest(overwrite)
        self._cleanup()
        self.completed: set[int] = set()
        for shard in self._manifest["shards"]:
            self.completed |= _from_ranges(shard["examples"])

    # -- setup ---------------------------------------------------------------------------------------
    def _open_manifest(self, overwrite: bool) -> dict[str, Any]:
        fresh = {
            "format": FORMAT,
            "version": VERSION,
            "layout": self.layout.to_json(),
            "source": self.source,
            "columns": [{"name": c.name, "type": c.kind, "width": c.width} for c in self._columns],
            "shards": [],
            "finished": False,
        }
        path = self.directory / MANIFEST
        if not path.exists() or overwrite:
            # Old shards become unlisted by this write and _cleanup deletes them: a crash in between leaves a
            # valid (empty) log, never a manifest that lists deleted files.
            _write_file(path, _manifest_bytes(fresh))
            return fresh
        manifest = _read_manifest(self.directory)
        old_layout = LogLayout.from_json(manifest.get("layout", {}))
        if old_layout != self.layout or manifest.get("source") != json.loads(json.dumps(self.source)):
            raise ValueError(
                f"{self.directory} already holds logs of a different job (layout/source differ: "
                f"{manifest.get('layout')} {manifest.get('source')}); pass overwrite or use another directory"
            )
        return manifest

    def _cleanup(self) -> None:
        """Delete partial temp files and shards that a crashed job wrote but never listed."""
        listed = {s["file"] for s in self._manifest["shards"]}
        for path in self.directory.iterdir():
            stray_tmp = path.name.startswith(".") and ".tmp-" in path.name
            unlisted = _SHARD_RE.match(path.name) and path.name not in listed
            if stray_tmp or unlisted:
                path.unlink()

    # -- writing ---------------------------------------------------------------------------------------
    def pending(self, indices: Iterable[int]) -> list[int]:
        """The example indices among ``indices`` not yet in a completed shard, in order."""
        return [int(i) for i in indices if int(i) not in self.completed]

    def add_example(self, index: int, example_id: str, rows: Mapping[str, Any]) -> None:
        """Buffer all rows of one example. ``rows`` maps every column except example_index/example_id to an
        array of ``n`` rows (``[n]`` or ``[n, width]``); ``n`` may be 0."""
        index = int(index)
        if index in self.completed or any(index == b[0] for b in self._buffer):
            raise ValueError(f"example {index} is already logged")
        if self._buffer and index < self._buffer[-1][0]:
            raise ValueError("examples must be added in increasing index order")
        arrays: dict[str, np.ndarray] = {}
        n = None
        for col in self._columns:
            if col.name in ("example_index", "example_id"):
                continue
            if col.name not in rows:
                raise ValueError(f"example {index}: missing column {col.name!r}")
            value = rows[col.name]
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            arr = np.asarray(value, dtype=_NUMPY[col.kind])
            expected = (arr.shape[0], col.width) if col.width else (arr.shape[0],) if arr.ndim else None
            if expected is None or arr.shape != expected:
                raise ValueError(f"example {index}: column {col.name!r} has shape {arr.shape}, width {col.width}")
            if col.kind == "float32" and not np.isfinite(arr).all():
                # Refused here, where the broken model or input is still at hand, not at evaluation time.
                raise ValueError(f"example {index}: column {col.name!r} has non-finite values (NaN/inf)")
            if n is None:
                n = arr.shape[0]
            elif arr.shape[0] != n:
                raise ValueError(f"example {index}: columns have different row counts ({col.name!r})")
            arrays[col.name] = arr
        extra = set(rows) - {c.name for c in self._columns}
        if extra:
            raise ValueError(f"example {index}: unknown columns {sorted(extra)}")
        self._buffer.append((index, str(example_id), arrays))
        if len(self._buffer) >= self.examples_per_shard:
            self.flush()

    def flush(self) -> None:
        """Write the buffered examples as one shard and list it in the manifest."""
        if not self._buffer:
            return
        indices = [b[0] for b in self._buffer]
        counts = [len(next(iter(b[2].values()))) if b[2] else 0 for b in self._buffer]
        data: dict[str, pa.Array] = {}
        for col in self._columns:
            if col.name == "example_index":
                values = np.repeat(np.asarray(indices, dtype=np.int64), counts)
                data[col.name] = pa.array(values, type=pa.int64())
            elif col.name == "example_id":
                data[col.name] = pa.array(
                    [eid for (_, eid, _), c in zip(self._buffer, counts) for _ in range(c)], type=pa.string()
                )
            else:
                stacked = np.concatenate([b[2][col.name] for b in self._buffer], axis=0)
                flat = pa.array(stacked.reshape(-1), type=_ARROW[col.kind])
                data[col.name] = pa.FixedSizeListArray.from_arrays(flat, col.width) if col.width else flat
        table = pa.Table.from_arrays([data[f.name] for f in self._schema], schema=self._schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        blob = sink.getvalue().to_pybytes()
        name = f"shard-{len(self._manifest['shards']):06d}.parquet"
        _write_file(self.directory / name, blob)
        entry = {
            "file": name,
            "rows": int(table.num_rows),
            "examples": _to_ranges(indices),
            "num_examples": len(indices),
            "sha256": _sha256(blob),
            "bytes": len(blob),
        }
        manifest = {**self._manifest, "shards": [*self._manifest["shards"], entry]}
        _write_file(self.directory / MANIFEST, _manifest_bytes(manifest))
        self._manifest = manifest
        self.completed.update(indices)
        self._buffer = []

    def finish(self) -> None:
        """Flush and mark the log finished (every example the job was asked for is logged)."""
        self.flush()
        if not self._manifest["finished"]:
            self._manifest = {**self._manifest, "finished": True}
            _write_file(self.directory / MANIFEST, _manifest_bytes(self._manifest))

    def close(self) -> None:
        if self._lock.closed:
            return
        try:
            self.flush()
        finally:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            # On an error, drop the partial buffer rather than listing examples that may be incomplete.
            self._buffer = []
            with contextlib.suppress(Exception):
                self.close()


# ---- reader -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Logs:
    """A validated log directory. ``table`` holds the requested columns of every listed shard, in order."""

    directory: Path
    layout: LogLayout
    source: dict[str, Any]
    finished: bool
    table: pa.Table

    @property
    def num_rows(self) -> int:
        return int(self.table.num_rows)

    def column(self, name: str) -> np.ndarray:
        """Column as a numpy array: ``[N]`` for scalars, ``[N, width]`` for lists (strings: object array)."""
        chunked = self.table.column(name)
        typ = chunked.type
        if pa.types.is_fixed_size_list(typ):
            arr = chunked.combine_chunks() if chunked.num_chunks else pa.array([], type=typ)
            values = arr.flatten().to_numpy(zero_copy_only=False)
            return values.reshape(len(arr), typ.list_size)
        return chunked.to_numpy()

    def to_torch(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Columns as torch tensors (ints as long); ``example_id`` stays a list of strings."""
        import torch

        out: dict[str, Any] = {}
        for name in names or self.table.column_names:
            if name == "example_id":
                out[name] = self.table.column(name).to_pylist()
                continue
            arr = self.column(name)
            out[name] = torch.from_numpy(arr.astype(np.int64) if arr.dtype.kind == "i" else arr.copy())
        return out


def open_logs(
    directory: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
    verify_checksums: bool = True,
) -> Logs:
    """Read and validate a log directory.

    Checks the manifest, each listed shard's size and sha256, its Parquet schema against the layout, its row
    count and example indices against the manifest, and that its rows are strictly ordered by
    (example_index, position). Any failure raises :class:`LogFormatError` naming the file; nothing is
    skipped. Files the manifest does not list (left by a crashed job) are ignored with a warning.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    layout = LogLayout.from_json(manifest.get("layout", {}))
    names = check_names(columns, layout)
    expected = arrow_schema(layout)
    listed = {s["file"] for s in manifest["shards"]}
    strays = [p.name for p in directory.glob("shard-*.parquet") if p.name not in listed]
    if strays:
        warnings.warn(f"{directory}: ignoring unlisted shard files {strays} (left by an interrupted job)",
                      stacklevel=2)
    read_names = sorted(set(names) | {"example_index", "position"}, key=expected.names.index)
    shards = manifest["shards"]

    def read(shard: Mapping[str, Any]) -> pa.Table:
        return _read_shard(directory / shard["file"], shard, expected, read_names, verify_checksums)

    # Each shard is decoded single-threaded in a worker of this pool, which ``with`` joins before any error
    # propagates. Arrow's own thread pool (use_threads=True) would keep decoding the other columns of a
    # failed shard after the exception, and a process exiting with that work in flight aborts
    # ("terminate called without an active exception", SIGABRT) once torch is loaded.
    if len(shards) > 1 and _READ_THREADS > 1:
        with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(shards))) as pool:
            futures = [pool.submit(read, shard) for shard in shards]
            done = [(f.result() if f.exception() is None else f.exception()) for f in futures]
        for item in done:  # the first bad shard in manifest order, whatever finished first
            if isinstance(item, BaseException):
                raise item
        tables = list(done)
    else:
        tables = [read(shard) for shard in shards]
    table = pa.concat_tables(tables) if tables else expected.empty_table().select(read_names)
    return Logs(
        directory=directory,
        layout=layout,
        source=dict(manifest.get("source", {})),
        finished=bool(manifest.get("finished", False)),
        table=table.select(names),
    )


def _read_shard(
    path: Path, shard: Mapping[str, Any], expected: pa.Schema, read_names: list[str], verify_checksums: bool
) -> pa.Table:
    """One listed shard, fully validated (size, sha256, schema, rows, example ranges, order, finite floats)."""
    if not path.is_file():
        raise LogFormatError(f"shard {path} listed in the manifest is missing")
    blob = path.read_bytes()  # read whole, never memory-mapped: a file changed under us cannot fault later
    if len(blob) != int(shard["bytes"]):
        raise LogFormatError(
            f"shard {path} is truncated or was modified: {len(blob)} bytes, manifest says {shard['bytes']}"
        )
    if verify_checksums and _sha256(blob) != shard["sha256"]:
        raise LogFormatError(f"shard {path} is corrupt: its sha256 does not match the manifest")
    try:
        parquet = pq.ParquetFile(pa.BufferReader(blob))
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as err:
        raise LogFormatError(f"shard {path} is not a readable Parquet file: {err}") from None
    if not schema.equals(expected):
        raise LogFormatError(f"shard {path} does not have the layout's schema: {_schema_diff(schema, expected)}")
    try:
        table = parquet.read(columns=read_names, use_threads=False)
    except (pa.ArrowException, OSError) as err:
        raise LogFormatError(f"shard {path} is not a readable Parquet file: {err}") from None
    if table.num_rows != int(shard["rows"]):
        raise LogFormatError(f"shard {path} has {table.num_rows} rows, the manifest says {shard['rows']}")
    index = table.column("example_index").to_numpy()
    allowed = _from_ranges(shard["examples"])
    if index.size and not set(np.unique(index).tolist()) <= allowed:
        raise LogFormatError(f"shard {path} holds examples outside its manifest ranges {shard['examples']}")
    _check_order(table, path)
    _check_finite(table, path)
    return table


def _schema_diff(got: pa.Schema, expected: pa.Schema) -> str:
    """The first difference between two schemas, on one line."""
    if got.names != expected.names:
        missing = [n for n in expected.names if n not in got.names]
        extra = [n for n in got.names if n not in expected.names]
        return f"columns differ (missing {missing}, unexpected {extra})" if missing or extra else "columns reordered"
    for a, b in zip(got, expected):
        if not a.equals(b):
            return f"column {a.name!r} is {a.type}{'' if a.nullable else ' not null'}, expected {b.type}" + (
                "" if b.nullable else " not null")
    return "schema metadata differs"


def _check_finite(table: pa.Table, path: Path) -> None:
    # Probabilities, entropies and hidden states are finite by construction; a NaN or inf means a broken
    # model or file, and every rule and head would silently decide on it.
    for name in table.column_names:
        typ = table.schema.field(name).type
        values = table.column(name)
        if pa.types.is_fixed_size_list(typ):
            if not pa.types.is_floating(typ.value_type):
                continue
            arr = values.combine_chunks() if values.num_chunks else pa.array([], type=typ)
            flat = arr.flatten().to_numpy(zero_copy_only=False)
        elif pa.types.is_floating(typ):
            flat = values.to_numpy()
        else:
            continue
        bad = ~np.isfinite(flat)
        if bad.any():
            raise LogFormatError(f"shard {path}: column {name!r} holds {int(bad.sum())} non-finite values (NaN/inf)")


def _check_order(table: pa.Table, path: Path) -> None:
    # Within a shard rows are strictly ordered; across shards the manifest's disjoint example ranges (checked
    # above) already rule out duplicates, and shards come in write order (ascending for the loggers).
    if table.num_rows < 2:
        return
    index = table.column("example_index").to_numpy()
    position = table.column("position").to_numpy()
    di, dp = np.diff(index), np.diff(position)
    if bool(((di < 0) | ((di == 0) & (dp <= 0))).any()):
        raise LogFormatError(f"shard {path}: rows are not strictly ordered by (example_index, position)")


def read_logs(directory: str | os.PathLike[str], columns: Sequence[str] | None = None) -> dict[str, Any]:
    """Shortcut: validated columns of a log directory as torch tensors."""
    return open_logs(directory, columns).to_torch()


def read_summary(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    skip: Sequence[str] = (),
) -> tuple[dict[str, Any], LogLayout]:
    """Validated columns of one or more log directories, concatenated (``example_id`` as a list of str).

    Column names starting with any prefix in ``skip`` are not read. The logs must have equal layouts (the
    alpha grid may differ only when the token-rule columns are skipped) and must not share an example: a
    folder given twice, or two folders logging the same example id, would count its rows twice. Returns the
    concatenated columns and the first log's layout.
    """
    import torch

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("no log directories given")
    seen: dict[Path, str] = {}
    for path in paths:
        key = Path(path).resolve()
        if key in seen:
            raise ValueError(f"the log folder {path} is given twice (as {seen[key]!r} and {str(path)!r}); "
                             "its examples would be counted twice")
        seen[key] = str(path)
    parts, layout = [], None
    owner: dict[str, str] = {}  # example id -> the folder that logged it
    for path in paths:
        logs = open_logs(path)
        if layout is not None:
            _check_compatible(logs.layout, layout, path, paths[0], skip)
        layout = layout or logs.layout
        ids = logs.table.column("example_id").unique().to_pylist()
        shared = [eid for eid in ids if eid in owner]
        if shared:
            shown = ", ".join(repr(e) for e in shared[:5]) + (", ..." if len(shared) > 5 else "")
            raise ValueError(f"logs {owner[shared[0]]} and {path} share {len(shared)} examples ({shown}); each "
                             "example must come from one log, or its rows are counted twice")
        owner.update(dict.fromkeys(ids, str(path)))
        names = [n for n in logs.table.column_names if not any(n.startswith(p) for p in skip)]
        parts.append(logs.to_torch(names))
    names = [n for n in parts[0] if all(n in part for part in parts)]
    out: dict[str, Any] = {}
    for name in names:
        if name == "example_id":
            out[name] = [eid for part in parts for eid in part[name]]
        else:
            out[name] = torch.cat([part[name] for part in parts])
    assert layout is not None
    return out, layout


def _check_compatible(got: LogLayout, first: LogLayout, path: Any, first_path: Any, skip: Sequence[str]) -> None:
    """Refuse logs whose columns differ from the first log's (their widths could not be concatenated)."""
    fields = ["top_k", "vocab_size", "tail_points", "reference", "on_policy", "hidden"]
    if not any(str(p).startswith("token_") for p in skip):
        fields.append("alphas")
    diff = [f"{f}: {getattr(got, f)!r} vs {getattr(first, f)!r}" for f in fields
            if getattr(got, f) != getattr(first, f)]
    if diff:
        raise LogFormatError(f"{path} has a different layout than {first_path} ({'; '.join(diff)}); "
                             "logs read together must share one layout")
