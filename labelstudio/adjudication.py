"""The adjudication project in Label Studio, and more votes on the main project's tasks.

'review' mode (see :mod:`alearn.rounds.adjudication`): items whose consensus is a tie or
low-confidence go to a separate Label Studio project, ``"<title> - adjudication"``, with
one annotation per task. Its interface shows the image, the earlier votes as text
(``"cat: 2 (ann-a, ann-b), dog: 1 (ann-c)"``) and the class choices, with the same
names and hotkeys as the main project. Task data is ``{image, item_id, round,
votes_text}``. The store's ``meta`` remembers:

``ls_adjudication_project_id``       the project id
``ls_adjudication_image_url_base``   what its tasks' image URLs start with

:func:`pull_adjudications` reads every decision made there and hands it to
:func:`alearn.rounds.adjudication.apply_decisions`, which keeps the reviewers' decisions as
trusted labels and sets the others aside.

'more_votes' mode: :func:`request_more_votes` raises the overlap of single tasks of the
main project, so that Label Studio serves them to more annotators.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from alearn.config import ProjectConfig
from alearn.exceptions import ConfigError, RoundError
from alearn.project import Project
from alearn.rounds.adjudication import (
    AdjudicationSummary,
    Decision,
    adjudication_queue,
    apply_decisions,
    more_votes_targets,
    record_more_votes,
    set_pushed,
)
from alearn.store import Selection, Store
from alearn.team import reviewers
from labelstudio.client import LSClient
from labelstudio.convert import annotator_of, chosen_labels, parse_time
from labelstudio.label_config import label_config
from labelstudio.projects import ensure_storage, project_title, upsert_project
from labelstudio.urls import image_url, image_url_base, storage_path

logger = logging.getLogger(__name__)

META_PROJECT = "ls_adjudication_project_id"
META_IMAGE_BASE = "ls_adjudication_image_url_base"
#: Adjudication task id -> [item id, round id], for every task alearn created: decisions
#: on any other task do not count.
META_TASKS = "ls_adjudication_tasks"
VOTES_NAME = "votes"


def adjudication_label_config(classes: Sequence[str]) -> str:
    """Label Studio XML: the image, the earlier votes, and one Choice per class."""
    return label_config(classes, between=[
        '  <Header value="Earlier votes"/>',
        f'  <Text name="{VOTES_NAME}" value="$votes_text"/>',
        '  <Header value="Your decision"/>',
    ])


def adjudication_title(cfg: ProjectConfig) -> str:
    return f"{project_title(cfg)} - adjudication"


def ensure_adjudication_project(
    store: Store,
    client: LSClient,
    cfg: ProjectConfig,
    image_root: Path | str,
    *,
    document_root: Path | str | None = None,
) -> int:
    """Create or update the adjudication project; return its id. Safe to call again.

    One decision per task (``maximum_annotations=1``); reviewers may see the
    predictions, since agreement is not measured there.
    """
    if not reviewers(store, cfg.agreement.reviewers):
        raise ConfigError(
            "agreement.adjudication is 'review' but the project has no reviewer, so no "
            "decision could count. Add one with 'alearn ls users add NAME --role "
            "reviewer' (or list emails in agreement.reviewers), or set "
            "agreement.adjudication to 'more_votes'.")
    fields = {
        "title": adjudication_title(cfg),
        "label_config": adjudication_label_config(cfg.classes),
        "maximum_annotations": 1,
        "show_collab_predictions": True,
    }
    base = image_url_base(
        image_root, prefix=cfg.labelstudio.image_url_prefix, document_root=document_root
    )
    project_id = upsert_project(store, client, META_PROJECT, fields,
                                what="adjudication project")
    store.set_meta(META_IMAGE_BASE, base)
    if not cfg.labelstudio.image_url_prefix:
        ensure_storage(client, project_id, storage_path(image_root, document_root))
    return project_id


def _project(store: Store) -> tuple[int, str]:
    pid, base = store.get_meta(META_PROJECT), store.get_meta(META_IMAGE_BASE)
    if pid is None or base is None:
        raise RoundError(
            "there is no Label Studio adjudication project for this store yet. It is set "
            "up when a round closes with agreement.adjudication = 'review' and a reviewer "
            "on the team ('alearn ls users add NAME --role reviewer', 'alearn round close')."
        )
    return int(pid), str(base)


def push_adjudication(
    store: Store, client: LSClient, round_id: int, *, classes: Sequence[str] | None = None,
    review: Sequence[dict[str, Any]] = (),
) -> int:
    """Create adjudication tasks for the round's unsettled items, and for ``review``
    (its label-review items, :func:`alearn.rounds.label_review.review_queue`); return how
    many. Idempotent: items that already have a task for this round are skipped.
    """
    project_id, base = _project(store)
    classes = list(classes if classes is not None else store.get_meta("ls_classes") or [])
    queue = adjudication_queue(store, round_id, classes) + list(review)
    created = dict(store.get_meta(META_TASKS) or {})
    present = {
        int(t["data"]["item_id"]): int(t["id"])
        for t in client.iter_tasks(project_id)
        if t["data"].get("round") == round_id and t["data"].get("item_id") is not None
        and (str(t["id"]) in created or t["data"]["item_id"] in {q["item_id"] for q in queue})
    }
    for item, task_id in present.items():  # an interrupted push's tasks are adopted
        created.setdefault(str(task_id), [item, round_id])
    store.set_meta(META_TASKS, created)
    todo = [q for q in queue if q["item_id"] not in present]
    if todo:
        ids = client.import_tasks(project_id, [
            {"data": {"image": image_url(base, q["path"]), "item_id": q["item_id"],
                      "round": round_id, "votes_text": q["votes_text"]}}
            for q in todo
        ])
        created.update({str(t): [q["item_id"], round_id] for t, q in zip(ids, todo,
                                                                         strict=True)})
        store.set_meta(META_TASKS, created)
    set_pushed(store, round_id, len((set(present) | {q["item_id"] for q in todo})
                                    - {q["item_id"] for q in review}))  # adjudication only
    logger.info("adjudication push round_id=%s ls_project_id=%s created=%s already=%s",
                round_id, project_id, len(todo), len(present))
    return len(todo)


def decision_of(ls_annotation: dict[str, Any], task: dict[str, Any],
                users: dict[int, str]) -> Decision:
    """A :class:`~alearn.rounds.adjudication.Decision` from one annotation of an adjudication task.

    Raises ValueError for an annotation that cannot be attributed.
    """
    data = task.get("data") or {}
    if ls_annotation.get("id") is None or data.get("item_id") is None:
        raise ValueError(f"task {task.get('id')}: annotation or item id missing")
    try:
        labels = tuple(chosen_labels(ls_annotation.get("result")))
    except ValueError:
        labels = ()
    rnd = data.get("round")
    return Decision(
        ls_annotation_id=int(ls_annotation["id"]), ls_task_id=int(task["id"]),
        item_id=int(data["item_id"]), round_id=None if rnd is None else int(rnd),
        reviewer=annotator_of(ls_annotation, users), labels=labels,
        cancelled=bool(ls_annotation.get("was_cancelled")),
        updated_at=parse_time(ls_annotation.get("updated_at") or ls_annotation.get("created_at")),
    )


def pull_adjudications(
    store: Store, client: LSClient, classes: Sequence[str], *,
    reviewers: Sequence[str] | set[str] = (),
) -> AdjudicationSummary:
    """Mirror the adjudication project's decisions into trusted labels.

    Cheap when there is no adjudication project: nothing is asked of Label Studio.
    """
    if store.get_meta(META_PROJECT) is None:
        return AdjudicationSummary()
    project_id = int(store.get_meta(META_PROJECT))
    users = client.user_emails()
    decisions: list[Decision] = []
    tasks: set[tuple[int, int | None]] = set()
    created = {int(t): (int(i), r) for t, (i, r) in (store.get_meta(META_TASKS) or {}).items()}
    for task in client.iter_tasks(project_id, annotations=True):
        data = task["data"]
        try:
            item = int(data["item_id"])
            rnd = None if data.get("round") is None else int(data["round"])
        except (KeyError, TypeError, ValueError):
            logger.warning("adjudication pull ignored task %s: no item id", task["id"])
            continue
        if created.get(int(task["id"])) != (item, rnd):  # only tasks alearn created count
            if task["annotations"]:
                logger.warning("adjudication pull set aside %s decisions on task %s: alearn "
                               "did not create it", len(task["annotations"]), task["id"])
            continue
        tasks.add((item, rnd))
        for ann in task["annotations"]:
            try:
                decisions.append(decision_of(ann, task, users))
            except (ValueError, TypeError, KeyError) as exc:
                logger.warning("adjudication pull skipped an annotation of task %s: %s",
                               task["id"], exc)
    return apply_decisions(store, decisions, tasks=tasks, classes=classes,
                           reviewers=list(reviewers))


def ask_for_more_votes(project: Project, client: LSClient, round_id: int) -> dict[int, int]:
    """'more_votes' mode, before a round closes: ask Label Studio for more annotators on
    the round's unsettled items and record it; return the targets (empty: close now)."""
    targets = more_votes_targets(project, round_id)
    if targets:
        request_more_votes(project.store, client, targets, round_id)
        record_more_votes(project.store, round_id, targets)
    return targets


def request_more_votes(store: Store, client: LSClient, targets: dict[int, int],
                       round_id: int) -> int:
    """Raise the overlap of the round's tasks of ``targets`` (item id -> annotations) in
    the main project, so Label Studio serves them again; return the tasks changed.

    Idempotent. Label Studio resets every task's overlap when the project's
    ``maximum_annotations`` changes, which only a push of a later round does (project
    set-up, :mod:`labelstudio.projects`, never changes it).
    """
    if not targets:
        return 0
    with store.session() as s:
        rows = s.execute(select(Selection.item_id, Selection.ls_task_id).where(
            Selection.round_id == round_id, Selection.item_id.in_(list(targets)))).all()
    changed = 0
    for item, task_id in rows:
        if task_id is None:
            continue
        client.update_task(task_id, overlap=int(targets[int(item)]), is_labeled=False)
        changed += 1
    logger.info("more votes requested round_id=%s tasks=%s", round_id, changed)
    return changed
