"""The store side of ingest: the files already known, and the records one run writes.

A good file becomes an :class:`~alearn.store.Item` (manifest values first, EXIF capture
date and GPS where the manifest gives none); byte-identical copies become 'duplicate'
file records pointing at the first path's item; a refused or undecodable file becomes a
'rejected' record with its reason. :class:`IngestSummary` counts what one run did.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from alearn.files import read_regular_file
from alearn.ingestion.decode import Decoded
from alearn.ingestion.manifest import ManifestRow
from alearn.ingestion.scan import Candidate, Refusal, printable
from alearn.store import FileRecord, Item, Label, Store

logger = logging.getLogger(__name__)


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


def bytes_changed(rec: Known, c: Candidate, max_bytes: int) -> tuple[str | None, int | None]:
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


def retry(rec: Known, c: Candidate) -> bool:
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


def put_file(s: Session, known: dict[str, Known], path: str, **values: Any) -> None:
    """Add or update the file record of ``path`` (and note it in ``known``)."""
    if values.get("reason"):
        values["reason"] = printable(values["reason"])
    rec = None
    if path in known:
        rec = s.scalars(select(FileRecord).where(FileRecord.path == path)).one_or_none()
    if rec is None:
        s.add(FileRecord(path=path, **values))
        known[path] = Known(values.get("status", ""), values.get("size"),
                            values.get("item_id"), values.get("reason"))
        return
    for key, value in values.items():
        setattr(rec, key, value)


def record_refusal(s: Session, ref: Refusal, known: dict[str, Known],
                   summary: IngestSummary, root: Path) -> None:
    """Record a refusal as a 'rejected' file, unless it is already recorded as such."""
    rec = known.get(ref.key) if ref.store else None
    if rec is not None and rec.status == "rejected" and rec.reason == ref.reason:
        summary.skipped += 1
        return
    summary.reject(ref.key, ref.reason)
    if ref.store and (rec is None or rec.status == "rejected"):
        put_file(s, known, ref.key, status="rejected", reason=ref.reason, item_id=None,
                 size=_file_size(root / ref.key))


def write_batch(s: Session, batch: list[Candidate], results: list[Decoded],
                known: dict[str, Known], summary: IngestSummary) -> None:
    """Record one batch of decoded files: new items, duplicates and rejections."""
    good = [(c, r) for c, r in zip(batch, results, strict=True)
            if r.error is None and r.sha256 is not None]
    shas = [r.sha256 for _, r in good]
    items: dict[str | None, int] = dict(
        s.execute(select(Item.sha256, Item.id).where(Item.sha256.in_(shas))).all())
    new: dict[str, Item] = {}
    for c, r in good:  # the first path of new content becomes its item
        sha = r.sha256
        if sha is not None and sha not in items and sha not in new:
            new[sha] = _new_item(c, r)
    s.add_all(new.values())
    s.flush()  # one batched INSERT for the new items' ids
    items.update((sha, item.id) for sha, item in new.items())
    for c, r in zip(batch, results, strict=True):
        if r.error is not None or r.sha256 is None:
            reason = r.error or "unreadable"
            put_file(s, known, c.rel, status="rejected", reason=reason, item_id=None,
                     size=r.size)
            summary.reject(c.rel, reason)
            continue
        item_id = items[r.sha256]
        if new.get(r.sha256) is None or new[r.sha256].path != c.rel:
            put_file(s, known, c.rel, status="duplicate", reason=None, item_id=item_id,
                     size=r.size, mtime_ns=_mtime(c.file))
            summary.duplicate += 1
            if c.row is not None:
                apply_row(s, item_id, c, summary, overwrite=False)
            continue
        put_file(s, known, c.rel, status="item", reason=None, item_id=item_id, size=r.size,
                 mtime_ns=_mtime(c.file))
        if c.row is not None and c.row.label is not None:
            s.add(Label(item_id=item_id, label=c.row.label, origin="manifest", is_gold=True))
        summary.added += 1


def _new_item(c: Candidate, r: Decoded) -> Item:
    row = c.row or ManifestRow(row=0, path=c.rel)
    lat, lon = (row.lat, row.lon) if row.lat is not None else (r.exif.lat, r.exif.lon)
    return Item(
        sha256=r.sha256, path=c.rel, width=r.width, height=r.height, source=row.source,
        captured_at=row.captured_at or r.exif.captured_at, lat=lat, lon=lon,
        license=row.license, extra=dict(row.extra),
    )


def apply_row(s: Session, item_id: int, c: Candidate, summary: IngestSummary, *,
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
