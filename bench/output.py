"""Result files of a bench run: ``<prefix>.json`` and ``<prefix>.md``, named after the device."""

from __future__ import annotations

import json
import os
import re
from typing import Any


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def strip_suffix(prefix: str) -> str:
    """``prefix`` without a trailing ``.json`` or ``.md`` (``--out run.json`` names the run ``run``)."""
    for ext in (".json", ".md"):
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    return prefix


def write_report(prefix: str, R: dict[str, Any], md: str) -> None:
    """``<prefix>.json`` (all of ``R``) and ``<prefix>.md``, each written aside and then moved into place, so
    that a run cut short leaves whole files."""
    for ext, text in ((".json", json.dumps(R, indent=1, default=str)), (".md", md)):
        tmp = prefix + ext + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, prefix + ext)
