"""Is a job alive? What it means for a chain of jobs, and dropping the dead ones.

A job is 'alive' while it is queued, scheduled or running on a live worker (its lease
is renewed, see :func:`workers.queues.job_is_running`); 'done' once finished; 'failed'
when it or a job it depends on failed; 'dead' when it vanished (Redis flushed) or its
worker died. The reconciler (:mod:`workers.reconcile`) acts on these states.
"""

from __future__ import annotations

import time

from redis import Redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from workers import queues

#: A started job whose lease has not appeared after this long is dead.
START_GRACE_SECONDS = 15


def job_state(conn: Redis, job_id: str | None) -> str:
    """'done', 'alive', 'dead' (vanished, or its worker died) or 'failed' for a job and
    everything it depends on."""
    if not job_id:
        return "dead"
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return "dead"
    status = job.get_status(refresh=True)
    if status == JobStatus.FINISHED:
        return "done"
    if status in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.CREATED):
        return "alive"
    if status == JobStatus.STARTED:
        if queues.job_is_running(conn, job.id):
            return "alive"
        started = job.started_at.timestamp() if job.started_at else 0.0
        return "alive" if time.time() - started < START_GRACE_SECONDS else "dead"
    if status == JobStatus.DEFERRED:
        states = [job_state(conn, dep) for dep in job.dependency_ids]
        if "failed" in states:
            return "failed"
        return "dead" if "dead" in states else "alive"
    return "failed" if status == JobStatus.FAILED else "dead"


def failure_of(conn: Redis, job_id: str | None) -> tuple[str, str]:
    """(step, reason) of the failed job in a chain."""
    try:
        job = Job.fetch(job_id or "", connection=conn)
    except NoSuchJobError:
        return "unknown", "its job vanished"
    if job.get_status(refresh=True) == JobStatus.FAILED:
        result = job.latest_result()
        lines = ((result.exc_string if result else "") or "").strip().splitlines()
        return str(job.meta.get("step", "unknown")), (lines[-1] if lines else "failed")
    for dep in job.dependency_ids:
        if job_state(conn, dep) == "failed":
            return failure_of(conn, dep)
    return str(job.meta.get("step", "unknown")), "failed"


def drop(conn: Redis, job_id: str | None) -> None:
    """Delete a dead job and what depends on it (its worker is gone; RQ would otherwise
    retry it minutes later, after the work was done again)."""
    if not job_id:
        return
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return
    deps = [d for d in job.dependency_ids if job_state(conn, d) != "done"]
    try:
        job.delete(remove_from_queue=True, delete_dependents=True)
    except (NoSuchJobError, InvalidJobOperation):
        pass  # already deleted as the dependent of another
    for dep in deps:
        drop(conn, dep)


def job_exists(conn: Redis, job_id: str) -> bool:
    return bool(Job.exists(job_id, connection=conn))
