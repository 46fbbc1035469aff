"""Atomic file writes: a reader sees the old file or the new one, never half of either.

The content goes to a temp file ``.tmp-<random><suffix>`` in the target's folder (so
the rename never crosses a file system), is flushed and fsynced, and ``os.replace``
gives it the final name. On any error the temp file is deleted; a process killed
mid-write leaves a stray ``.tmp-*`` file, never a truncated target. The temp file is
made with the ordinary permissions (``0o666`` less the umask), like ``open(path, "w")``,
unless a ``mode`` is given: then it has exactly that mode, whatever the umask, before its
first byte is written.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

#: Name prefix of the temp files; a folder scan can skip (or clean up) ``.tmp-*``.
TMP_PREFIX = ".tmp-"


def write_with(path: Path, write: Callable[[BinaryIO], object], *,
               mode: int | None = None) -> None:
    """Write ``path`` atomically: ``write`` gets a binary file object to fill.

    ``path``'s folder is made if missing; ``mode``: the file's exact permissions.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f"{TMP_PREFIX}{secrets.token_hex(8)}{path.suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 64 random bits collided
            continue
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically."""
    write_with(path, lambda f: f.write(data), mode=mode)


def write_text(path: Path, text: str, *, encoding: str = "utf-8",
               mode: int | None = None) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8 unless told)."""
    write_bytes(path, text.encode(encoding), mode=mode)


def write_json(path: Path, data: Any, *, indent: int | None = None) -> None:
    """Write ``json.dumps(data, indent=indent)`` to ``path`` atomically (no final newline)."""
    write_text(path, json.dumps(data, indent=indent))
