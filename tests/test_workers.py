"""Round orchestration on a real Redis with real RQ workers (SimpleWorker, burst)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from factories import ingested_project
from redis import Redis
from rq import Retry, SimpleWorker
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select

from alearn.config import Settings
from alearn.exceptions import AlearnError, RoundError
from alearn.project import Project
from alearn.rounds.lifecycle import PLANNED, get_round
from alearn.store import Label, ModelRecord, Selection
from workers import jobs, queues
from workers.enqueue import enqueue_pull
from workers.orchestrate import start_round
from workers.reconcile import reconcile


@pytest.fixture
def pool_project(tmp_path: Path, redis_conn: Redis) -> Project:
    return ingested_project(tmp_path, 24, seed=100, classes=["a", "b", "c"], batch_size=5)


def work(conn: Redis, settings: Settings, *names: str) -> None:
    qs = [queues.get_queue(conn, settings, n) for n in names]
    SimpleWorker(qs, connection=conn).work(burst=True)


def test_round_start_runs_embed_train_select_on_workers(pool_project: Project,
                                                        redis_conn: Redis) -> None:
    settings = Settings()
    rnd = start_round(pool_project, redis_conn)
    assert rnd.status == PLANNED
    with pytest.raises(RoundError, match="only one round may be active"):
        start_round(pool_project, redis_conn)
    work(redis_conn, settings, "embed", "train")
    with pool_project.store.session() as s:
        chosen = [sel.item_id for sel in s.query(Selection).filter_by(round_id=rnd.id)]
    assert len(chosen) == 5 and len(set(chosen)) == 5
    got = get_round(pool_project.store, rnd.id)
    assert got.model_version  # cold start records a version too
    assert got.strategy == "typiclust"  # 'auto' with no labels starts cold
    # the push job waits on the sync queue for Label Studio
    assert queues.get_queue(redis_conn, settings, "sync").count == 1


def test_reconcile_requeues_a_round_whose_jobs_vanished(pool_project: Project,
                                                        redis_conn: Redis) -> None:
    settings = Settings()
    rnd = start_round(pool_project, redis_conn)
    lost_job = get_round(pool_project.store, rnd.id).job_id
    redis_conn.flushdb()  # Redis lost every queue
    assert reconcile(pool_project, redis_conn) == [
        f"round {rnd.number}: job {lost_job} died; resumed at embed"
    ]
    assert get_round(pool_project.store, rnd.id).job_id != lost_job
    work(redis_conn, settings, "embed", "train")
    with pool_project.store.session() as s:
        assert s.query(Selection).filter_by(round_id=rnd.id).count() == 5
    # a live chain is left alone
    assert reconcile(pool_project, redis_conn) == []


def test_a_step_held_by_another_worker_is_retried_not_reported_done(
        pool_project: Project, redis_conn: Redis) -> None:
    key = f"{queues.project_key(str(pool_project.root))}:embed:0/1"
    with queues.job_lock(redis_conn, key) as got:
        assert got
        out = jobs.embed_job(str(pool_project.root))
    assert isinstance(out, Retry) and out is jobs.BUSY
    out = jobs.embed_job(str(pool_project.root))
    assert out["computed"] == 24


def _hold(conn: Redis, key: str, seconds: float) -> threading.Thread:
    """Another worker holds ``key``'s lease for ``seconds`` (returns once it holds it)."""
    held = threading.Event()

    def worker() -> None:
        with queues.job_lock(conn, key) as got:
            assert got
            held.set()
            time.sleep(seconds)

    thread = threading.Thread(target=worker)
    thread.start()
    assert held.wait(10)
    return thread


