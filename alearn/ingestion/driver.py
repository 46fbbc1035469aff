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

What to ingest comes from :mod:`alearn.ingestion.scan`, each file is read by
:mod:`alearn.ingestion.decode`, and :mod:`alearn.ingestion.records` writes the store.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from alearn.exceptions import ConfigError, IngestError
from alearn.ingestion.decode import Decoded, decode_image
from alearn.ingestion.manifest import read_manifest
from alearn.ingestion.records import (
    IngestSummary,
    apply_row,
    bytes_changed,
    known_files,
    put_file,
    record_refusal,
    retry,
    write_batch,
)
from alearn.ingestion.scan import Candidate, check_images_folder, plan_candidates
from alearn.progress import progress as progress_bar
from alearn.project import Project

logger = logging.getLogger(__name__)


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
    scan_dir = check_images_folder(images, root) if images is not None else (
        root if manifest is None else None)
    candidates, refusals = plan_candidates(root, rows, scan_dir, project.config.classes,
                                           skip=project.data_dir.resolve())
    summary = IngestSummary()
    store = project.store
    known = known_files(store)
    todo: list[Candidate] = []
    updates: list[tuple[int, Candidate]] = []
    max_bytes = int(project.config.ingest.max_file_mb * (1 << 20))
    touched: list[tuple[str, int]] = []
    for c in candidates:
        rec = known.get(c.rel)
        if rec is None or (rec.status == "rejected" and retry(rec, c)):
            todo.append(c)
            continue
        if rec.item_id is not None:
            why, mtime = bytes_changed(rec, c, max_bytes)
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
            put_file(s, known, rel, mtime_ns=mtime)
        for ref in refusals:
            record_refusal(s, ref, known, summary, root)
        for item_id, c in updates:
            if apply_row(s, item_id, c, summary, overwrite=True):
                summary.updated += 1
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    limit = limit if limit is not None else 2**63

    def decode(c: Candidate) -> Decoded:
        return decode_image(c.file, max_pixels=limit, max_bytes=max_bytes)

    with progress_bar(progress, len(todo), "ingest", "files") as advance, \
            warnings.catch_warnings(), ThreadPoolExecutor(workers) as pool:
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            results = list(pool.map(decode, batch)) if workers > 1 else [decode(c) for c in batch]
            with store.session() as s:
                write_batch(s, batch, results, known, summary)
            advance(len(batch))
    logger.info("ingest added=%d duplicate=%d rejected=%d skipped=%d updated=%d",
                summary.added, summary.duplicate, summary.rejected, summary.skipped,
                summary.updated)
    return summary
