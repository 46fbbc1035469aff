"""RQ job functions. Each is thin: it takes a project directory and ids, loads the
project, holds its step's lease, makes one library call and returns its result.

What follows a job (close a full round, adjudication, the next round, a failed round)
is decided in :mod:`workers.orchestrate`, through RQ callbacks and the periodic tick;
this module imports nothing from it.

Jobs never receive live objects, so any worker on any host (sharing the project
directory and the database) can run them. A job that finds its step held by another
worker returns :data:`BUSY`, a :class:`rq.Retry`: RQ runs it again a little later, and
it never reports a success it did not earn (its dependents wait). A pull or a close first
waits up to :data:`VOTES_WAIT_S` for the votes lease: pulls and closes take about a
second and must run after the one holding it (votes may have come in since it listed
them), so a retry 5 s later would only hold up the round.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis
from rq import Retry, get_current_job

from alearn.config import Settings
from alearn.project import Project
from workers import queues

log = logging.getLogger(__name__)

#: Returned by a job whose step another worker holds: try again every 5 s, for 10 min.
BUSY = Retry(max=120, interval=5)
#: Pull and close share one lease: a close never reads votes that a pull is rewriting,
#: and a pull never mistakes a round that closed under it for an open one.
VOTES = "votes"
#: How long a pull or close waits for the votes lease before it is retried later.
VOTES_WAIT_S = 15.0


def _open(project_dir: str) -> Project:
    return Project.open(project_dir, Settings.load())


def document_root(project: Project) -> Any:
    """Label Studio's document root as this host sees it: ALEARN_LS_DOCUMENT_ROOT, else
    the served root of the project's local server (alearn ls up), else None (the image
    root's parent)."""
    from labelstudio.server_security import local_document_root

    return project.settings.ls_document_root or local_document_root(
        project.data_dir / "labelstudio")


def _report(**meta: Any) -> None:
    job = get_current_job()
    if job is not None:
        job.meta.update(meta)
        job.save_meta()


@contextmanager
def _step(project_dir: str, step: str, wait_s: float = 0.0,
          ) -> Iterator[tuple[Project, Redis] | None]:
    """Open the project and hold the step's lease; yields None when another worker
    holds it, still after ``wait_s`` seconds (the caller then returns :data:`BUSY`)."""
    project = _open(project_dir)
    conn = queues.connect(project.settings)
    key = f"{queues.project_key(str(project.root))}:{step}"
    job = get_current_job()
    with queues.job_lock(conn, key, job_id=job.id if job else None, wait_s=wait_s) as got:
        if not got:
            log.info("round_event=busy step=%s reason=held-by-another-worker", key)
        yield (project, conn) if got else None


def embed_job(project_dir: str, shard: int = 0, n_shards: int = 1) -> dict[str, Any] | Retry:
    """Embed the items of one shard that are not in the feature cache yet."""
    from alearn.features.pipeline import embed_project

    with _step(project_dir, f"embed:{shard}/{n_shards}") as held:
        if held is None:
            return BUSY
        project, _conn = held
        summary = embed_project(project, shard=(shard, n_shards), progress=False)
    _report(**summary.to_dict())
    return summary.to_dict()


def train_job(project_dir: str, round_id: int) -> dict[str, Any] | Retry:
    """Fit the head on the trusted labels so far."""
    from alearn.model.training import train_head

    with _step(project_dir, f"train:{round_id}") as held:
        if held is None:
            return BUSY
        project, _conn = held
        record = train_head(project, round_id=round_id)
    out = {"model_version": getattr(record, "version", None),
           "n_train": getattr(record, "n_train", 0),
           "cv_accuracy": getattr(record, "cv_accuracy", None)}
    _report(**out)
    return out


def select_job(project_dir: str, round_id: int,
               train_job_id: str | None = None) -> dict[str, Any] | Retry:
    """Score the pool and store the round's batch (idempotent).

    ``train_job_id``: the round's train job, whose ``model_version`` scores the pool;
    without one (a retry that resumes at select), the current head does.
    """
    from alearn.query.selection import plan_batch
    from alearn.rounds.lifecycle import get_round
    from alearn.rounds.plan_record import record_plan

    with _step(project_dir, f"select:{round_id}") as held:
        if held is None:
            return BUSY
        project, conn = held
        rnd = get_round(project.store, round_id)
        plan = plan_batch(project, batch_size=rnd.batch_size, strategy=rnd.strategy,
                          model_version=_trained_version(conn, train_job_id))
        n = record_plan(project.store, round_id, plan)
    _report(selected=n, strategy=plan.strategy)
    return {"selected": n, "strategy": plan.strategy, "model_version": plan.model_version}


