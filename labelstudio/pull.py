"""Mirror Label Studio annotations into the store, idempotently.

For every task pulled, the store ends up holding exactly that task's annotations as
Label Studio has them now: new ones are added, changed ones (a later ``updated_at``,
or any converted field that differs) replace the stored row, and ones that vanished
from Label Studio are deleted. Running a pull twice changes nothing the second time.
A bad annotation is stored set aside, with its reason; it never stops the pull.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from sqlalchemy import delete, select

from alearn.exceptions import LabelStudioError
from alearn.store import Annotation, Item, Selection, Store
from labelstudio.client import LSClient
from labelstudio.convert import SET_ASIDE, annotation_to_record

logger = logging.getLogger(__name__)

T = TypeVar("T")
_FIELDS = [c.name for c in Annotation.__table__.columns if c.name != "id"]


@dataclass(frozen=True)
class PullSummary:
    """Counts of one pull. ``set_aside``: new or updated annotations that were set aside."""

    new: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    set_aside: int = 0
    tasks: int = 0

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


def _task_map(store: Store) -> tuple[dict[int, tuple[int, int]], set[int]]:
    """LS task id -> (item id, round id) from the selections, and the known item ids."""
    with store.session() as s:
        rows = s.execute(
            select(Selection.ls_task_id, Selection.item_id, Selection.round_id).where(
                Selection.ls_task_id.is_not(None)
            )
        ).all()
        items = set(s.scalars(select(Item.id)))
    return {int(t): (int(i), int(r)) for t, i, r in rows if t is not None}, items


def _locate(
    task: dict[str, Any], task_map: dict[int, tuple[int, int]], items: set[int]
) -> tuple[int, int | None] | None:
    if task["id"] in task_map:
        return task_map[task["id"]]
    data = task["data"]
    try:
        item = int(data["item_id"])
        rnd = None if data.get("round") is None else int(data["round"])
    except (KeyError, TypeError, ValueError):
        return None
    return (item, rnd) if item in items else None


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
            "there is no Label Studio project for this store yet; push a round first."
        )
    project_id = int(project_id)
    classes = list(classes if classes is not None else store.get_meta("ls_classes") or [])
    if client.get_project(project_id) is None:
        raise LabelStudioError(
            f"Label Studio project {project_id} does not exist at {client.url}; nothing "
            "was pulled. Point ALEARN_LS_URL at the server that holds it."
        )
    task_map, items = _task_map(store)
    users = client.user_emails()
    records: dict[int, dict[str, Any]] = {}
    tasks_seen: set[int] = set()
    skipped = 0
    for task in client.iter_tasks(project_id, annotations=True):
        where = _locate(task, task_map, items)
        if where is None or (round_id is not None and where[1] != round_id):
            skipped += where is None
            continue
        tasks_seen.add(task["id"])
        for ann in task["annotations"]:
            try:
                rec = annotation_to_record(
                    ann, task, classes, users=users, item_id=where[0], round_id=where[1]
                )
            except (ValueError, TypeError, KeyError) as exc:
                logger.warning(
                    "pull skipped annotation ls_task_id=%s ls_annotation_id=%s reason=%s",
                    task["id"], ann.get("id") if isinstance(ann, dict) else None, exc,
                )
                continue
            records[rec["ls_annotation_id"]] = rec
    if skipped:
        logger.warning("pull ignored %s tasks that name no known item", skipped)
    summary = _mirror(store, records, tasks_seen)
    logger.info(
        "pull done ls_project_id=%s round_id=%s tasks=%s new=%s updated=%s deleted=%s "
        "unchanged=%s set_aside=%s", project_id, round_id, len(tasks_seen), summary.new,
        summary.updated, summary.deleted, summary.unchanged, summary.set_aside,
    )
    return summary


def _mirror(
    store: Store, records: dict[int, dict[str, Any]], tasks_seen: set[int]
) -> PullSummary:
    new = updated = unchanged = set_aside = deleted = 0
    with store.session() as s:
        existing: dict[int, Annotation] = {}
        for ann_ids in _chunks(records):
            query = select(Annotation).where(Annotation.ls_annotation_id.in_(ann_ids))
            existing.update((row.ls_annotation_id, row) for row in s.scalars(query))
        gone: list[int] = []
        for task_ids in _chunks(tasks_seen):
            gone += [
                row.id
                for row in s.scalars(select(Annotation).where(Annotation.ls_task_id.in_(task_ids)))
                if row.ls_annotation_id not in records
            ]
        for ids in _chunks(gone):
            s.execute(delete(Annotation).where(Annotation.id.in_(ids)))
        deleted = len(gone)
        for ann_id, rec in records.items():
            row = existing.get(ann_id)
            if row is None:
                s.add(Annotation(**rec))
                new += 1
            elif all(getattr(row, f) == rec[f] for f in _FIELDS):
                unchanged += 1
                continue
            else:
                for f in _FIELDS:
                    setattr(row, f, rec[f])
                updated += 1
            set_aside += rec["status"] == SET_ASIDE
    return PullSummary(
        new=new, updated=updated, deleted=deleted, unchanged=unchanged,
        set_aside=set_aside, tasks=len(tasks_seen),
    )

