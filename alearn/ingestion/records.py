"""What ingest knows before it reads: the files already in the store, and which changed.

:func:`known_files` loads every recorded path once; :func:`bytes_changed` and
:func:`retry` decide, from the (size, mtime) the scan saw, which known files are read
again, so a re-ingest of an unchanged tree reads no file at all and hashes only what
changed. :class:`IngestSummary` counts what one run did; :mod:`alearn.ingestion.writes`
writes the records.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import select

from alearn.files import read_regular_stat
from alearn.ingestion.decode import CRASH_REASON
from alearn.ingestion.scan import Candidate
from alearn.store import FileRecord, Item, Store

logger = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    """What one ingest run did. ``rejections`` holds (path, reason) for this run;
    ``earlier_rejections`` those of files rejected by an earlier run and skipped now,
    unchanged since (they count in ``skipped``), so that every run shows them."""

    added: int = 0
    duplicate: int = 0
    rejected: int = 0
    skipped: int = 0
    rejections: list[tuple[str, str]] = field(default_factory=list)
    updated: int = 0
    warnings: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[str, str]] = field(default_factory=list)
    earlier_rejections: list[tuple[str, str]] = field(default_factory=list)

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
            "earlier_rejections": [{"path": p, "reason": r}
                                   for p, r in self.earlier_rejections],
        }


class Known(NamedTuple):
    """What the store holds for a path already ingested."""

    status: str
    size: int | None
    item_id: int | None
    reason: str | None
    mtime_ns: int | None = None
    sha256: str | None = None


def known_files(store: Store) -> dict[str, Known]:
    """Every path in the store's ``files``, with its status, size, item and hash."""
    with store.session() as s:
        q = select(FileRecord.path, FileRecord.status, FileRecord.size, FileRecord.item_id,
                   FileRecord.reason, FileRecord.mtime_ns, Item.sha256
                   ).outerjoin(Item, Item.id == FileRecord.item_id)
        return {r[0]: Known(*r[1:]) for r in s.execute(q)}


def bytes_changed(rec: Known, c: Candidate, max_bytes: int, *, rehash: bool = False,
                  ) -> tuple[str | None, int | None]:
    """(why the bytes at a known path differ from its item's, or None; its mtime_ns).

    Free when nothing changed: the size and modification time the scan saw match the
    recorded ones (``rehash`` hashes every file all the same). Otherwise the file is
    hashed: a touched file with the same bytes is no change.
    """
    size, mtime = c.seen()
    if size is None:
        return "cannot read it any more (it is gone, or cannot be looked at)", None
    if not rehash and rec.size == size and rec.mtime_ns == mtime:
        return None, mtime
    try:
        data, st = read_regular_stat(c.path, max_bytes)
    except (OSError, ValueError) as exc:
        return f"cannot read it any more ({exc})", None
    sha = hashlib.sha256(data).hexdigest()
    if rec.sha256 is None or sha == rec.sha256:
        return None, st.st_mtime_ns
    return (f"its bytes changed since it was ingested (sha256 {rec.sha256[:12]}... is now "
            f"{sha[:12]}...). The item keeps the old hash, its votes and labels; the new "
            "bytes are refused. Restore the file, or give the new image a new name to add "
            "it as a new item."), st.st_mtime_ns


def retry(rec: Known, c: Candidate) -> bool:
    """Look at a rejected file again? If its size or modification time changed, if it
    could not be read, or if its manifest row or a dead decoder was the fault."""
    if rec.reason == CRASH_REASON or (rec.reason or "").startswith("manifest row"):
        return True
    size, mtime = c.seen()
    if size is None or rec.size is None or size != rec.size:
        return True
    return rec.mtime_ns is not None and rec.mtime_ns != mtime
