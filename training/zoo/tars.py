"""Reproducible tars of run folders: what a GPU run sends back, and what a warm start or a score reads.

A tar written here has no times, owners or modes of this machine, so two runs of the same work write the
same bytes. Both the trainers (``train_all``, ``variants``) and the single-model run (``train_one``, to
warm-start from a variant tar) use it, which is why it is a module of its own.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def add_folder(tar: tarfile.TarFile, folder: Path, arcname: str, skip: tuple[str, ...] = ()) -> None:
    """``folder`` under ``arcname``, reproducibly (no times or owners); ``skip``: top-level names left out."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.relative_to(folder).parts[0] not in skip:
            info = tar.gettarinfo(str(path), f"{arcname}/{path.relative_to(folder).as_posix()}")
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with path.open("rb") as handle:
                tar.addfile(info, handle)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """``data`` as the file ``name`` (no time or owner, like ``add_folder``)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def unpack_folder(tar_path: Path, dest: Path) -> Path:
    """Extract a tar holding exactly one top folder (as ``add_folder`` writes it) below ``dest``; its path."""
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise ValueError(f"{tar_path}: expected one top folder, found {sorted(p.name for p in tops)}")
    return tops[0]