def _trained_version(conn: Redis, train_job_id: str | None) -> str | None:
    """The ``model_version`` a finished train job returned (None: no job, no result, or
    no head)."""
    if train_job_id is None:
        return None
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    try:
        result = Job.fetch(train_job_id, connection=conn).return_value()
    except NoSuchJobError:
        return None
    return result.get("model_version") if isinstance(result, dict) else None


def push_job(project_dir: str, round_id: int) -> dict[str, Any] | Retry:
    """Create the round's tasks (with predictions) in Label Studio."""
    from labelstudio.client import connect_label_studio
    from labelstudio.projects import ensure_project
    from labelstudio.push import push_round

    with _step(project_dir, f"push:{round_id}") as held:
        if held is None:
            return BUSY
        project, _conn = held
        # no separate check of the server: the first call (the project) says the same
        with connect_label_studio(project.settings, check=False) as client:
            ensure_project(project.store, client, project.config, project.image_root,
                           document_root=document_root(project))
            # a bar on a worker run in a terminal; none in a log file or under a supervisor
            summary = push_round(project.store, client, round_id,
                                 progress=sys.stderr.isatty())
    out = summary.to_dict()
    _report(**out)
    return out


def pull_job(project_dir: str) -> dict[str, Any] | Retry:
    """Mirror Label Studio's annotations (main and adjudication projects)."""
    from alearn.team import reviewers
    from labelstudio.adjudication import pull_adjudications
    from labelstudio.client import connect_label_studio
    from labelstudio.overlap import adapt_votes
    from labelstudio.pull import pull_annotations

    with _step(project_dir, VOTES, VOTES_WAIT_S) as held:
        if held is None:
            return BUSY
        project, conn = held
        conn.delete(queues.pull_pending_key(str(project.root)))  # later events: a new pull
        with connect_label_studio(project.settings, check=False) as client:  # as push's
            summary = pull_annotations(project.store, client, classes=project.config.classes)
            out: dict[str, Any] = summary.to_dict()
            out["adjudication"] = pull_adjudications(
                project.store, client, project.config.classes,
                reviewers=reviewers(project.store, project.config.agreement.reviewers),
            ).to_dict()
            # adaptive votes: what the votes want now, asked before the round may close
            out["adaptive_votes"] = adapt_votes(project, client=client).to_dict()
    _report(**{k: v for k, v in out.items() if k not in ("adjudication", "adaptive_votes")})
    return out


def close_job(project_dir: str, round_id: int, force: bool = False) -> dict[str, Any] | Retry:
    """Close a round: agreement, consensus, metrics. A closed round that is stale (a
    vote changed after close) is recomputed.

    Unless ``force``, a round with adaptive votes whose votes want more than Label Studio
    was asked for asks for them first and stays open (``{"closed": False, ...}``); so
    does, with ``agreement.adjudication = 'more_votes'``, a round with unsettled items.
    """
    from alearn.rounds.close import close_round
    from alearn.rounds.lifecycle import is_stale

    with _step(project_dir, VOTES, VOTES_WAIT_S) as held:  # never while a pull writes votes
        if held is None:
            return BUSY
        project, _conn = held
        if not force:  # adaptive votes: the votes still wanted are asked first
            from labelstudio.overlap import adapt_votes

            adapted = adapt_votes(project, round_id)
            if adapted.asked:
                _report(waiting_for_votes=adapted.waiting)
                return {"closed": False, "waiting_for_votes": adapted.waiting}
        if project.config.agreement.adjudication == "more_votes" and not force:
            from labelstudio.adjudication import ask_for_more_votes
            from labelstudio.client import connect_label_studio

            with connect_label_studio(project.settings) as client:
                targets = ask_for_more_votes(project, client, round_id)
            if targets:
                _report(waiting_for_votes=len(targets))
                return {"closed": False, "waiting_for_votes": len(targets)}
        result = close_round(project, round_id,
                             recompute=bool(is_stale(project.store, round_id)))
    _report(closed=True)
    return {**result.to_json(), "closed": True}


def adjudication_push_job(project_dir: str, round_id: int) -> dict[str, Any] | Retry:
    """Send a closed round's unsettled items to the Label Studio adjudication project."""
    from alearn.rounds.label_review import review_queue
    from labelstudio.adjudication import ensure_adjudication_project, push_adjudication
    from labelstudio.client import connect_label_studio

    with _step(project_dir, f"adjudication-push:{round_id}") as held:
        if held is None:
            return BUSY
        project, _conn = held
        with connect_label_studio(project.settings) as client:
            ensure_adjudication_project(project.store, client, project.config,
                                        project.image_root, document_root=document_root(project))
            created = push_adjudication(project.store, client, round_id,
                                        classes=project.config.classes,
                                        review=review_queue(project, round_id))
    _report(created=created)
    return {"created": created}
