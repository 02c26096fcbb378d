"""Atomic file writes: a uniquely named temp file in the destination folder, fsync, rename, fsync the folder.

Used for every file the logs, the heads and the offline evaluation write, so it stands below all three and
imports nothing of the package (nor torch or pyarrow). The temp name is ``.NAME.tmp-XXXXXXXX`` (random,
created exclusively), so two writers never share a temp file; it lives next to the destination, so the
rename never crosses a device and never writes outside the output folder; it is created with the ordinary
permissions (``0o666`` less the umask), unlike ``tempfile.mkstemp``'s ``0o600``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["create_temp", "fsync_dir", "write_atomic"]


def create_temp(path: Path) -> tuple[int, Path]:
    """An open file descriptor and the name of a new temp file next to ``path``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(64):
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temp file next to {path}")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes, commit: Callable[[Path, Path], None] = _replace) -> Path:
    """Write ``data`` to ``path`` atomically; ``commit(tmp, path)`` renames (tests inject crashes there).
    On any failure the temp file is removed and ``path`` keeps its old content."""
    fd, tmp = create_temp(path)
    try:
        with open(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        commit(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path
