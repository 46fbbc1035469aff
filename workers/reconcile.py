"""The safety net: resume what died, from what the store says.

The periodic tick (:func:`workers.orchestrate.tick`) runs :func:`reconcile` under the
project's reconcile lease (:func:`reconcile_lease`; one reconcile at a time per project,
since two would both resume the same dead chain):

- a planned round whose job chain died (a worker killed, Redis flushed, a dependency
  failed or vanished) is resumed from its first unfinished step, read from the store;
  one whose chain failed for good is failed with the step and the reason;
- a pushed or collecting round gets a pull (which closes it when full), and a dead
  close job is replaced; a round has at most one close job;
- a closed round whose unsettled items never reached the adjudication project gets its
  adjudication push.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Iterator

from redis import Redis
from sqlalchemy import select

from alearn.exceptions import RoundError
from alearn.project import Project
from alearn.rounds import metrics as round_metrics
from alearn.rounds.lifecycle import (
    ACTIVE,
    CLOSED,
    COLLECTING,
    PLANNED,
    PUSHED,
    active_round,
    fail_round,
    resume_point,
    transition,
)
from alearn.store import Round
from alearn.team import reviewers
from workers import queues
from workers.enqueue import (
    close_job_id,
    enqueue_adjudication_push,
    enqueue_chain,
    enqueue_close,
    enqueue_pull,
)
from workers.liveness import START_GRACE_SECONDS, drop, failure_of, job_exists, job_state

log = logging.getLogger(__name__)


def reconcile(project: Project, conn: Redis) -> list[str]:
    """Resume what died: the active round's chain, its close, adjudication pushes.

    A planned round whose chain is dead restarts from its first unfinished step (each
    step is idempotent); one whose chain failed for good is failed with the reason. A
    pushed or collecting round gets a pull, which closes it when full; a dead close job
    is replaced. With no round open, a pull still runs (changes after close).
    """
    actions: list[str] = _reconcile_adjudication(project, conn)
    rnd = active_round(project.store)
    if rnd is None or rnd.status not in ACTIVE:
        # no round open: still pull, so that a vote edited, added or deleted in Label
        # Studio after its round closed is seen (the round is then marked stale)
        if project.store.get_meta("ls_project_id") is not None and enqueue_pull(
                project, conn, delay=0):
            actions.append("pull enqueued (no round open)")
        return actions
    status = rnd.status
    if status == PLANNED and rnd.job_id is None and _age_s(rnd) < START_GRACE_SECONDS * 4:
        return actions  # 'round start' is enqueueing its chain right now
    if status == PLANNED:
        state = job_state(conn, rnd.job_id)
        point = resume_point(project.store, rnd.id)
        if state == "failed":
            step, reason = failure_of(conn, rnd.job_id)
            fail_round(project.store, rnd.id, step, reason)
            actions.append(f"round {rnd.number}: failed at {step}: {reason}")
        elif point.status != PLANNED and state != "alive":
            transition(project.store, rnd.id, PUSHED)  # pushed, but the state lagged
            status = PUSHED
            actions.append(f"round {rnd.number}: its tasks are in Label Studio; pushed")
        elif state == "dead":
            drop(conn, rnd.job_id)
            enqueue_chain(project, conn, rnd.id, from_step=point.step)
            actions.append(f"round {rnd.number}: job {rnd.job_id} died; resumed at "
                           f"{point.step}")
    if status in (PUSHED, COLLECTING):
        close_id = close_job_id(project, rnd.id)
        if job_state(conn, close_id) == "dead" and job_exists(conn, close_id):
            drop(conn, close_id)
            enqueue_close(project, conn, rnd.id)
            actions.append(f"round {rnd.number}: close job died; close enqueued again")
        if enqueue_pull(project, conn, delay=0):
            actions.append(f"round {rnd.number}: pull enqueued")
    for action in actions:
        log.info("round_event=reconcile round=%s action=%r", rnd.id, action)
    return actions


def _age_s(rnd: Round) -> float:
    created = rnd.created_at.replace(tzinfo=dt.UTC) if rnd.created_at else None
    return (dt.datetime.now(dt.UTC) - created).total_seconds() if created else 1e9


def has_reviewers(project: Project) -> bool:
    """Whether anyone's adjudication decision would count (the roster's reviewers, and
    ``agreement.reviewers``)."""
    return bool(reviewers(project.store, project.config.agreement.reviewers))


def _reconcile_adjudication(project: Project, conn: Redis) -> list[str]:
    """Closed rounds whose unsettled items never reached the adjudication project."""
    if project.config.agreement.adjudication != "review" or not has_reviewers(project):
        return []
    actions = []
    with project.store.session() as s:
        rounds = s.scalars(select(Round).where(Round.status == CLOSED)).all()
    for rnd in rounds:
        m = round_metrics.of(rnd)
        if len(m.adjudication_items) > (m.adjudication.pushed if m.adjudication else 0):
            if enqueue_adjudication_push(project, conn, rnd.id):
                actions.append(f"round {rnd.number}: adjudication push enqueued")
    return actions


def reconcile_key(project: Project) -> str:
    """The name of the project's reconcile lease."""
    return f"{queues.project_key(str(project.root))}:reconcile"


@contextlib.contextmanager
def reconcile_lease(project: Project, conn: Redis, *, wait_s: float = 30.0) -> Iterator[None]:
    """Hold the project's reconcile lease (waiting for a running tick to finish)."""
    deadline = time.monotonic() + wait_s
    while True:
        with queues.job_lock(conn, reconcile_key(project)) as got:
            if got:
                yield
                return
        if time.monotonic() > deadline:
            raise RoundError("the workers' reconcile has been running for 30 s; try again "
                             "in a minute.")
        time.sleep(0.2)
