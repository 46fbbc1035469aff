"""Push a round's selection to Label Studio as tasks with predictions.

Each selected item becomes one task whose data is ``{image, item_id, round, sha256}``
and which carries one prediction: the round's model version, the selection's score
(lower means more uncertain, so "Uncertainty sampling" serves it first) and, when the
model predicted a class, that class as a choice. Tasks and predictions are imported in
one call per chunk.

A push can be retried after any failure without duplicating tasks: before creating
anything it lists the project's tasks and adopts those whose ``(item_id, round)``
match a selection that lost its task id, and it records task ids chunk by chunk.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from alearn.exceptions import LabelStudioError, RoundError
from alearn.progress import progress as progress_bar
from alearn.rounds import metrics as round_metrics
from alearn.rounds.plan_record import unpushed_key
from alearn.store import Item, Meta, Round, Selection, Store
from labelstudio.client import LSClient
from labelstudio.label_config import choice_result
from labelstudio.overlap import push_overlaps
from labelstudio.urls import image_url

logger = logging.getLogger(__name__)

UNCERTAINTY_SAMPLING = "Uncertainty sampling"


@dataclass(frozen=True)
class PushSummary:
    """What a push did: tasks it created, and selections that already had one."""

    created: int
    already_present: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def model_version_of(rnd: Round) -> str:
    """The prediction version of a round (rounds without a model get a stand-in)."""
    return rnd.model_version or f"round{rnd.id}-{rnd.strategy}"


def task_payload(
    sel: Selection, item: Item, rnd: Round, *, image_base: str, model_version: str
) -> dict[str, Any]:
    """One task to import: data plus its prediction."""
    return {
        "data": {
            "image": image_url(image_base, item.path),
            "item_id": item.id,
            "round": rnd.id,
            "sha256": item.sha256,
        },
        "predictions": [
            {
                "model_version": model_version,
                "score": float(sel.score),
                "result": choice_result(sel.predicted) if sel.predicted else [],
            }
        ],
    }


def _project_id(store: Store) -> tuple[int, str]:
    pid, base = store.get_meta("ls_project_id"), store.get_meta("ls_image_url_base")
    if pid is None or base is None:
        raise RoundError(
            "there is no Label Studio project for this store yet. Set it up with 'alearn "
            "ls up' (a local server) or 'alearn round start' (its push step sets it up)."
        )
    return int(pid), str(base)


def _set_task(session: Session, selection_id: int, task_id: int) -> None:
    session.execute(
        update(Selection).where(Selection.id == selection_id).values(ls_task_id=task_id)
    )


def _first_push(store: Store, round_id: int) -> bool:
    """True if no push of the round has begun: its selections were recorded with the
    unpushed mark, which this takes away (committed before any import), so no task of
    the round can be in Label Studio yet. Once per round; a retried push looks."""
    with store.session() as s:
        mark = s.get(Meta, unpushed_key(round_id))
        if mark is None:
            return False
        s.delete(mark)
        return bool(mark.value)


def _adopt_existing(
    store: Store, client: LSClient, project_id: int, round_id: int
) -> int:
    """Give task ids to selections whose task exists in Label Studio but not in the store."""
    with store.session() as s:
        missing = {
            sel.item_id: sel.id
            for sel in s.scalars(
                select(Selection).where(
                    Selection.round_id == round_id, Selection.ls_task_id.is_(None)
                )
            )
        }
    if not missing:
        return 0
    found: dict[int, int] = {}
    # only this round's tasks: Label Studio filters them, the project may hold thousands
    for task in client.iter_tasks(project_id, data_equal={"round": round_id}):
        data = task["data"]
        if data.get("round") == round_id and data.get("item_id") in missing:
            found.setdefault(missing[data["item_id"]], task["id"])  # oldest task wins
    if found:
        with store.session() as s:
            for sel_id, task_id in found.items():
                _set_task(s, sel_id, task_id)
        logger.info(
            "push adopted existing tasks round_id=%s ls_project_id=%s n=%s",
            round_id, project_id, len(found),
        )
    return len(found)


def _restore_predictions(store: Store, client: LSClient, project_id: int, round_id: int,
                         version: str) -> int:
    """Give the round's tasks that lack a prediction of ``version`` the one push sends
    (score and predicted class from the selection). Returns how many it created."""
    with store.session() as s:
        sent = {task: (float(score), predicted) for task, score, predicted in s.execute(
            select(Selection.ls_task_id, Selection.score, Selection.predicted).where(
                Selection.round_id == round_id, Selection.ls_task_id.is_not(None)))
            if task is not None}
    bare = [t["id"] for t in client.iter_tasks(project_id, annotations=True,
                                                data_equal={"round": round_id})
            if t["id"] in sent and version not in t["prediction_versions"]]
    for task_id in bare:
        score, predicted = sent[task_id]
        client.create_prediction(task_id, score=score, model_version=version,
                                 result=choice_result(predicted) if predicted else [])
    if bare:
        logger.warning("push restored missing predictions round_id=%s ls_project_id=%s "
                       "model_version=%s tasks=%s", round_id, project_id, version, len(bare))
    return len(bare)


def push_round(
    store: Store, client: LSClient, round_id: int, *, chunk_size: int = 500,
    progress: bool = False,
) -> PushSummary:
    """Create the Label Studio tasks (with predictions) of a round's selection.

    Idempotent: selections that already have a task are left alone, and tasks created
    by an interrupted push are found and adopted, never created twice. Afterwards the
    project asks for ``round.overlap`` annotations per task (the round is the one source
    of truth for overlap: project set-up never sets ``maximum_annotations``) and serves
    tasks by uncertainty for this round's model version. ``progress`` shows a bar on
    stderr (tasks created, the rate and the time left). With adaptive votes
    (``round.overlap`` is then ``min_votes``), gold and audit tasks are asked for
    ``max_votes`` (:func:`labelstudio.overlap.push_overlaps`).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    project_id, image_base = _project_id(store)
    with store.session() as s:
        rnd = s.get(Round, round_id)
        if rnd is None:
            raise RoundError(f"round id {round_id} does not exist in the store.")
        total = int(s.scalar(
            select(func.count()).select_from(Selection).where(Selection.round_id == round_id)
        ) or 0)
    if total == 0:
        raise RoundError(f"round {rnd.number} has no selected items to push.")
    version = model_version_of(rnd)
    # before the import, so that new tasks are created with the round's overlap
    client.update_project(project_id, maximum_annotations=rnd.overlap)
    if not _first_push(store, round_id):  # an earlier push may have left tasks behind
        _adopt_existing(store, client, project_id, round_id)
    with store.session() as s:
        todo = s.execute(
            select(Selection, Item)
            .join(Item, Item.id == Selection.item_id)
            .where(Selection.round_id == round_id, Selection.ls_task_id.is_(None))
            .order_by(Selection.rank, Selection.id)
        ).all()
    created = 0
    with progress_bar(progress, len(todo), "push", "tasks") as advance:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            tasks = [
                task_payload(sel, item, rnd, image_base=image_base, model_version=version)
                for sel, item in chunk
            ]
            ids = client.import_tasks(project_id, tasks)
            with store.session() as s:
                for (sel, _item), task_id in zip(chunk, ids, strict=True):
                    _set_task(s, sel.id, task_id)
            created += len(ids)
            advance(len(ids))
            logger.info(
                "push chunk round_id=%s ls_project_id=%s model_version=%s tasks=%s",
                round_id, project_id, version, len(ids),
            )
    # adaptive votes: gold and audit tasks ask for max_votes (a retry asks the same again)
    push_overlaps(store, client, round_id)
    # only now: Label Studio accepts a model_version once predictions of it exist
    try:
        client.update_project(project_id, sampling=UNCERTAINTY_SAMPLING, model_version=version)
    except LabelStudioError:
        # an import that failed inside Label Studio (seen: 'database is locked' on its
        # SQLite under load) can leave the tasks without their predictions; then no
        # retry of the push could ever set the version. Put them back, then set it.
        if not _restore_predictions(store, client, project_id, round_id, version):
            raise
        client.update_project(project_id, sampling=UNCERTAINTY_SAMPLING, model_version=version)
    summary = PushSummary(created=created, already_present=total - created)
    logger.info(
        "push done round_id=%s ls_project_id=%s created=%s already_present=%s",
        round_id, project_id, summary.created, summary.already_present,
    )
    return summary


