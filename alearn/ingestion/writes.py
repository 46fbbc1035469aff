"""The records one ingest run writes, in batches.

A good file becomes an :class:`~alearn.store.Item` (manifest values first, EXIF capture
date and GPS where the manifest gives none); byte-identical copies become 'duplicate'
file records pointing at the first path's item; a refused or undecodable file becomes a
'rejected' record with its reason. A batch is a few statements (items, then their new ids
read back in one query, file records, manifest labels), not a round trip per file:
rows are plain tuples sent in one ``executemany`` on SQLite and one COPY on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from alearn.ingestion.decode import Decoded
from alearn.ingestion.manifest import ManifestRow
from alearn.ingestion.records import IngestSummary, Known
from alearn.ingestion.scan import Candidate, Refusal, printable
from alearn.store import FileRecord, Item, Label, utcnow

FILES = cast(Table, FileRecord.__table__)
ITEMS = cast(Table, Item.__table__)
LABELS = cast(Table, Label.__table__)
_UNSET = object()
_NO_ROW = ManifestRow(row=0, path=None)
FILE_COLS = ("path", "status", "reason", "item_id", "size", "mtime_ns", "seen_at")
ITEM_COLS = ("sha256", "path", "width", "height", "source", "captured_at", "lat", "lon",
             "license", "extra", "added_at")
LABEL_COLS = ("item_id", "label", "origin", "is_gold", "confidence", "created_at")


class ItemIds:
    """sha256 -> id of the store's items, kept up to date through one ingest run.

    Seeded from the known files; when every item of the store has a file record (as
    ingest makes them), the seed is complete and new content needs no lookup at all.
    Otherwise unseen hashes are looked up in the store, a batch at a time.
    """

    def __init__(self, s: Session, known: dict[str, Known]) -> None:
        self.ids = {k.sha256: k.item_id for k in known.values()
                    if k.sha256 is not None and k.item_id is not None}
        n_items = s.scalar(select(func.count()).select_from(ITEMS))
        self.complete = n_items == len(set(self.ids.values()))

    def lookup(self, s: Session, shas: set[str]) -> dict[str, int]:
        """The ids, with those of ``shas`` that are items among them."""
        if not self.complete:
            self.ids.update(_item_ids(s, {sha for sha in shas if sha not in self.ids}))
        return self.ids


def write_batch(s: Session, batch: list[Candidate], results: list[Decoded],
                known: dict[str, Known], summary: IngestSummary, item_ids: ItemIds) -> None:
    """Record one batch of decoded files: new items, duplicates and rejections."""
    now = utcnow()
    items = item_ids.lookup(s, {r.sha256 for r in results if r.error is None and r.sha256})
    new: dict[str, tuple[Any, ...]] = {}  # the first path of new content becomes its item
    for c, r in zip(batch, results, strict=True):
        if r.error is None and r.sha256 is not None and r.sha256 not in items \
                and r.sha256 not in new:
            new[r.sha256] = _item_row(c, r, now)
    if new:
        items.update(insert_items(s, new))
    records: list[tuple[Any, ...]] = []
    labels: list[tuple[Any, ...]] = []
    rows_of_duplicates: list[tuple[int, Candidate]] = []
    for c, r in zip(batch, results, strict=True):
        if r.error is not None or r.sha256 is None:
            reason = printable(r.error or "unreadable")
            records.append((c.rel, "rejected", reason, None, r.size, r.mtime_ns, now))
            summary.reject(c.rel, reason)
            continue
        item_id = items[r.sha256]
        if r.sha256 in new and new[r.sha256][1] == c.rel:
            records.append((c.rel, "item", None, item_id, r.size, r.mtime_ns, now))
            if c.row is not None and c.row.label is not None:
                labels.append((item_id, c.row.label, "manifest", True, 1.0, now))
            summary.added += 1
            continue
        records.append((c.rel, "duplicate", None, item_id, r.size, r.mtime_ns, now))
        summary.duplicate += 1
        if c.row is not None:
            rows_of_duplicates.append((item_id, c))
    put_files(s, known, records)
    insert_rows(s, LABELS, LABEL_COLS, labels)
    for item_id, c in rows_of_duplicates:
        apply_row(s, item_id, c, summary, overwrite=False)


def _item_ids(s: Session, shas: set[str]) -> dict[str, int]:
    """sha256 -> item id, for those of ``shas`` that are items in the store."""
    if not shas:
        return {}
    q = select(ITEMS.c.sha256, ITEMS.c.id).where(
        ITEMS.c.sha256.in_(bindparam("shas", expanding=True)))
    return {sha: id_ for sha, id_ in s.execute(q, {"shas": list(shas)})}


def insert_items(s: Session, rows: dict[str, tuple[Any, ...]]) -> dict[str, int]:
    """INSERT new items (sha256 -> row in ``ITEM_COLS`` order); their ids by sha256.

    The new ids are read back as those above the largest id before the insert (ids
    only grow: a SQLite rowid, a PostgreSQL sequence), not looked up hash by hash.
    """
    top = s.scalar(select(func.max(ITEMS.c.id))) or 0
    insert_rows(s, ITEMS, ITEM_COLS, list(rows.values()))
    q = select(ITEMS.c.sha256, ITEMS.c.id).where(ITEMS.c.id > top)
    return {sha: id_ for sha, id_ in s.execute(q) if sha in rows}


def insert_rows(s: Session, table: Table, cols: tuple[str, ...],
                rows: list[tuple[Any, ...]]) -> None:
    """INSERT ``rows`` (tuples of ``cols``' values, every column with a default among
    them) in the session's transaction, in one statement of the database driver: COPY
    on PostgreSQL through psycopg, one ``executemany`` otherwise.

    The values go through the columns' own bind processors, as SQLAlchemy would send
    them, but without its per-row parameter handling: that was a third of ingest's time
    per file on small images.
    """
    if not rows:
        return
    conn = s.connection()
    dialect = conn.dialect
    procs = [(i, _last_value_cached(bind)) for i, k in enumerate(cols)
             if (bind := table.c[k].type.dialect_impl(dialect).bind_processor(dialect))]
    if procs:
        rows = [_processed(row, procs) for row in rows]
    compiled = insert(table).inline().compile(dialect=dialect, column_keys=list(cols))
    if set(compiled.binds) != set(cols):
        raise ValueError(f"insert_rows({table.name}): give exactly the columns "
                         f"{sorted(compiled.binds)}, not {sorted(cols)}")
    raw = conn.connection.driver_connection
    if dialect.name == "postgresql" and dialect.driver == "psycopg" and raw is not None:
        names = ", ".join(f'"{k}"' for k in cols)
        with raw.cursor() as cur, \
                cur.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)
        return
    order = list(compiled.positiontup or []) if compiled.positional else list(cols)
    if order != list(cols):
        where = [cols.index(k) for k in order]
        rows = [tuple(row[i] for i in where) for row in rows]
    params: list[Any] = rows if compiled.positional else [
        dict(zip(order, row, strict=True)) for row in rows]
    conn.exec_driver_sql(compiled.string, params)


def _processed(row: tuple[Any, ...], procs: list[tuple[int, Callable[[Any], Any]]],
               ) -> tuple[Any, ...]:
    values = list(row)
    for i, proc in procs:
        values[i] = proc(values[i])
    return tuple(values)


def _last_value_cached(proc: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``proc`` that returns its last result again for the same object (a batch's one
    timestamp, None, the shared empty ``extra``)."""
    last: list[Any] = [_UNSET, None]

    def cached(value: Any) -> Any:
        if value is not last[0]:
            last[0], last[1] = value, proc(value)
        return last[1]

    return cached


