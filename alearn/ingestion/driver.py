"""Ingest: record every image under the image root (or named by a manifest) in the store.

Each image is read once, hashed (sha256) and fully decoded. A good image becomes an
:class:`~alearn.store.Item` with its size and metadata (manifest values first, EXIF
capture date and GPS where the manifest gives none). Byte-identical copies become
'duplicate' file records pointing at the first path's item. Corrupt, truncated, empty,
non-image and oversized (decompression-bomb) files, paths that escape the image root and
bad manifest rows become 'rejected' file records with a reason; nothing else stops.

Re-ingest is incremental and idempotent: a path already in ``files`` is skipped without
being read. A rejected file is looked at again only if its size changed, or if it was
rejected for its manifest row. Records are committed every ``batch_size`` files, so a
crash loses at most one batch and the next run carries on.

Scanning follows symlinked folders that stay inside the image root, and skips hidden
folders (names starting with '.') and the project's data directory.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image, UnidentifiedImageError
from sqlalchemy import select
from sqlalchemy.orm import Session

from alearn.exceptions import ConfigError, IngestError, ManifestRowError
from alearn.files import read_regular_file
from alearn.ingestion.exif import ExifInfo, read_exif
from alearn.ingestion.manifest import MAX_PATH, ManifestRow, check_row, read_manifest, row_path
from alearn.project import Project
from alearn.store import FileRecord, Item, Label, Store

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


@dataclass
class IngestSummary:
    """What one ingest run did. ``rejections`` holds (path, reason) for this run."""

    added: int = 0
    duplicate: int = 0
    rejected: int = 0
    skipped: int = 0
    rejections: list[tuple[str, str]] = field(default_factory=list)
    updated: int = 0
    warnings: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[str, str]] = field(default_factory=list)

    def reject(self, path: str, reason: str) -> None:
        self.rejected += 1
        self.rejections.append((path, reason))
        logger.debug("rejected path=%r reason=%r", path, reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added, "duplicate": self.duplicate, "rejected": self.rejected,
            "skipped": self.skipped, "updated": self.updated,
            "rejections": [{"path": p, "reason": r} for p, r in self.rejections],
            "warnings": [{"path": p, "message": m} for p, m in self.warnings],
            "changed": [{"path": p, "reason": r} for p, r in self.changed],
        }


@dataclass(frozen=True)
class Decoded:
    """The outcome of reading one file: ``error`` is None for a good image."""

    size: int | None
    sha256: str | None = None
    width: int = 0
    height: int = 0
    exif: ExifInfo = ExifInfo()
    error: str | None = None


def decode_image(path: Path, *, max_pixels: int, max_bytes: int = 1 << 40) -> Decoded:
    """Read, hash and fully decode one file, saying what is wrong with it if anything.

    Call it with ``Image.DecompressionBombWarning`` turned into an error (ingest does).
    """
    try:
        data = read_regular_file(path, max_bytes)
    except ValueError as exc:
        return Decoded(None, error=str(exc))
    except OSError as exc:
        return Decoded(None, error=f"cannot read the file ({exc.strerror or exc})")
    if not data:
        return Decoded(0, error="empty file (0 bytes)")
    sha = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > max_pixels:
                return Decoded(len(data), error=(
                    f"decompression bomb: {width}x{height} = {width * height} pixels is "
                    f"over the limit of {max_pixels}"))
            im.load()
            exif = read_exif(im)
    except UnidentifiedImageError:
        error = "not an image: no image format recognised in the file's bytes"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        error = f"decompression bomb: {exc}"
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        error = f"corrupt or truncated image data ({type(exc).__name__}: {exc})"
    except Exception as exc:  # noqa: BLE001 - any decoder failure rejects only this file
        error = f"cannot decode the image ({type(exc).__name__}: {exc})"
    else:
        return Decoded(len(data), sha, width, height, exif)
    return Decoded(len(data), error=error)


def scan_images(folder: Path, image_root: Path, *, skip: Path | None = None,
                ) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files under ``folder``, and symlinked folders refused for leaving the root."""
    found: list[Path] = []
    refused: list[tuple[Path, str]] = []
    seen = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for name in sorted(dirnames):
            full = Path(dirpath, name)
            real = os.path.realpath(full)
            if name.startswith(".") or real in seen or (skip and real == str(skip)):
                continue
            if not Path(real).is_relative_to(image_root):
                refused.append((full, f"symlinked folder resolves outside the image root "
                                      f"(to {real}); not followed"))
                continue
            seen.add(real)
            keep.append(name)
        dirnames[:] = keep
        found += [Path(dirpath, f) for f in filenames if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found, key=lambda p: p.as_posix()), refused


