"""Mirror Label Studio annotations into the store, one annotation at a time.

Every annotation Label Studio holds on the project's tasks ends up in one place:

- mirrored in ``annotations``: status 'ok', or 'set_aside' with a reason (a label that
  is not a class, a skip, an earlier vote superseded by the same annotator's later one
  on the same task, a record Label Studio can no longer attribute, a voter who is not on
  the project's roster: only the team labels, see :mod:`alearn.team`);
- or kept as it came in ``quarantine`` with its reason: ``foreign`` (a task alearn did
  not record at push, or whose data names another item or round than alearn recorded)
  or ``unreadable`` (no id, no author, a malformed record).

Only tasks alearn recorded at push count, matched by Label Studio task id *and* the
item and round alearn recorded. One bad record never stops a pull; it is set aside
and the rest is mirrored.

Running a pull twice changes nothing the second time. While a round is open the store
mirrors Label Studio exactly (a vote deleted there is deleted here). Once a round is
closed its votes are history: a vote added, edited or deleted afterwards is mirrored (a
deleted one is kept, set aside) and the round is marked *stale* with what changed;
``alearn round close --round N`` recomputes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from sqlalchemy import select

from alearn.exceptions import LabelStudioError
from alearn.rounds.lifecycle import CLOSED, record_event
from alearn.store import Annotation, QuarantinedAnnotation, Round, Selection, Store, utcnow
from alearn.team import voters
from labelstudio.client import LSClient
from labelstudio.convert import SET_ASIDE, annotation_to_record

logger = logging.getLogger(__name__)

T = TypeVar("T")
_FIELDS = [c.name for c in Annotation.__table__.columns if c.name != "id"]
#: A change to one of these on a closed round's vote makes the round stale.
_VOTE_FIELDS = ("annotator", "label", "status", "was_cancelled")


@dataclass(frozen=True)
class PullSummary:
    """Counts of one pull. ``set_aside``: new or updated annotations that were set aside;
    ``quarantined``: annotations Label Studio holds that alearn does not count (foreign
    tasks, unreadable records); ``stale_rounds``: closed rounds whose votes changed."""

    new: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    set_aside: int = 0
    tasks: int = 0
    quarantined: int = 0
    superseded: int = 0
    stale_rounds: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _chunks(values: Iterable[T], n: int = 500) -> Iterator[list[T]]:
    batch: list[T] = []
    for v in values:
        batch.append(v)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _recorded_tasks(store: Store) -> dict[int, tuple[int, int]]:
    """LS task id -> (item id, round id), as alearn recorded them at push."""
    with store.session() as s:
        rows = s.execute(
            select(Selection.ls_task_id, Selection.item_id, Selection.round_id).where(
                Selection.ls_task_id.is_not(None)
            )
        ).all()
    return {int(t): (int(i), int(r)) for t, i, r in rows if t is not None}


def _rounds(store: Store) -> dict[int, tuple[int, str]]:
    with store.session() as s:
        return {r.id: (r.number, r.status) for r in s.scalars(select(Round))}


def _why_foreign(task: Mapping[str, Any], where: tuple[int, int] | None) -> str | None:
    """None if the task is the one alearn pushed; else why its votes do not count."""
    tid = task.get("id")
    if where is None:
        return f"Label Studio task {tid} was not created by alearn's push"
    data = task.get("data") or {}
    try:
        named = (int(data.get("item_id")), int(data.get("round")))
    except (TypeError, ValueError):
        named = None
    if named != where:
        return (f"Label Studio task {tid} names item/round {named} but alearn pushed it "
                f"for item {where[0]}, round id {where[1]}")
    return None


def _ann_id(ann: Any) -> int | None:
    try:
        return int(ann["id"]) if isinstance(ann, Mapping) and ann.get("id") is not None else None
    except (TypeError, ValueError):
        return None


def _raw(value: Any) -> Any:
    """A JSON-safe copy of what Label Studio sent."""
    return json.loads(json.dumps(value, default=str))


class _Quarantine:
    """Annotations seen in this pull that alearn does not count."""

    def __init__(self, ls_project_id: int) -> None:
        self.project = ls_project_id
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, task: Mapping[str, Any], ann: Any, kind: str, reason: str) -> None:
        aid = _ann_id(ann)
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


def pull_annotations(
    store: Store,
    client: LSClient,
    *,
    round_id: int | None = None,
    classes: Sequence[str] | None = None,
) -> PullSummary:
    """Mirror the annotations of the project's tasks (of one round, if given).

    Parameters
    ----------
    round_id
        Only tasks of this round; others are left alone.
    classes
        The project's classes (other labels are set aside); by default the classes the
        Label Studio project was set up with.
    """
    project_id = store.get_meta("ls_project_id")
    if project_id is None:
        raise LabelStudioError(
            "there is no Label Studio project for this store yet; start a round first "
            "('alearn round start')."
        )
    project_id = int(project_id)
    classes = list(classes if classes is not None else store.get_meta("ls_classes") or [])
    if client.get_project(project_id) is None:
        raise LabelStudioError(
            f"Label Studio project {project_id} does not exist at {client.url}; nothing "
            "was pulled. Point ALEARN_LS_URL at the server that holds it."
        )
    recorded = _recorded_tasks(store)
    users = client.user_emails()
    records: dict[int, dict[str, Any]] = {}
    unreadable: dict[int, str] = {}
    quarantine = _Quarantine(project_id)
    tasks_seen: set[int] = set()
    for task in client.iter_tasks(project_id, annotations=True):
        where = recorded.get(task.get("id"))  # type: ignore[arg-type]
        if round_id is not None and (where is None or where[1] != round_id):
            continue
        anns = task.get("annotations") or []
        foreign = _why_foreign(task, where)
        if foreign is not None or where is None:
            for ann in anns:
                quarantine.add(task, ann, "foreign", foreign or "unknown task")
            continue
        tasks_seen.add(int(task["id"]))
        for ann in anns:
            try:
                rec = annotation_to_record(
                    ann, task, classes, users=users, item_id=where[0], round_id=where[1]
                )
            except Exception as exc:  # noqa: BLE001 - one bad record never stops a pull
                reason = f"unreadable annotation: {exc}"
                quarantine.add(task, ann, "unreadable", reason)
                aid = _ann_id(ann)
                if aid is not None:
                    unreadable[aid] = reason
                continue
            records[rec["ls_annotation_id"]] = rec
    superseded = _supersede(records)
    _off_roster(records, voters(store))
    summary = _mirror(store, records, unreadable, tasks_seen, _rounds(store))
    _keep_quarantine(store, quarantine, set(records))
    summary = PullSummary(**{**summary.to_dict(), "quarantined": len(quarantine.rows),
                             "superseded": superseded})
    logger.info(
        "pull done ls_project_id=%s round_id=%s tasks=%s new=%s updated=%s deleted=%s "
        "unchanged=%s set_aside=%s quarantined=%s superseded=%s stale_rounds=%s",
        project_id, round_id, len(tasks_seen), summary.new, summary.updated, summary.deleted,
        summary.unchanged, summary.set_aside, summary.quarantined, summary.superseded,
        summary.stale_rounds,
    )
    return summary


def _off_roster(records: dict[int, dict[str, Any]], team: set[str]) -> None:
    """Only the team labels: a vote by anyone off the roster is set aside."""
    for rec in records.values():
        if rec["status"] != SET_ASIDE and rec["annotator"].strip().lower() not in team:
            rec["status"] = SET_ASIDE
            rec["reason"] = (f"{rec['annotator']} is not on the project's roster; votes "
                             "count only from annotators added with 'alearn ls users add'")


def _supersede(records: dict[int, dict[str, Any]]) -> int:
    """One vote per (task, annotator): the latest counts, earlier ones are set aside."""
    by_person: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records.values():
        by_person[(rec["ls_task_id"], rec["annotator"])].append(rec)
    n = 0
    for recs in by_person.values():
        if len(recs) < 2:
            continue
        recs.sort(key=lambda r: (r["updated_at"] or r["created_at"] or dt.datetime.min,
                                 r["ls_annotation_id"]))
        latest = recs[-1]["ls_annotation_id"]
        for rec in recs[:-1]:
            rec["status"] = SET_ASIDE
            rec["reason"] = (f"superseded: the same annotator labeled this task again "
                             f"(annotation {latest}); the latest counts")
            n += 1
    return n


def _mirror(
    store: Store,
    records: dict[int, dict[str, Any]],
    unreadable: dict[int, str],
    tasks_seen: set[int],
    rounds: dict[int, tuple[int, str]],
) -> PullSummary:
    new = updated = unchanged = set_aside = deleted = 0
    stale: dict[int, list[dict[str, Any]]] = defaultdict(list)

    def closed(round_id: int | None) -> bool:
        return round_id is not None and rounds.get(round_id, (0, ""))[1] == CLOSED

    with store.session() as s:
        existing: dict[int, Annotation] = {}
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
    return PullSummary(
        new=new, updated=updated, deleted=deleted, unchanged=unchanged,
        set_aside=set_aside, tasks=len(tasks_seen), stale_rounds=len(stale),
    )


def _keep_quarantine(store: Store, found: _Quarantine, mirrored: set[int]) -> None:
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
