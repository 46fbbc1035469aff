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
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select

from alearn.exceptions import LabelStudioError
from alearn.store import Round, Selection, Store
from alearn.team import voters
from labelstudio import pull_window
from labelstudio.client import LSClient
from labelstudio.convert import SET_ASIDE, annotation_to_record
from labelstudio.mirror import Quarantine, annotation_id, keep_quarantine, mirror_votes

logger = logging.getLogger(__name__)


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
    data: Any = task.get("data") or {}
    try:
        named = (int(data.get("item_id")), int(data.get("round")))
    except (TypeError, ValueError):
        named = None
    if named != where:
        return (f"Label Studio task {tid} names item/round {named} but alearn pushed it "
                f"for item {where[0]}, round id {where[1]}")
    return None


def pull_annotations(
    store: Store,
    client: LSClient,
    *,
    round_id: int | None = None,
    classes: Sequence[str] | None = None,
    full: bool = False,
) -> PullSummary:
    """Mirror the annotations of the project's tasks (of one round, if given).

    Only the tasks Label Studio updated since the last pull are read
    (:mod:`labelstudio.pull_window`), unless ``full`` or the window is unknown.

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
    since = None if full else pull_window.updated_after(store, project_id)
    listed: list[str | None] = []
    records: dict[int, dict[str, Any]] = {}
    unreadable: dict[int, str] = {}
    quarantine = Quarantine(project_id)
    tasks_seen: set[int] = set()
    for task in client.iter_tasks(project_id, annotations=True, updated_after=since):
        listed.append(task.get("updated_at"))
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
                aid = annotation_id(ann)
                if aid is not None:
                    unreadable[aid] = reason
                continue
            records[rec["ls_annotation_id"]] = rec
    superseded = _supersede(records)
    _off_roster(records, voters(store))
    counts = mirror_votes(store, records, unreadable, tasks_seen, _rounds(store))
    keep_quarantine(store, quarantine, set(records))
    pull_window.remember(store, project_id, listed, full=since is None)
    summary = PullSummary(**counts, tasks=len(tasks_seen), quarantined=len(quarantine.rows),
                          superseded=superseded)
    logger.info(
        "pull done ls_project_id=%s round_id=%s updated_after=%s tasks=%s new=%s updated=%s "
        "deleted=%s unchanged=%s set_aside=%s quarantined=%s superseded=%s stale_rounds=%s",
        project_id, round_id, since or "-", len(tasks_seen), summary.new, summary.updated,
        summary.deleted, summary.unchanged, summary.set_aside, summary.quarantined,
        summary.superseded, summary.stale_rounds,
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