class _Known(NamedTuple):
    status: str
    size: int | None
    item_id: int | None
    reason: str | None
    mtime_ns: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class _Candidate:
    rel: str
    file: Path
    row: ManifestRow | None = None


@dataclass(frozen=True)
class _Refusal:
    key: str
    reason: str
    store: bool = True


def ingest(project: Project, *, images: Path | None = None, manifest: Path | None = None,
           progress: bool = False, batch_size: int = 500, workers: int = 1,
           max_pixels: int | None = None) -> IngestSummary:
    """Record the project's images in its store; see the module docstring.

    Parameters
    ----------
    images
        Folder to scan, inside the image root. Default: the image root, unless a
        manifest is given (then only the manifest's rows are ingested).
    manifest
        A ``.csv`` or ``.jsonl`` manifest (see :mod:`alearn.ingestion.manifest`).
    progress
        Show a progress bar on stderr.
    batch_size
        Files decoded and committed per transaction.
    workers
        Threads decoding images; 1 decodes in the calling thread.
    max_pixels
        Images with more pixels are rejected as decompression bombs. Default:
        ``PIL.Image.MAX_IMAGE_PIXELS``, which also bounds any larger value.
    """
    if batch_size < 1 or workers < 1:
        raise ConfigError(f"batch_size={batch_size}, workers={workers}: both must be >= 1.")
    with _only_ingest(project):
        return _ingest(project, images=images, manifest=manifest, progress=progress,
                       batch_size=batch_size, workers=workers, max_pixels=max_pixels)


@contextmanager
def _only_ingest(project: Project) -> Iterator[None]:
    """One ingest per project at a time (a lock file the OS releases if we die)."""
    import fcntl

    project.data_dir.mkdir(parents=True, exist_ok=True)
    with open(project.data_dir / "ingest.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IngestError("another 'alearn ingest' of this project is running; wait for "
                              "it to finish, then run this one again.") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ingest(project: Project, *, images: Path | None, manifest: Path | None, progress: bool,
            batch_size: int, workers: int, max_pixels: int | None) -> IngestSummary:
    root = project.image_root
    if not root.is_dir():
        raise IngestError(f"the image root {root} is not a folder. Create it, or set "
                          f"image_root in {project.root / 'alearn.toml'}.")
    rows = read_manifest(manifest) if manifest is not None else []
    scan_dir = _scan_dir(images, root) if images is not None else (
        root if manifest is None else None)
    candidates, refusals = _plan(root, rows, scan_dir, project.config.classes,
                                 skip=project.data_dir.resolve())
    summary = IngestSummary()
    store = project.store
    known = _known_files(store)
    todo: list[_Candidate] = []
    updates: list[tuple[int, _Candidate]] = []
    max_bytes = int(project.config.ingest.max_file_mb * (1 << 20))
    touched: list[tuple[str, int]] = []
    for c in candidates:
        rec = known.get(c.rel)
        if rec is None or (rec.status == "rejected" and _retry(rec, c)):
            todo.append(c)
            continue
        if rec.item_id is not None:
            why, mtime = _bytes_changed(rec, c, max_bytes)
            if why is not None:
                summary.changed.append((c.rel, why))
                logger.warning("ingest refused a changed file path=%r reason=%r", c.rel, why)
                continue
            if mtime is not None and mtime != rec.mtime_ns:
                touched.append((c.rel, mtime))
        summary.skipped += 1
        if c.row is not None and rec.item_id is not None:
            updates.append((rec.item_id, c))
    with store.session() as s:
        for rel, mtime in touched:
            _put_file(s, known, rel, mtime_ns=mtime)
        for ref in refusals:
            _record_refusal(s, ref, known, summary, root)
        for item_id, c in updates:
            if _apply_row(s, item_id, c, summary, overwrite=True):
                summary.updated += 1
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    limit = limit if limit is not None else 2**63

    def decode(c: _Candidate) -> Decoded:
        return decode_image(c.file, max_pixels=limit, max_bytes=max_bytes)

    with _progress_bar(progress, len(todo)) as advance, warnings.catch_warnings(), \
            ThreadPoolExecutor(workers) as pool:
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            results = list(pool.map(decode, batch)) if workers > 1 else [decode(c) for c in batch]
            with store.session() as s:
                _write_batch(s, batch, results, known, summary)
            advance(len(batch))
    logger.info("ingest added=%d duplicate=%d rejected=%d skipped=%d updated=%d",
                summary.added, summary.duplicate, summary.rejected, summary.skipped,
                summary.updated)
    return summary


