"""The operator's round commands that act on the queues: ``alearn round retry``,
``alearn round abort`` and ``alearn round close``.

``alearn round start`` is :func:`workers.orchestrate.start_round`: a close may start
the next round too.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Retry

from alearn.exceptions import RoundError
from alearn.project import Project
from alearn.rounds.lifecycle import (
    ABORTED,
    ACTIVE,
    FAILED,
    active_round,
    get_round,
    record_event,
    reopen,
    resume_point,
    transition,
)
from workers import jobs
from workers.enqueue import (
    CHAIN,
    close_job_id,
    enqueue_chain,
    enqueue_pull,
    ensure_tick,
    pull_debounce_key,
)
from workers.liveness import drop
from workers.orchestrate import follow_close
from workers.reconcile import reconcile_lease


def retry_round(project: Project, conn: Redis, round_id: int) -> str:
    """Resume a failed or stuck round from its first unfinished step; returns the step."""
    rnd = get_round(project.store, round_id)
    other = active_round(project.store)
    if other is not None and other.id != round_id:
        raise RoundError(f"round {other.number} is {other.status}; only one round may be "
                         f"active. End it with 'alearn round abort' before retrying round "
                         f"{rnd.number}.")
    with reconcile_lease(project, conn):  # a tick must not see it half reopened
        drop(conn, rnd.job_id)
        drop(conn, close_job_id(project, round_id))
        point = reopen(project.store, round_id)
        if point.step in CHAIN:
            enqueue_chain(project, conn, round_id, from_step=point.step)
        else:
            conn.delete(pull_debounce_key(project))
            enqueue_pull(project, conn, delay=0)
    ensure_tick(project, conn)
    return point.step


def abort_round(project: Project, conn: Redis, round_id: int) -> dict[str, Any]:
    """End a round for good: its jobs are dropped, its unlabeled tasks leave Label
    Studio (partly labeled ones are locked) and the votes already given are kept."""
    rnd = get_round(project.store, round_id)
    if rnd.status not in (*ACTIVE, FAILED):
        raise RoundError(f"round {rnd.number} is {rnd.status}; only an active or failed "
                         "round can be aborted.")
    drop(conn, rnd.job_id)
    drop(conn, close_job_id(project, round_id))
    withdrawn: dict[str, int] = {}
    if project.store.get_meta("ls_project_id") is not None and resume_point(
            project.store, round_id).step != "embed":
        from labelstudio.client import connect_label_studio
        from labelstudio.push import withdraw_round

        with connect_label_studio(project.settings) as client:
            withdrawn = withdraw_round(project.store, client, round_id).to_dict()
    transition(project.store, round_id, ABORTED)
    record_event(project.store, round_id, "aborted", **withdrawn)
    return withdrawn


def close_now(project: Project, conn: Redis, round_id: int) -> dict[str, Any]:
    """``alearn round close``: pull, close (or recompute a stale closed round) in this
    process, then what follows a close."""
    pulled = jobs.pull_job(str(project.root))
    closed = jobs.close_job(str(project.root), round_id, force=True)
    if isinstance(pulled, Retry) or isinstance(closed, Retry):
        raise RoundError("a worker is pulling or closing this round right now; run "
                         "'alearn round close' again in a few seconds.")
    nxt = follow_close(project, conn, round_id, closed)
    if nxt is not None:
        closed["next_round"] = nxt
    return closed
