"""Ingest: record every image under the image root (or named by a manifest) in the store.

Each image is read once, hashed (sha256) and fully decoded. A good image becomes an
:class:`~alearn.store.Item` with its size and metadata (manifest values first, EXIF
capture date and GPS where the manifest gives none). Byte-identical copies become
'duplicate' file records pointing at the first path's item. Corrupt, truncated, empty,
non-image and oversized (decompression-bomb) files, paths that escape the image root and
bad manifest rows become 'rejected' file records with a reason; nothing else stops.

Decoding runs in ``workers`` processes (:mod:`alearn.ingestion.parallel`) while this
process writes the results, a batch of files per transaction in a few multi-row
statements. Records are committed every ``batch_size`` files, so a crash loses at most
one batch and the next run carries on.

Re-ingest is incremental and idempotent: a path already in ``files`` whose size and
modification time (as the scan saw them) match the record is skipped unread; one whose
size or time moved is hashed, and refused with a reason if its bytes changed. A
rejected file is looked at again if its size or time changed, or if it was rejected
for its manifest row or a dead decoder.

What to ingest comes from :mod:`alearn.ingestion.scan`, what is known and changed from
:mod:`alearn.ingestion.records`, each file is read by :mod:`alearn.ingestion.decode`, and
:mod:`alearn.ingestion.writes` writes the store.
"""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from alearn.exceptions import ConfigError, IngestError
from alearn.ingestion.decode import Decoded, decode_image
from alearn.ingestion.manifest import read_manifest
from alearn.ingestion.parallel import decode_batches
from alearn.ingestion.records import IngestSummary, Known, bytes_changed, known_files, retry
from alearn.ingestion.scan import Candidate, check_images_folder, plan_candidates
from alearn.ingestion.writes import (
    ItemIds,
    apply_row,
    record_refusal,
    record_touched,
    write_batch,
)
from alearn.progress import progress as progress_bar
from alearn.project import Project
from alearn.store import Store

logger = logging.getLogger(__name__)


def ingest(project: Project, *, images: Path | None = None, manifest: Path | None = None,
           progress: bool = False, batch_size: int = 1000, workers: int = 0,
           max_pixels: int | None = None, rehash: bool = False) -> IngestSummary:
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
        Processes decoding images while this one writes the store; 0 decodes in the
        calling process (so does any number for a few files, where starting processes
        would cost more than they save).
    max_pixels
        Images with more pixels are rejected as decompression bombs. Default:
        ``PIL.Image.MAX_IMAGE_PIXELS``, which also bounds any larger value.
    rehash
        Hash every known file, not only those whose size or modification time moved
        (finds bytes changed under an unchanged size and time, e.g. by ``rsync -t``).
    """
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"batch_size={batch_size}, workers={workers}: give a batch_size "
                          ">= 1 and workers >= 0.")
    with _only_ingest(project):
        return _ingest(project, images=images, manifest=manifest, progress=progress,
                       batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                       rehash=rehash)


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
            batch_size: int, workers: int, max_pixels: int | None,
            rehash: bool) -> IngestSummary:
    root = project.image_root
    if not root.is_dir():
        raise IngestError(f"the image root {root} is not a folder. Create it, or set "
                          f"image_root in {project.root / 'alearn.toml'}.")
    rows = read_manifest(manifest) if manifest is not None else []
    scan_dir = check_images_folder(images, root) if images is not None else (
        root if manifest is None else None)
    store = project.store
    known = known_files(store)
    candidates, refusals = plan_candidates(root, rows, scan_dir, project.config.classes,
                                           skip=project.data_dir.resolve(), known=known)
    summary = IngestSummary()
    max_bytes = int(project.config.ingest.max_file_mb * (1 << 20))
    todo, touched, updates = _sort_out(candidates, known, summary, max_bytes, rehash)
    with store.session() as s:
        item_ids = ItemIds(s, known)
        record_touched(s, touched)
        for ref in refusals:
            record_refusal(s, ref, known, summary, root)
        for item_id, c in updates:
            if apply_row(s, item_id, c, summary, overwrite=True):
                summary.updated += 1
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    limit = limit if limit is not None else 2**63
    with progress_bar(progress, len(todo), "ingest", "files") as advance, \
            warnings.catch_warnings(), _heap_frozen():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        pending: tuple[list[Candidate], list[Decoded]] = ([], [])
        for batch, results in decode_batches(todo, decode_image, workers=workers,
                                             batch_size=batch_size, max_pixels=limit,
                                             max_bytes=max_bytes):
            pending[0].extend(batch)
            pending[1].extend(results)
            if len(pending[0]) >= batch_size:
                _write(store, pending, known, summary, item_ids)
                pending = ([], [])
            advance(len(batch))
        _write(store, pending, known, summary, item_ids)
    logger.info("ingest added=%d duplicate=%d rejected=%d skipped=%d updated=%d changed=%d",
                summary.added, summary.duplicate, summary.rejected, summary.skipped,
                summary.updated, len(summary.changed))
    return summary


@contextmanager
def _heap_frozen() -> Iterator[None]:
    """Leave what is alive now (the imported modules, the scan, the known files) out of
    the cyclic garbage collector's passes while the files are decoded and written: its
    full passes over them cost about a tenth of a small image's decode. Nothing is kept
    longer than the run (unless something else froze the heap first: then this does
    nothing)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _sort_out(candidates: list[Candidate], known: dict[str, Known], summary: IngestSummary,
              max_bytes: int, rehash: bool,
              ) -> tuple[list[Candidate], list[tuple[str, int]], list[tuple[int, Candidate]]]:
    """(files to decode, known files touched but unchanged, manifest rows of known items).

    A known file is skipped unread when its size and modification time are the recorded
    ones; otherwise it is hashed, and a change of bytes is refused (``summary.changed``).
    """
    todo: list[Candidate] = []
    touched: list[tuple[str, int]] = []
    updates: list[tuple[int, Candidate]] = []
    for c in candidates:
        rec = known.get(c.rel)
        if rec is None or (rec.status == "rejected" and retry(rec, c)):
            todo.append(c)
            continue
        if rec.item_id is not None:
            why, mtime = bytes_changed(rec, c, max_bytes, rehash=rehash)
            if why is not None:
                summary.changed.append((c.rel, why))
                logger.warning("ingest refused a changed file path=%r reason=%r", c.rel, why)
                continue
            if mtime is not None and mtime != rec.mtime_ns:
                touched.append((c.rel, mtime))
            if c.row is not None:
                updates.append((rec.item_id, c))
        elif rec.status == "rejected":
            summary.earlier_rejections.append((c.rel, rec.reason or ""))
        summary.skipped += 1
    return todo, touched, updates


def _write(store: Store, pending: tuple[list[Candidate], list[Decoded]],
           known: dict[str, Known], summary: IngestSummary, item_ids: ItemIds) -> None:
    if pending[0]:
        with store.session() as s:
            write_batch(s, pending[0], pending[1], known, summary, item_ids)