def _item_row(c: Candidate, r: Decoded, now: dt.datetime) -> tuple[Any, ...]:
    """The item's values in ``ITEM_COLS`` order (its path second)."""
    row = c.row
    if row is None:
        return (r.sha256, c.rel, r.width, r.height, None, r.exif.captured_at, r.exif.lat,
                r.exif.lon, None, _NO_ROW.extra, now)
    lat, lon = (row.lat, row.lon) if row.lat is not None else (r.exif.lat, r.exif.lon)
    return (r.sha256, c.rel, r.width, r.height, row.source,
            row.captured_at or r.exif.captured_at, lat, lon, row.license,
            dict(row.extra) if row.extra else _NO_ROW.extra, now)


def put_files(s: Session, known: dict[str, Known], records: list[tuple[Any, ...]]) -> None:
    """Insert or update file records (tuples in ``FILE_COLS`` order), in two statements,
    and note them in ``known``."""
    insert_rows(s, FILES, FILE_COLS, [r for r in records if r[0] not in known])
    updates = [{"b_path": r[0], **dict(zip(FILE_COLS[1:], r[1:], strict=True))}
               for r in records if r[0] in known]
    if updates:
        s.execute(update(FILES).where(FILES.c.path == bindparam("b_path")), updates)
    for path, status, reason, item_id, size, mtime_ns, _ in records:
        known[path] = Known(status, size, item_id, reason, mtime_ns)


def record_touched(s: Session, touched: list[tuple[str, int]]) -> None:
    """Record the new modification time of files whose bytes did not change."""
    if touched:
        s.execute(update(FILES).where(FILES.c.path == bindparam("b_path")),
                  [{"b_path": path, "mtime_ns": mtime} for path, mtime in touched])


def record_refusal(s: Session, ref: Refusal, known: dict[str, Known],
                   summary: IngestSummary, root: Path) -> None:
    """Record a refusal as a 'rejected' file, unless it is already recorded as such."""
    rec = known.get(ref.key) if ref.store else None
    if rec is not None and rec.status == "rejected" and rec.reason == ref.reason:
        summary.skipped += 1
        summary.earlier_rejections.append((ref.key, ref.reason))
        return
    summary.reject(ref.key, ref.reason)
    if ref.store and (rec is None or rec.status == "rejected"):
        try:
            size: int | None = (root / ref.key).stat().st_size
        except OSError:
            size = None
        put_files(s, known, [(ref.key, "rejected", printable(ref.reason), None, size, None,
                              utcnow())])


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
