"""The operator's round commands that act on the queues: ``alearn round retry``,
``alearn round abort`` and ``alearn round close`` (which refuses a round with open tasks
unless ``--force``).

``alearn round start`` is :func:`workers.orchestrate.start_round`: a close may start
the next round too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from rq import Retry
from sqlalchemy import func, select

from alearn.exceptions import RoundError
from alearn.project import Project
from alearn.rounds import metrics as round_metrics
from alearn.rounds.lifecycle import (
    ABORTED,
    ACTIVE,
    COLLECTING,
    FAILED,
    PUSHED,
    active_round,
    get_round,
    record_event,
    reopen,
    resume_point,
    transition,
)
from alearn.store import Annotation, Round, Selection
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


def open_tasks(project: Project, round_id: int) -> int:
    """The round's pushed tasks that have fewer mirrored annotations than its overlap,
    or than the votes asked for them (adaptive votes, 'more_votes'): Label Studio still
    serves them."""
    with project.store.session() as s:
        rnd = s.get(Round, round_id)
        if rnd is None:
            raise RoundError(f"no round {round_id}")
        asked = round_metrics.of(rnd).votes_asked
        votes = (select(Annotation.ls_task_id, func.count().label("n"))
                 .where(Annotation.round_id == round_id)
                 .group_by(Annotation.ls_task_id).subquery())
        rows = s.execute(
            select(Selection.item_id, func.coalesce(votes.c.n, 0)).select_from(Selection)
            .outerjoin(votes, votes.c.ls_task_id == Selection.ls_task_id)
            .where(Selection.round_id == round_id, Selection.ls_task_id.is_not(None))).all()
    return sum(1 for item, n in rows if n < asked.get(int(item), rnd.overlap))


def close_now(project: Project, conn: Redis, round_id: int, *,
              force: bool = False) -> dict[str, Any]:
    """``alearn round close``: pull, close (or recompute a stale closed round) in this
    process, then what follows a close.

    A pushed or collecting round whose tasks do not all have their overlap is refused
    unless ``force``; with ``force`` it closes on the votes given, then its open tasks
    leave Label Studio as in ``alearn round abort`` (unlabeled ones removed, partly
    labeled ones locked), and the result says so under ``withdrawn``.
    """
    _when_free(lambda: jobs.pull_job(str(project.root)))
    rnd = get_round(project.store, round_id)
    n_open = open_tasks(project, round_id)
    if n_open and not force and rnd.status in (PUSHED, COLLECTING):
        raise RoundError(
            f"round {rnd.number} has {n_open} open tasks (fewer votes than asked for). "
            f"'alearn round close --round {rnd.number} --force' closes it on the votes given, "
            "removes its unlabeled tasks from Label Studio and locks its partly labeled "
            "ones; or wait for the votes.")
    closed = _when_free(lambda: jobs.close_job(str(project.root), round_id, force=True))
    if force and n_open and project.store.get_meta("ls_project_id") is not None:
        from labelstudio.client import connect_label_studio
        from labelstudio.push import withdraw_round

        with connect_label_studio(project.settings) as client:
            withdrawn = withdraw_round(project.store, client, round_id).to_dict()
        record_event(project.store, round_id, "force_closed", open=n_open, **withdrawn)
        closed["withdrawn"] = withdrawn
    nxt = follow_close(project, conn, round_id, closed)
    if nxt is not None:
        closed["next_round"] = nxt
    return closed


BUSY = ("a worker has been pulling or closing this round for {s:.0f} s; run 'alearn round "
        "close' again when 'alearn status' shows it done.")
#: how long ``round close`` waits for a worker's pull or close of the round to finish
#: (a step's lease is 20 s; a pull at a million items takes about 1 s)
BUSY_WAIT_S = 60.0


def _when_free(step: Callable[[], dict[str, Any] | Retry]) -> dict[str, Any]:
    """Run a pull or close step here, waiting while a worker holds the round's lock (the
    periodic tick pulls every 30 s, so an operator's close often meets one)."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        out = step()
        if not isinstance(out, Retry):
            return out
        if time.monotonic() > deadline:
            raise RoundError(BUSY.format(s=BUSY_WAIT_S))
        time.sleep(0.5)