def _scan_dir(images: Path, root: Path) -> Path:
    folder = Path(images).resolve()
    if not folder.is_dir():
        raise IngestError(f"images folder {images} is not a folder. Give a folder of images.")
    if not folder.is_relative_to(root):
        raise IngestError(
            f"images folder {images} is not inside the image root {root}. Paths are stored "
            "relative to the image root: move the folder under it, or change image_root "
            "in alearn.toml.")
    return folder


def _plan(root: Path, rows: list[ManifestRow], scan_dir: Path | None, classes: list[str], *,
          skip: Path) -> tuple[list[_Candidate], list[_Refusal]]:
    """Candidates to ingest (manifest rows first, then scanned files) and refusals."""
    cands: dict[str, _Candidate] = {}
    refusals: list[_Refusal] = []
    claimed: dict[str, int] = {}
    for row in rows:
        try:
            rel = row_path(row, root) if row.path is not None else None
        except ManifestRowError as exc:
            refusals.append(_Refusal(row.path or "", str(exc)))
            continue
        if rel is None:  # parse_record put "no path" (or worse) in row.error
            refusals.append(_Refusal("", f"manifest row {row.row}: {row.error or 'no path'}",
                                     store=False))
            continue
        if rel in claimed:
            refusals.append(_Refusal(rel, f"manifest row {row.row}: path {rel} is already "
                                          f"given on row {claimed[rel]}", store=False))
            continue
        claimed[rel] = row.row
        try:
            check_row(row, rel, root, classes)
        except ManifestRowError as exc:
            refusals.append(_Refusal(rel, str(exc)))
            continue
        cands[rel] = _Candidate(rel, root / rel, row)
    if scan_dir is not None:
        files, bad_dirs = scan_images(scan_dir, root, skip=skip)
        refusals += [_refuse(p.relative_to(root).as_posix(), r) for p, r in bad_dirs]
        for f in files:
            rel = f.relative_to(root).as_posix()
            if rel in claimed:
                continue
            real = Path(os.path.realpath(f))
            if not real.is_relative_to(root):
                refusals.append(_refuse(rel, f"symlink resolves outside the image root "
                                             f"(to {real})"))
            elif _unstorable(rel) is not None:
                refusals.append(_refuse(rel, "cannot be recorded"))
            else:
                cands[rel] = _Candidate(rel, f)
    return list(cands.values()), refusals


