"""Files of an export: an atomic output folder, JSON files and the checksum manifest."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alearn.exceptions import ConfigError
from alearn.files import sha256_file

CHECKSUMS = "checksums.sha256"


#: Every export carries this file; ``overwrite`` replaces only a folder that has it.
MARKER = ".alearn-export.json"


def check_out(out: Path, overwrite: bool, *, image_root: Path | None = None) -> None:
    """Refuse an export folder inside the image root (the next ingest would take the
    export's images for new ones), and an existing ``out`` unless ``overwrite``, and
    even then anything but an empty folder or an earlier alearn export (its marker)."""
    if image_root is not None:
        root = image_root.resolve()
        if out == root or root in out.parents:
            raise ConfigError(
                f"the export folder {out} is inside the image root {root}: the next ingest "
                "would add the exported images to the pool. Choose a folder outside it.")
    if not out.exists():
        return
    if not overwrite:
        raise ConfigError(f"the export folder {out} already exists. Choose a new folder, "
                          "or replace an earlier export with overwrite=True ('alearn "
                          "export --overwrite').")
    if not out.is_dir() or not ((out / MARKER).is_file() or not any(out.iterdir())):
        raise ConfigError(f"{out} is not an earlier alearn export (no {MARKER}) nor an empty "
                          "folder; only those are replaced. Choose another folder.")


def write_marker(root: Path, project_name: str) -> None:
    """Mark a folder as an alearn export (no time in it: exports stay byte-identical)."""
    write_json(root / MARKER, {"alearn_export": 1, "project": project_name})


@contextmanager
def atomic_folder(out: Path, *, overwrite: bool = False,
                  image_root: Path | None = None) -> Iterator[Path]:
    """Yield a temp folder ``<out>.tmp-<pid>`` next to ``out``; on success write the
    checksum manifest and rename it to ``out``, on any error or interrupt delete it."""
    check_out(out, overwrite, image_root=image_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():  # left by a killed run of a process with our pid
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        write_checksums(tmp)
        check_out(out, overwrite, image_root=image_root)  # it may have appeared meanwhile
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