@dataclass(frozen=True)
class WithdrawSummary:
    """What withdrawing a round's open tasks did."""

    deleted: int
    locked: int
    complete: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def withdraw_round(store: Store, client: LSClient, round_id: int) -> WithdrawSummary:
    """Stop Label Studio serving a round's tasks (``alearn round abort``), keeping every
    vote already given: a task nobody labeled is deleted; a task with some votes but
    fewer than the round asked for (its overlap, or more for an item asked for more
    votes) is locked (its overlap set to the votes it has, and marked labeled).
    Idempotent.
    """
    project_id, _base = _project_id(store)
    with store.session() as s:
        rnd = s.get(Round, round_id)
        if rnd is None:
            raise RoundError(f"round id {round_id} does not exist in the store.")
        recorded = dict(s.execute(select(Selection.ls_task_id, Selection.item_id).where(
            Selection.round_id == round_id, Selection.ls_task_id.is_not(None))).all())
        asked = round_metrics.of(rnd).votes_asked
    deleted = locked = complete = 0
    for task in client.iter_tasks(project_id, annotations=True):
        if task["id"] not in recorded:
            continue
        votes = len(task["annotations"])
        if votes == 0:
            deleted += client.delete_task(task["id"])
        elif votes < asked.get(recorded[task["id"]], rnd.overlap):
            client.update_task(task["id"], overlap=votes, is_labeled=True)
            locked += 1
        else:
            complete += 1
    summary = WithdrawSummary(deleted=deleted, locked=locked, complete=complete)
    logger.info("round withdrawn round_id=%s ls_project_id=%s %s", round_id, project_id,
                summary.to_dict())
    return summary
