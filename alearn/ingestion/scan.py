"""What to ingest: manifest rows checked against the image root, and files found by a scan.

:func:`plan_candidates` turns manifest rows and a scanned folder into :class:`Candidate`
files to read and :class:`Refusal` reasons for those that cannot be ingested (a path
outside the image root, a bad row, a name the store cannot hold). Scanning follows
symlinked folders that stay inside the image root, and skips hidden folders (names
starting with '.') and the ``skip`` folder (the project's data directory).
"""

from __future__ import annotations

import os
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from alearn.exceptions import IngestError, ManifestRowError
from alearn.ingestion.manifest import MAX_PATH, ManifestRow

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


class Candidate(NamedTuple):
    """A file to read: its path relative to the image root, and its manifest row if any.

    ``size`` and ``mtime_ns`` are what the scan saw (None when it saw nothing: a manifest
    row, a dangling link); re-ingest compares them with the store's to skip a file unread.
    A tuple: one is made per file scanned, at a third of a frozen dataclass's cost.
    """

    rel: str
    path: str
    row: ManifestRow | None = None
    size: int | None = None
    mtime_ns: int | None = None

    @property
    def file(self) -> Path:
        return Path(self.path)

    def seen(self) -> tuple[int | None, int | None]:
        """(size, mtime_ns) now: the scan's, or a fresh stat; (None, None) if it is gone."""
        if self.size is not None:
            return self.size, self.mtime_ns
        try:
            st = os.stat(self.path)
        except OSError:
            return None, None
        return st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class Refusal:
    """A path that is not ingested and why; ``store`` False: reported only, not recorded."""

    key: str
    reason: str
    store: bool = True


