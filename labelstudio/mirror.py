"""Write what a pull read into the store: votes into ``annotations``, the rest into
``quarantine``.

:func:`mirror_votes` makes the store's votes on the tasks seen match Label Studio's
(while a round is open a vote deleted there is deleted here; once it is closed the vote
is kept, set aside, and the round is marked stale with what changed).
:class:`Quarantine` collects the annotations alearn does not count, and
:func:`keep_quarantine` upserts them. Reading Label Studio and deciding what counts is
:mod:`labelstudio.pull`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from sqlalchemy import select

from alearn.rounds.lifecycle import CLOSED, record_event
from alearn.store import Annotation, QuarantinedAnnotation, Store, utcnow
from labelstudio.convert import SET_ASIDE

logger = logging.getLogger(__name__)

T = TypeVar("T")
_FIELDS = [c.name for c in Annotation.__table__.columns if c.name != "id"]
#: A change to one of these on a closed round's vote makes the round stale.
_VOTE_FIELDS = ("annotator", "label", "status", "was_cancelled")


def _chunks(values: Iterable[T], n: int = 500) -> Iterator[list[T]]:
    batch: list[T] = []
    for v in values:
        batch.append(v)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def annotation_id(ann: Any) -> int | None:
    """The Label Studio id of an annotation record, or None if it has no readable one."""
    try:
        return int(ann["id"]) if isinstance(ann, Mapping) and ann.get("id") is not None else None
    except (TypeError, ValueError):
        return None


def _raw(value: Any) -> Any:
    """A JSON-safe copy of what Label Studio sent."""
    return json.loads(json.dumps(value, default=str))


class Quarantine:
    """Annotations seen in this pull that alearn does not count."""

    def __init__(self, ls_project_id: int) -> None:
        self.project = ls_project_id
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, task: Mapping[str, Any], ann: Any, kind: str, reason: str) -> None:
        aid = annotation_id(ann)
        raw = _raw(ann)
        key = (f"{self.project}:{aid}" if aid is not None else
               f"{self.project}:task{task.get('id')}:" + hashlib.sha1(
                   json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16])
        task_id = task.get("id")
        self.rows[key[:128]] = {
            "ls_project_id": self.project, "ls_annotation_id": aid, "kind": kind,
            "ls_task_id": task_id if isinstance(task_id, int) else None,
            "reason": reason, "raw": {"annotation": raw, "task_data": _raw(task.get("data"))},
        }
        logger.warning("pull set aside annotation ls_task_id=%s ls_annotation_id=%s kind=%s "
                       "reason=%s", task.get("id"), aid, kind, reason)


def mirror_votes(
    store: Store,
    records: dict[int, dict[str, Any]],
    unreadable: dict[int, str],
    tasks_seen: set[int],
    rounds: dict[int, tuple[int, str]],
) -> dict[str, int]:
    """Write one pull's readable votes (``records``, by annotation id) and unreadable
    ones into ``annotations``; returns the counts of what changed. A closed round's
    changed votes make it stale (a ``stale`` event with what changed)."""
    new = updated = unchanged = set_aside = deleted = 0
    stale: dict[int, list[dict[str, Any]]] = defaultdict(list)

    def closed(round_id: int | None) -> bool:
        return round_id is not None and rounds.get(round_id, (0, ""))[1] == CLOSED

    with store.session() as s:
        existing: dict[int, Annotation] = {}
        row: Annotation | None
        for ann_ids in _chunks(list(records) + list(unreadable)):
            query = select(Annotation).where(Annotation.ls_annotation_id.in_(ann_ids))
            existing.update((row.ls_annotation_id, row) for row in s.scalars(query))
        for task_ids in _chunks(tasks_seen):
            for row in s.scalars(select(Annotation).where(Annotation.ls_task_id.in_(task_ids))):
                if row.ls_annotation_id in records or row.ls_annotation_id in unreadable:
                    continue
                if not closed(row.round_id):
                    s.delete(row)  # an open round mirrors Label Studio exactly
                    deleted += 1
                    continue
                reason = "deleted in Label Studio after its round closed"
                if row.reason != reason:
                    stale[row.round_id].append(  # type: ignore[index]
                        {"annotation": row.ls_annotation_id, "change": "deleted",
                         "label": row.label, "annotator": row.annotator})
                    row.status, row.reason = SET_ASIDE, reason
                    updated += 1
        for ann_id, why in unreadable.items():
            row = existing.get(ann_id)
            reason = f"Label Studio's record can no longer be read ({why})"
            if row is not None and row.reason != reason:
                if closed(row.round_id) and row.status != SET_ASIDE:
                    stale[row.round_id].append(  # type: ignore[index]
                        {"annotation": ann_id, "change": "unreadable", "label": row.label})
                row.status, row.reason = SET_ASIDE, reason
                updated += 1
        for ann_id, rec in records.items():
            row = existing.get(ann_id)
            if row is None:
                s.add(Annotation(**rec))
                new += 1
                if closed(rec["round_id"]):
                    stale[rec["round_id"]].append(
                        {"annotation": ann_id, "change": "added", "label": rec["label"]})
            elif all(getattr(row, f) == rec[f] for f in _FIELDS):
                unchanged += 1
                continue
            else:
                if closed(rec["round_id"]) and any(getattr(row, f) != rec[f]
                                                   for f in _VOTE_FIELDS):
                    stale[rec["round_id"]].append(
                        {"annotation": ann_id, "change": "edited", "was": row.label,
                         "now": rec["label"], "status": rec["status"]})
                for f in _FIELDS:
                    setattr(row, f, rec[f])
                updated += 1
            set_aside += rec["status"] == SET_ASIDE
    for rid, changes in stale.items():
        record_event(store, rid, "stale", round=rounds[rid][0], changes=changes)
    return {"new": new, "updated": updated, "deleted": deleted, "unchanged": unchanged,
            "set_aside": set_aside, "stale_rounds": len(stale)}


def keep_quarantine(store: Store, found: Quarantine, mirrored: set[int]) -> None:
    """Upsert this pull's quarantined annotations; drop those that are now mirrored
    (a task an interrupted push created is adopted by the retried push)."""
    now = utcnow()
    with store.session() as s:
        have = {q.key: q for q in s.scalars(select(QuarantinedAnnotation).where(
            QuarantinedAnnotation.ls_project_id == found.project))}
        for key, row in found.rows.items():
            q = have.get(key)
            if q is None:
                s.add(QuarantinedAnnotation(key=key, first_seen=now, updated_at=now, **row))
            elif (q.reason, q.kind, q.raw) != (row["reason"], row["kind"], row["raw"]):
                q.reason, q.kind, q.raw, q.updated_at = row["reason"], row["kind"], row["raw"], now
        for q in have.values():
            if q.ls_annotation_id is not None and q.ls_annotation_id in mirrored:
                s.delete(q)