def _refuse(rel: str, reason: str) -> _Refusal:
    """A refusal for a scanned path; one the store cannot hold is only reported."""
    unfit = _unstorable(rel)
    if unfit is None:
        return _Refusal(rel, reason)
    return _Refusal(_printable(rel), f"{_printable(reason)}: {unfit}", store=False)


def _printable(text: str) -> str:
    """Text with undecodable file-name bytes shown as \\xNN escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _unstorable(rel: str) -> str | None:
    """Why the store cannot hold this path (as text), or None."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not valid UTF-8; rename the file"
    if len(rel) > MAX_PATH:
        return f"the path is {len(rel)} characters long; at most {MAX_PATH} fit the store"
    return None


def _known_files(store: Store) -> dict[str, _Known]:
    with store.session() as s:
        q = select(FileRecord.path, FileRecord.status, FileRecord.size, FileRecord.item_id,
                   FileRecord.reason, FileRecord.mtime_ns, Item.sha256
                   ).outerjoin(Item, Item.id == FileRecord.item_id)
        return {r[0]: _Known(*r[1:]) for r in s.execute(q)}


def _bytes_changed(rec: _Known, c: _Candidate, max_bytes: int) -> tuple[str | None, int | None]:
    """(why the bytes at a known path differ from its item's, or None; its mtime_ns).

    Cheap when nothing changed: size and modification time match what was recorded.
    Otherwise the file is hashed: a touched file with the same bytes is no change.
    """
    try:
        st = c.file.stat()
    except OSError as exc:
        return f"cannot read it any more ({exc.strerror or exc})", None
    if rec.size == st.st_size and rec.mtime_ns == st.st_mtime_ns:
        return None, st.st_mtime_ns
    try:
        sha = hashlib.sha256(read_regular_file(c.file, max_bytes)).hexdigest()
    except (OSError, ValueError) as exc:
        return f"cannot read it any more ({exc})", None
    if rec.sha256 is None or sha == rec.sha256:
        return None, st.st_mtime_ns
    return (f"its bytes changed since it was ingested (sha256 {rec.sha256[:12]}... is now "
            f"{sha[:12]}...). The item keeps the old hash, its votes and labels; the new "
            "bytes are refused. Restore the file, or give the new image a new name to add "
            "it as a new item."), st.st_mtime_ns


def _retry(rec: _Known, c: _Candidate) -> bool:
    """Look at a rejected file again? Only if its size changed or its row was the fault."""
    if (rec.reason or "").startswith("manifest row"):
        return True
    try:
        return c.file.stat().st_size != rec.size
    except OSError:
        return True


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _put_file(s: Session, known: dict[str, _Known], path: str, **values: Any) -> None:
    if values.get("reason"):
        values["reason"] = _printable(values["reason"])
    rec = None
    if path in known:
        rec = s.scalars(select(FileRecord).where(FileRecord.path == path)).one_or_none()
    if rec is None:
        s.add(FileRecord(path=path, **values))
        known[path] = _Known(values.get("status", ""), values.get("size"),
                             values.get("item_id"), values.get("reason"))
        return
    for key, value in values.items():
        setattr(rec, key, value)


def _record_refusal(s: Session, ref: _Refusal, known: dict[str, _Known],
                    summary: IngestSummary, root: Path) -> None:
    rec = known.get(ref.key) if ref.store else None
    if rec is not None and rec.status == "rejected" and rec.reason == ref.reason:
        summary.skipped += 1
        return
    summary.reject(ref.key, ref.reason)
    if ref.store and (rec is None or rec.status == "rejected"):
        _put_file(s, known, ref.key, status="rejected", reason=ref.reason, item_id=None,
                  size=_file_size(root / ref.key))