def test_a_pull_waits_for_the_votes_lease_instead_of_retrying_later(
        pool_project: Project, redis_conn: Redis) -> None:
    root = str(pool_project.root)
    key = f"{queues.project_key(root)}:{jobs.VOTES}"
    # another worker's pull or close holds the votes for 1 s: this pull waits and runs
    # (here it gets as far as Label Studio, which this project has none of)
    holder = _hold(redis_conn, key, 1.0)
    t0 = time.monotonic()
    with pytest.raises(AlearnError):
        jobs.pull_job(root)
    assert 0.5 < time.monotonic() - t0 < jobs.VOTES_WAIT_S
    holder.join()
    # held past the wait: retried later, as before; the waiting job counted as alive
    holder = _hold(redis_conn, key, 1.5)
    alive: list[bool] = []
    watch = threading.Thread(target=lambda: (time.sleep(0.5), alive.append(
        bool(redis_conn.exists(queues.alive_key("job-1"))))))
    watch.start()
    with queues.job_lock(redis_conn, key, job_id="job-1", wait_s=1.0) as got:
        assert got is False
    watch.join()
    holder.join()
    assert alive == [True] and not redis_conn.exists(queues.alive_key("job-1"))


def test_pulls_are_debounced(pool_project: Project, redis_conn: Redis) -> None:
    settings = Settings()
    assert enqueue_pull(pool_project, redis_conn, delay=5) is True
    assert enqueue_pull(pool_project, redis_conn, delay=5) is False
    q = queues.get_queue(redis_conn, settings, "sync")
    assert ScheduledJobRegistry(queue=q).count == 1


def test_redis_down_gives_a_clear_error(pool_project: Project) -> None:
    with pytest.raises(queues.QueueUnavailable, match="cannot reach Redis.*ALEARN_REDIS_URL"):
        queues.connect(Settings(redis_url="redis://127.0.0.1:1/0"))


def test_labeled_items_are_never_selected(pool_project: Project, redis_conn: Redis) -> None:
    settings = Settings()
    ids = pool_project.store.item_ids()
    with pool_project.store.session() as s:
        for n, item in enumerate(ids[:12]):
            s.add(Label(item_id=item, label="abc"[n % 3], origin="manifest", is_gold=True))
    rnd = start_round(pool_project, redis_conn, strategy="margin")
    work(redis_conn, settings, "embed", "train")
    with pool_project.store.session() as s:
        chosen = {sel.item_id for sel in s.query(Selection).filter_by(round_id=rnd.id)}
    assert len(chosen) == 5 and not chosen & set(ids[:12])


def test_select_scores_with_the_head_its_train_job_fitted(pool_project: Project,
                                                          redis_conn: Redis) -> None:
    # labels that arrive between train and select must not make select fit a head of
    # its own: it scores with the version the round's train job returned
    settings = Settings()
    ids = pool_project.store.item_ids()
    with pool_project.store.session() as s:
        for n, item in enumerate(ids[:9]):
            s.add(Label(item_id=item, label="abc"[n % 3], origin="manifest", is_gold=True))
    rnd = start_round(pool_project, redis_conn, strategy="margin")
    work(redis_conn, settings, "embed")
    train_q = queues.get_queue(redis_conn, settings, "train")
    SimpleWorker([train_q], connection=redis_conn).work(burst=True, max_jobs=1)  # train only
    with pool_project.store.session() as s:
        (trained,) = s.scalars(select(ModelRecord.version)).all()
        for n, item in enumerate(ids[9:12]):
            s.add(Label(item_id=item, label="abc"[n % 3], origin="manifest", is_gold=True))
    work(redis_conn, settings, "train")  # select
    assert get_round(pool_project.store, rnd.id).model_version == trained
    with pool_project.store.session() as s:
        assert s.scalars(select(ModelRecord.version)).all() == [trained]  # no second fit
        chosen = {sel.item_id for sel in s.query(Selection).filter_by(round_id=rnd.id)}
    assert len(chosen) == 5


def test_every_dotted_path_handed_to_rq_imports() -> None:
    """RQ stores callbacks and the tick by dotted path; each must resolve to itself."""
    from rq.utils import import_attribute

    from workers.enqueue import ENTRY_POINTS

    for path in ENTRY_POINTS:
        fn = import_attribute(path)
        assert callable(fn) and f"{fn.__module__}.{fn.__qualname__}" == path
