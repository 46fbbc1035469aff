"""RQ job functions. Each is thin: it takes a project directory and ids, loads the
project, calls one library function under a lock, and reports progress in ``job.meta``.

Jobs never receive live objects, so any worker on any host (sharing the project
directory and the database) can run them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis
from rq import get_current_job

from alearn.config import Settings
from alearn.project import Project
from alearn.rounds import COLLECTING, PUSHED, active_round, round_progress, transition
from workers import queues

log = logging.getLogger(__name__)


def _open(project_dir: str) -> Project:
    return Project.open(project_dir, Settings())


def _report(**meta: Any) -> None:
    job = get_current_job()
    if job is not None:
        job.meta.update(meta)
        job.save_meta()


@contextmanager
def _step(project_dir: str, step: str) -> Iterator[tuple[Project, Redis] | None]:
    """Open the project and hold the step's lock; yields None when another worker
    holds it (the caller then returns :func:`_skipped`)."""
    project = _open(project_dir)
    conn = queues.connect(project.settings)
    key = f"{queues.project_key(str(project.root))}:{step}"
    with queues.job_lock(conn, key) as got:
        if not got:
            log.info("round_event=skipped step=%s reason=held-by-another-worker", key)
        yield (project, conn) if got else None


def _skipped(step: str) -> dict[str, Any]:
    return {"skipped": True, "reason": f"another worker is running {step}"}


def embed_job(project_dir: str, shard: int = 0, n_shards: int = 1) -> dict[str, Any]:
    """Embed the items of one shard that are not in the feature cache yet."""
    from alearn.features import embed_project

    with _step(project_dir, f"embed:{shard}/{n_shards}") as held:
        if held is None:
            return _skipped("embed")
        project, conn = held
        summary = embed_project(project, shard=(shard, n_shards), progress=False)
    _report(**summary.to_dict())
    return summary.to_dict()


def train_job(project_dir: str, round_id: int) -> dict[str, Any]:
    """Fit the head on the trusted labels so far."""
    from alearn.training import train_head

    with _step(project_dir, f"train:{round_id}") as held:
        if held is None:
            return _skipped("train")
        project, conn = held
        record = train_head(project, round_id=round_id)
    out = {"model_version": getattr(record, "version", None),
           "n_train": getattr(record, "n_train", 0),
           "cv_accuracy": getattr(record, "cv_accuracy", None)}
    _report(**out)
    return out


def select_job(project_dir: str, round_id: int) -> dict[str, Any]:
    """Score the pool and store the round's batch (idempotent)."""
    from alearn.rounds import get_round, record_plan
    from alearn.selection import plan_batch

    with _step(project_dir, f"select:{round_id}") as held:
        if held is None:
            return _skipped("select")
        project, conn = held
        rnd = get_round(project.store, round_id)
        # the head trained by train_job is found again by its training-set hash
        plan = plan_batch(project, batch_size=rnd.batch_size, strategy=rnd.strategy)
        n = record_plan(project.store, round_id, plan)
    _report(selected=n, strategy=plan.strategy)
    return {"selected": n, "strategy": plan.strategy, "model_version": plan.model_version}


def push_job(project_dir: str, round_id: int) -> dict[str, Any]:
    """Create the round's tasks (with predictions) in Label Studio."""
    from labelstudio.client import connect_label_studio, ensure_project
    from labelstudio.push import push_round

    with _step(project_dir, f"push:{round_id}") as held:
        if held is None:
            return _skipped("push")
        project, conn = held
        client = connect_label_studio(project.settings)
        ensure_project(project.store, client, project.config, project.image_root,
                       document_root=project.settings.ls_document_root)
        summary = push_round(project.store, client, round_id)
        transition(project.store, round_id, PUSHED)
    out = summary.to_dict()
    _report(**out)
    return out


def pull_job(project_dir: str) -> dict[str, Any]:
    """Mirror Label Studio's annotations; close the active round once it is complete."""
    from labelstudio.adjudication import pull_adjudications
    from labelstudio.client import connect_label_studio
    from labelstudio.pull import pull_annotations

    with _step(project_dir, "pull") as held:
        if held is None:
            return _skipped("pull")
        project, conn = held
        client = connect_label_studio(project.settings)
        summary = pull_annotations(project.store, client, classes=project.config.classes)
        out: dict[str, Any] = summary.to_dict()
        out["adjudication"] = pull_adjudications(
            project.store, client, project.config.classes,
            reviewers=project.config.agreement.reviewers).to_dict()
        rnd = active_round(project.store)
        if rnd is not None and rnd.status in (PUSHED, COLLECTING):
            progress = round_progress(project.store, rnd.id)
            if progress.annotations and rnd.status == PUSHED:
                transition(project.store, rnd.id, COLLECTING)
            out["round"] = progress.to_dict()
            if progress.complete:
                from workers.orchestrate import enqueue_close

                enqueue_close(project, conn, rnd.id)
    _report(**{k: v for k, v in out.items() if k not in ("round", "adjudication")})
    return out


def close_job(project_dir: str, round_id: int, force: bool = False) -> dict[str, Any]:
    """Close a round: agreement, consensus, metrics; maybe start the next one.

    With ``agreement.adjudication = 'more_votes'`` (and not ``force``), a round with
    unsettled items first asks Label Studio for more votes on them and stays open.
    With 'review', unsettled items are then pushed to the adjudication project.
    """
    from alearn.closing import close_round

    with _step(project_dir, f"close:{round_id}") as held:
        if held is None:
            return _skipped("close")
        project, conn = held
        mode = project.config.agreement.adjudication
        if mode == "more_votes" and not force:
            from labelstudio.adjudication import ask_for_more_votes
            from labelstudio.client import connect_label_studio

            client = connect_label_studio(project.settings)
            targets = ask_for_more_votes(project, client, round_id)
            if targets:
                _report(waiting_for_votes=len(targets))
                return {"closed": False, "waiting_for_votes": len(targets)}
        result = close_round(project, round_id)
    _report(closed=True)
    if mode == "review" and result.get("adjudication_items"):
        from workers.orchestrate import enqueue_adjudication_push

        enqueue_adjudication_push(project, conn, round_id)
    if project.config.rounds.auto_next and not result.get("converged", False):
        from workers.orchestrate import start_round

        nxt = start_round(project, conn)
        result["next_round"] = nxt.number
    return result


def adjudication_push_job(project_dir: str, round_id: int) -> dict[str, Any]:
    """Send a closed round's unsettled items to the Label Studio adjudication project."""
    from labelstudio.adjudication import ensure_adjudication_project, push_adjudication
    from labelstudio.client import connect_label_studio

    with _step(project_dir, f"adjudication-push:{round_id}") as held:
        if held is None:
            return _skipped("adjudication push")
        project, conn = held
        client = connect_label_studio(project.settings)
        ensure_adjudication_project(project.store, client, project.config, project.image_root,
                                    document_root=project.settings.ls_document_root)
        created = push_adjudication(project.store, client, round_id,
                                    classes=project.config.classes)
    _report(created=created)
    return {"created": created}


def tick_job(project_dir: str) -> dict[str, Any]:
    """The periodic safety net: reconcile vanished jobs, then pull."""
    from workers.orchestrate import ensure_tick, reconcile

    project = _open(project_dir)
    conn = queues.connect(project.settings)
    actions = reconcile(project, conn)
    if active_round(project.store) is not None:
        ensure_tick(project, conn)
    return {"reconciled": actions}