def _write_batch(s: Session, batch: list[_Candidate], results: list[Decoded],
                 known: dict[str, _Known], summary: IngestSummary) -> None:
    good = [(c, r) for c, r in zip(batch, results, strict=True)
            if r.error is None and r.sha256 is not None]
    shas = [r.sha256 for _, r in good]
    items: dict[str | None, int] = dict(
        s.execute(select(Item.sha256, Item.id).where(Item.sha256.in_(shas))).all())
    new: dict[str, Item] = {}
    for c, r in good:  # the first path of new content becomes its item
        if r.sha256 not in items and r.sha256 not in new:
            new[r.sha256] = _new_item(c, r)
    s.add_all(new.values())
    s.flush()  # one batched INSERT for the new items' ids
    items.update((sha, item.id) for sha, item in new.items())
    for c, r in zip(batch, results, strict=True):
        if r.error is not None or r.sha256 is None:
            reason = r.error or "unreadable"
            _put_file(s, known, c.rel, status="rejected", reason=reason, item_id=None,
                      size=r.size)
            summary.reject(c.rel, reason)
            continue
        item_id = items[r.sha256]
        if new.get(r.sha256) is None or new[r.sha256].path != c.rel:
            _put_file(s, known, c.rel, status="duplicate", reason=None, item_id=item_id,
                      size=r.size, mtime_ns=_mtime(c.file))
            summary.duplicate += 1
            if c.row is not None:
                _apply_row(s, item_id, c, summary, overwrite=False)
            continue
        _put_file(s, known, c.rel, status="item", reason=None, item_id=item_id, size=r.size,
                  mtime_ns=_mtime(c.file))
        if c.row is not None and c.row.label is not None:
            s.add(Label(item_id=item_id, label=c.row.label, origin="manifest", is_gold=True))
        summary.added += 1


def _new_item(c: _Candidate, r: Decoded) -> Item:
    row = c.row or ManifestRow(row=0, path=c.rel)
    lat, lon = (row.lat, row.lon) if row.lat is not None else (r.exif.lat, r.exif.lon)
    return Item(
        sha256=r.sha256, path=c.rel, width=r.width, height=r.height, source=row.source,
        captured_at=row.captured_at or r.exif.captured_at, lat=lat, lon=lon,
        license=row.license, extra=dict(row.extra),
    )


def _apply_row(s: Session, item_id: int, c: _Candidate, summary: IngestSummary, *,
               overwrite: bool) -> bool:
    """Put a manifest row's values on an existing item; True if anything changed.

    ``overwrite`` replaces values the item has (a re-ingested manifest is the newer
    word); otherwise only missing values are filled (a duplicate's row).
    """
    row = c.row
    item = s.get(Item, item_id)
    if row is None or item is None:
        return False
    new: dict[str, Any] = {}
    for attr in ("source", "captured_at", "license"):
        value = getattr(row, attr)
        if value is not None and (overwrite or getattr(item, attr) is None):
            new[attr] = value
    if row.lat is not None and (overwrite or item.lat is None):
        new.update(lat=row.lat, lon=row.lon)
    extra = dict(item.extra or {})
    extra.update({k: v for k, v in row.extra.items() if overwrite or k not in extra})
    new["extra"] = extra
    changed = False
    for attr, value in new.items():
        if getattr(item, attr) != value:
            setattr(item, attr, value)
            changed = True
    if row.label is None:
        return changed
    label = s.scalars(select(Label).where(Label.item_id == item_id)).one_or_none()
    if label is None:
        s.add(Label(item_id=item_id, label=row.label, origin="manifest", is_gold=True))
        return True
    if label.label == row.label:
        return changed
    if overwrite and label.origin == "manifest" and item.path == c.rel:
        summary.warnings.append((c.rel, (
            f"manifest row {row.row}: relabeled item {item_id} from {label.label!r} to "
            f"{row.label!r} (the manifest is the newer word for its own file)")))
        label.label = row.label
        return True
    summary.warnings.append((c.rel, (
        f"manifest row {row.row}: label {row.label!r} differs from the {label.origin} label "
        f"{label.label!r} of item {item_id} (same bytes); kept {label.label!r}")))
    return changed


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("ingest", total=total)
        yield lambda n: bar.advance(task, n)
