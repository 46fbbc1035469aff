"""The round lifecycle on a real Redis and a real store: failed and aborted rounds,
resume points, leases that outlive slow steps, the slot-keyed tick, one close job per
round, dead chains resumed, dead schedulers taken over. The whole loop with killed
worker processes and a real Label Studio is scripts/fault_suite.py (test_fault_suite)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from factories import ingested_project
from redis import Redis
from rq import SimpleWorker
from rq.job import Job, JobStatus
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler

from alearn.exceptions import RoundError
from alearn.project import Project
from alearn.rounds.lifecycle import (
    ABORTED,
    CLOSED,
    FAILED,
    PLANNED,
    PUSHED,
    fail_round,
    get_round,
    is_stale,
    record_event,
    reopen,
    resume_point,
    round_events,
    transition,
)
from alearn.store import Selection
from workers import commands, queues
from workers.enqueue import close_job_id, enqueue_close, ensure_tick, tick_job_id
from workers.orchestrate import follow_close, start_round, step_failed
from workers.reconcile import reconcile


@pytest.fixture
def pool_proj(tmp_path: Path, redis_conn: Redis) -> Project:
    return ingested_project(tmp_path, 12, seed=300, classes=["a", "b", "c"], batch_size=4)


def _select(project: Project, round_id: int, n: int = 3, pushed: bool = False) -> None:
    ids = project.store.item_ids()[:n]
    with project.store.session() as s:
        for rank, item in enumerate(ids):
            s.add(Selection(round_id=round_id, item_id=item, rank=rank, score=0.1,
                            ls_task_id=100 + rank if pushed else None))


# -- the state machine -----------------------------------------------------------------
def test_a_failed_round_names_its_step_and_resumes_where_its_facts_say(
        pool_proj: Project, redis_conn: Redis) -> None:
    rnd = start_round(pool_proj, redis_conn)
    assert resume_point(pool_proj.store, rnd.id).step == "embed"
    assert fail_round(pool_proj.store, rnd.id, "select", "ValueError: bad cache")
    got = get_round(pool_proj.store, rnd.id)
    assert (got.status, got.error) == (FAILED, "select: ValueError: bad cache")
    assert not fail_round(pool_proj.store, rnd.id, "push", "late duplicate")  # not active
    _select(pool_proj, rnd.id, pushed=False)
    assert resume_point(pool_proj.store, rnd.id).step == "push"
    point = reopen(pool_proj.store, rnd.id)
    assert (point.status, point.step) == (PLANNED, "push")
    assert [e["kind"] for e in round_events(pool_proj.store, rnd.id)] == ["failed", "retried"]
    with pytest.raises(RoundError, match="only one round may be active.*round abort"):
        start_round(pool_proj, redis_conn)


def test_a_round_pushed_in_full_resumes_at_pull(pool_proj: Project, redis_conn: Redis) -> None:
    rnd = start_round(pool_proj, redis_conn)
    _select(pool_proj, rnd.id, pushed=True)
    assert resume_point(pool_proj.store, rnd.id).status == PUSHED
    fail_round(pool_proj.store, rnd.id, "push", "x")
    assert reopen(pool_proj.store, rnd.id).step == "pull"
    assert get_round(pool_proj.store, rnd.id).status == PUSHED


def test_aborted_and_closed_rounds_are_final(pool_proj: Project, redis_conn: Redis) -> None:
    rnd = start_round(pool_proj, redis_conn)
    transition(pool_proj.store, rnd.id, ABORTED)
    with pytest.raises(RoundError, match="cannot go from aborted"):
        transition(pool_proj.store, rnd.id, PLANNED)
    with pytest.raises(RoundError, match="only a failed or stuck round"):
        reopen(pool_proj.store, rnd.id)


def test_stale_until_recomputed(pool_proj: Project, redis_conn: Redis) -> None:
    rnd = start_round(pool_proj, redis_conn)
    assert is_stale(pool_proj.store, rnd.id) == []
    record_event(pool_proj.store, rnd.id, "stale", changes=[{"change": "edited"}])
    assert len(is_stale(pool_proj.store, rnd.id)) == 1
    record_event(pool_proj.store, rnd.id, "recomputed")
    assert is_stale(pool_proj.store, rnd.id) == []


# -- leases ----------------------------------------------------------------------------
def test_a_lease_outlives_its_ttl_while_renewed_and_lapses_when_its_holder_dies(
        redis_conn: Redis) -> None:
    lease = queues.Lease(redis_conn, "t:slow", ttl=2, job_id="job-1")
    assert lease.acquire()
    time.sleep(3.5)  # past the TTL: renewal kept it
    assert not queues.Lease(redis_conn, "t:slow", ttl=2).acquire()
    assert queues.job_is_running(redis_conn, "job-1")
    lease._stop.set()  # the holder dies: nothing renews it any more
    lease._thread.join()
    time.sleep(2.5)
    other = queues.Lease(redis_conn, "t:slow", ttl=2)
    assert other.acquire()
    assert not queues.job_is_running(redis_conn, "job-1")
    other.release()


def test_a_running_job_on_this_host_is_dead_once_its_process_is(redis_conn: Redis) -> None:
    import subprocess

    p = subprocess.Popen(["sleep", "30"])
    redis_conn.set(queues.alive_key("j"), f"{queues._HOST}:{p.pid}", ex=60)
    assert queues.job_is_running(redis_conn, "j")
    p.kill()
    p.wait()
    assert not queues.job_is_running(redis_conn, "j")


def test_a_dead_scheduler_lock_is_taken_over_and_a_live_one_is_not(redis_conn: Redis) -> None:
    from rq.utils import now, utcformat

    key = RQScheduler.get_locking_key("q1")
    redis_conn.set(key, "dead-one")
    redis_conn.hset(SCHEDULER_KEY_TEMPLATE % "dead-one",
                    mapping={"last_heartbeat": utcformat(now()), "hostname": "elsewhere",
                             "pid": "1"})
    assert queues.take_over_dead_schedulers(redis_conn, ["q1"]) == []  # beating: alive
    redis_conn.hset(SCHEDULER_KEY_TEMPLATE % "dead-one", "last_heartbeat",
                    utcformat(now().replace(year=2000)))
    assert queues.take_over_dead_schedulers(redis_conn, ["q1"]) == ["q1"]
    assert redis_conn.get(key) is None


# -- the tick and the close ------------------------------------------------------------
def test_one_tick_per_slot_whoever_arms_it(pool_proj: Project, redis_conn: Redis) -> None:
    pool_proj.config.rounds.tick_seconds = 5
    armed = [ensure_tick(pool_proj, redis_conn) for _ in range(5)]
    assert armed.count(True) <= 2  # a second only if the slot turned meanwhile
    slot = int(time.time() // 5) + 1
    job = Job.fetch(tick_job_id(pool_proj, slot), connection=redis_conn)
    assert job.get_status() == JobStatus.SCHEDULED


def test_a_round_has_one_close_job_however_many_pulls(pool_proj: Project,
                                                      redis_conn: Redis) -> None:
    rnd = start_round(pool_proj, redis_conn)
    first = enqueue_close(pool_proj, redis_conn, rnd.id)
    assert first is not None and first.id == close_job_id(pool_proj, rnd.id)
    assert all(enqueue_close(pool_proj, redis_conn, rnd.id) is None for _ in range(5))
    q = queues.get_queue(redis_conn, pool_proj.settings, "round")
    assert q.job_ids.count(first.id) == 1


def test_auto_next_follows_only_the_latest_round(pool_proj: Project, redis_conn: Redis) -> None:
    pool_proj.config.rounds.auto_next = True
    old = start_round(pool_proj, redis_conn)
    _select(pool_proj, old.id, pushed=True)
    transition(pool_proj.store, old.id, PUSHED)
    transition(pool_proj.store, old.id, CLOSED)
    newer = start_round(pool_proj, redis_conn)
    _select(pool_proj, newer.id, pushed=True)
    transition(pool_proj.store, newer.id, PUSHED)
    transition(pool_proj.store, newer.id, CLOSED)
    # closing (again) an older round never starts a round
    assert follow_close(pool_proj, redis_conn, old.id, {"closed": True}) is None
    assert follow_close(pool_proj, redis_conn, newer.id, {"closed": True}) == newer.number + 1


# -- reconcile -------------------------------------------------------------------------
def test_reconcile_resumes_a_chain_whose_worker_died_mid_step(
        pool_proj: Project, redis_conn: Redis) -> None:
    rnd = start_round(pool_proj, redis_conn)
    q = queues.get_queue(redis_conn, pool_proj.settings, "embed")
    (embed_id,) = q.job_ids
    embed = Job.fetch(embed_id, connection=redis_conn)
    # a worker took the job, then was SIGKILLed: STARTED, and nobody renews its lease
    embed.set_status(JobStatus.STARTED)
    embed.started_at = embed.started_at or __import__("datetime").datetime(2000, 1, 1)
    embed.save()
    q.remove(embed_id)
    actions = reconcile(pool_proj, redis_conn)
    assert actions == [f"round {rnd.number}: job {rnd.job_id} died; resumed at embed"]
    assert not Job.exists(embed_id, connection=redis_conn)  # the dead chain is dropped
    SimpleWorker([queues.get_queue(redis_conn, pool_proj.settings, n) for n in
                  ("embed", "train")], connection=redis_conn).work(burst=True)
    assert resume_point(pool_proj.store, rnd.id).step == "push"
    assert reconcile(pool_proj, redis_conn) == []  # the new chain is alive: left alone


def test_a_chain_whose_step_failed_for_good_fails_the_round(
        pool_proj: Project, redis_conn: Redis) -> None:
    rnd = start_round(pool_proj, redis_conn)
    (embed_id,) = queues.get_queue(redis_conn, pool_proj.settings, "embed").job_ids
    embed = Job.fetch(embed_id, connection=redis_conn)
    embed.retries_left = 0
    step_failed(embed, redis_conn, OSError, OSError("disk full"), None)
    got = get_round(pool_proj.store, rnd.id)
    assert (got.status, got.error) == (FAILED, "embed: OSError: disk full")


def test_retries_left_do_not_fail_the_round(pool_proj: Project, redis_conn: Redis) -> None:
    rnd = start_round(pool_proj, redis_conn)
    (embed_id,) = queues.get_queue(redis_conn, pool_proj.settings, "embed").job_ids
    embed = Job.fetch(embed_id, connection=redis_conn)
    step_failed(embed, redis_conn, OSError, OSError("blip"), None)
    assert get_round(pool_proj.store, rnd.id).status == PLANNED


def test_retry_and_abort_from_the_orchestrator(pool_proj: Project, redis_conn: Redis) -> None:
    rnd = start_round(pool_proj, redis_conn)
    fail_round(pool_proj.store, rnd.id, "train", "boom")
    assert commands.retry_round(pool_proj, redis_conn, rnd.id) == "embed"
    assert get_round(pool_proj.store, rnd.id).status == PLANNED
    assert commands.abort_round(pool_proj, redis_conn, rnd.id) == {}  # nothing was pushed
    assert get_round(pool_proj.store, rnd.id).status == ABORTED
    assert start_round(pool_proj, redis_conn).number == rnd.number + 1
