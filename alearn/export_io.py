"""Files of an export: an atomic output folder, JSON files and the checksum manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alearn.exceptions import ConfigError

CHECKSUMS = "checksums.sha256"


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an existing ``out`` unless ``overwrite``, and even then anything but an
    empty folder or an earlier export (one with a checksum manifest)."""
    if not out.exists():
        return
    if not overwrite:
        raise ConfigError(f"--out {out} already exists. Choose a new folder, or pass "
                          "--overwrite to replace it.")
    if not out.is_dir() or not ((out / CHECKSUMS).is_file() or not any(out.iterdir())):
        raise ConfigError(f"--out {out} is not an earlier export (no {CHECKSUMS}) nor an empty "
                          "folder; --overwrite only replaces those. Choose another folder.")


@contextmanager
def atomic_folder(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder ``<out>.tmp-<pid>`` next to ``out``; on success write the
    checksum manifest and rename it to ``out``, on any error or interrupt delete it."""
    check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():  # left by a killed run of a process with our pid
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        write_checksums(tmp)
        check_out(out, overwrite)  # it may have appeared meanwhile
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Indented UTF-8 JSON in the given key order, with a final newline."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                    encoding="utf-8")


def write_checksums(root: Path) -> None:
    """``checksums.sha256`` in ``sha256sum`` format: every other file, sorted by path."""
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    lines = [f"{sha256_file(root / p)}  {p}\n" for p in paths if p != CHECKSUMS]
    (root / CHECKSUMS).write_text("".join(lines), encoding="utf-8")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f"{out.name}.old-{os.getpid()}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