def scan_images(folder: Path, image_root: Path, *, skip: Path | None = None,
                known: Container[str] | None = None,
                ) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Image files under ``folder`` (a resolved folder inside ``image_root``), sorted by
    path, and the (relative path, reason) of what is refused: symlinked folders and
    files that leave the root.

    One ``scandir`` per folder, and a ``stat`` only for the files in ``known`` (all if
    None): a new file's size and time come from its read. Only symlinks are resolved (a
    plain file's real path is its folder's, already checked).
    """
    root = str(image_root)
    found: list[Candidate] = []
    refused: list[tuple[str, str]] = []
    top = os.path.realpath(folder)
    seen = {top}
    stack = [(str(folder), _rel_dir(str(folder), root))]
    while stack:
        dirpath, rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(dirpath), key=lambda e: e.name)
        except OSError:
            continue  # an unreadable folder is skipped, as os.walk does
        for entry in entries:
            rel = rel_dir + entry.name
            if _is_dir(entry):
                real = os.path.realpath(entry.path)
                if entry.name.startswith(".") or real in seen or (skip and real == str(skip)):
                    continue
                if not Path(real).is_relative_to(image_root):
                    refused.append((rel, f"symlinked folder resolves outside the image root "
                                         f"(to {real}); not followed"))
                    continue
                seen.add(real)
                stack.append((entry.path, rel + "/"))
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                if entry.is_symlink():
                    real = os.path.realpath(entry.path)
                    if not Path(real).is_relative_to(image_root):
                        refused.append((rel, f"symlink resolves outside the image root "
                                             f"(to {real})"))
                        continue
                found.append(_candidate(rel, entry) if known is None or rel in known
                             else Candidate(rel, entry.path))
    found.sort(key=lambda c: c.rel)
    return found, refused


def _rel_dir(folder: str, root: str) -> str:
    return "" if folder == root else os.path.relpath(folder, root).replace(os.sep, "/") + "/"


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows a symlink, as os.walk(followlinks=True) does
    except OSError:
        return False


def _candidate(rel: str, entry: os.DirEntry[str]) -> Candidate:
    try:
        st = entry.stat()
    except OSError:  # a dangling link: the read says what is wrong
        return Candidate(rel, entry.path)
    return Candidate(rel, entry.path, size=st.st_size, mtime_ns=st.st_mtime_ns)


def check_images_folder(images: Path, root: Path) -> Path:
    """``images`` resolved, once checked to be a folder inside the image root."""
    folder = Path(images).resolve()
    if not folder.is_dir():
        raise IngestError(f"images folder {images} is not a folder. Give a folder of images.")
    if not folder.is_relative_to(root):
        raise IngestError(
            f"images folder {images} is not inside the image root {root}. Paths are stored "
            "relative to the image root: move the folder under it, or change image_root "
            "in alearn.toml.")
    return folder


def plan_candidates(root: Path, rows: list[ManifestRow], scan_dir: Path | None,
                    classes: list[str], *, skip: Path, known: Container[str] | None = None,
                    ) -> tuple[list[Candidate], list[Refusal]]:
    """Candidates to ingest (manifest rows first, then scanned files) and refusals;
    ``known`` as for :func:`scan_images`."""
    cands: dict[str, Candidate] = {}
    refusals: list[Refusal] = []
    claimed: dict[str, int] = {}
    for row in rows:
        try:
            rel = row_path(row, root) if row.path is not None else None
        except ManifestRowError as exc:
            refusals.append(Refusal(row.path or "", str(exc)))
            continue
        if rel is None:  # parse_record put "no path" (or worse) in row.error
            refusals.append(Refusal("", f"manifest row {row.row}: {row.error or 'no path'}",
                                    store=False))
            continue
        if rel in claimed:
            refusals.append(Refusal(rel, f"manifest row {row.row}: path {rel} is already "
                                         f"given on row {claimed[rel]}", store=False))
            continue
        claimed[rel] = row.row
        try:
            check_row(row, rel, root, classes)
        except ManifestRowError as exc:
            refusals.append(Refusal(rel, str(exc)))
            continue
        cands[rel] = Candidate(rel, str(root / rel), row)
    if scan_dir is not None:
        files, bad = scan_images(scan_dir, root, skip=skip, known=known)
        refusals += [refuse_scanned(rel, reason) for rel, reason in bad]
        for c in files:
            if c.rel in claimed:
                continue
            if unstorable(c.rel) is not None:
                refusals.append(refuse_scanned(c.rel, "cannot be recorded"))
            else:
                cands[c.rel] = c
    return list(cands.values()), refusals


def refuse_scanned(rel: str, reason: str) -> Refusal:
    """A refusal for a scanned path; one the store cannot hold is only reported."""
    unfit = unstorable(rel)
    if unfit is None:
        return Refusal(rel, reason)
    return Refusal(printable(rel), f"{printable(reason)}: {unfit}", store=False)


def printable(text: str) -> str:
    """Text with undecodable file-name bytes shown as \\xNN escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unstorable(rel: str) -> str | None:
    """Why the store cannot hold this path (as text), or None."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not valid UTF-8; rename the file"
    if len(rel) > MAX_PATH:
        return f"the path is {len(rel)} characters long; at most {MAX_PATH} fit the store"
    return None


def row_path(row: ManifestRow, root: Path) -> str:
    """The row's path as a POSIX path relative to ``root`` (the image root).

    A relative path is taken as under ``root``; an absolute one must lie inside it
    (directly, or once its folder's symlinks are resolved).
    """
    raw = row.path or ""
    p = Path(os.path.normpath(raw))
    if p.is_absolute():
        if not p.is_relative_to(root):
            p = Path(os.path.realpath(p.parent), p.name)
        if not p.is_relative_to(root):
            raise ManifestRowError(row.row, f"path {raw!r} is outside the image root {root}")
        p = p.relative_to(root)
    if p.parts[:1] == ("..",):
        raise ManifestRowError(row.row, f"path {raw!r} escapes the image root {root}")
    if str(p) == ".":
        raise ManifestRowError(row.row, f"path {raw!r} names the image root, not an image")
    return p.as_posix()


def check_row(row: ManifestRow, rel: str, root: Path, classes: list[str]) -> None:
    """Raise ManifestRowError if the row is bad, its label unknown or its file missing."""
    if row.error is not None:
        raise ManifestRowError(row.row, row.error)
    if row.label is not None and row.label not in classes:
        raise ManifestRowError(row.row, (
            f"label {row.label!r} is not a project class ({', '.join(classes)}); fix the "
            "row or add the class to alearn.toml"))
    file = root / rel
    real = Path(os.path.realpath(file))
    if not real.is_relative_to(root):
        raise ManifestRowError(row.row, f"path {rel} resolves outside the image root "
                                        f"(to {real})")
    try:
        exists, is_file = file.exists(), file.is_file()
    except OSError as exc:
        raise ManifestRowError(row.row, f"cannot look at {rel} ({exc.strerror})") from None
    if not exists:
        raise ManifestRowError(row.row, f"file not found: {rel} (under {root})")
    if not is_file:
        raise ManifestRowError(row.row, f"{rel} is not a file")
