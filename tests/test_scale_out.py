"""Scale-out on RQ and PostgreSQL: two ``alearn worker`` processes, each in a working
directory of its own (as on two hosts), share one PostgreSQL store, a real Redis and a
real Label Studio through a whole round: plan -> push -> votes -> pull -> close. And what
keeps the turnaround short at scale: a webhook's pull starts at once, and ``alearn
status`` loads none of the heavy libraries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import ingested_project, voted_round
from redis import Redis
from sqlalchemy import func, select

from alearn.config import Settings
from alearn.exceptions import AlearnError
from alearn.ingestion.driver import ingest
from alearn.project import Project
from alearn.rounds.lifecycle import CLOSED, PUSHED, get_round
from alearn.store import Annotation, Item, Label, Selection
from workers import jobs, queues
from workers.enqueue import enqueue_pull, pull_debounce_key

CLASSES = ["cat", "dog", "bird"]
ALEARN = str(Path(sys.executable).parent / "alearn")
#: (host folder, queues): a GPU-like host that embeds and trains, a CPU host that talks
#: to Label Studio and closes rounds, so each must do its share for the round to end
HOSTS = {"host-a": "embed,train", "host-b": "sync,round"}
STEP_HOST = {"embed": "host-a", "train": "host-a", "select": "host-a", "push": "host-b",
             "pull": "host-b", "close": "host-b"}


def truth_of(path: str) -> str:
    return CLASSES[int(Path(path).stem) % 3]


def wait_for(what: Callable[[], Any], timeout: float, label: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"{label} did not happen within {timeout:.0f} s")


@pytest.fixture
def two_hosts(tmp_path: Path, env: Redis, pg_url: str) -> Iterator[dict[str, Path]]:
    """Two worker processes, one per host folder (neither is the project folder), with
    the test's environment: the same Redis, Label Studio and PostgreSQL URLs."""
    logs = tmp_path / "logs"
    logs.mkdir()
    procs, folders = [], {}
    for host, names in HOSTS.items():
        folder = folders[host] = tmp_path / host
        folder.mkdir()
        out = (logs / f"{host}.log").open("ab")
        procs.append(subprocess.Popen(
            [ALEARN, "worker", "--name", f"scale-{host}", "--queues", names], cwd=folder,
            env={**os.environ, "ALEARN_DATABASE_URL": pg_url}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True))
        out.close()
    try:
        yield {**folders, "logs": logs}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _finished_jobs(conn: Redis) -> list[Any]:
    from rq.job import Job
    from rq.registry import FinishedJobRegistry

    settings = Settings()
    ids = [i for n in queues.QUEUE_NAMES for i in FinishedJobRegistry(
        queue=queues.get_queue(conn, settings, n)).get_job_ids()]
    return [j for j in Job.fetch_many(ids, connection=conn) if j is not None]


@pytest.mark.integration
def test_two_workers_in_their_own_folders_run_a_round_on_one_postgresql_store(
        live_ls, env: Redis, pg_url: str, two_hosts: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALEARN_DATABASE_URL", pg_url)
    project = ingested_project(tmp_path, 24, seed=900, size=(24, 24), classes=CLASSES,
                               batch_size=6, overlap=3, min_labels_per_class=2,
                               auto_next=False)
    try:
        _whole_round(live_ls, env, project, two_hosts, tmp_path)
    finally:
        project.store.dispose()  # its connections close before the database is dropped


def _whole_round(live_ls: Any, env: Redis, project: Project, two_hosts: dict[str, Path],
                 tmp_path: Path) -> None:
    from labelstudio.annotators import label_stream
    from workers.orchestrate import start_round

    assert project.store.engine.url.get_backend_name() == "postgresql"
    manifest = tmp_path / "seed.csv"
    manifest.write_text("path,label\n" + "".join(f"{i:03d}.png,{truth_of(f'{i}.png')}\n"
                                                 for i in range(6)))
    assert ingest(project, manifest=manifest).to_dict()["updated"] == 6
    team = [live_ls.new_annotator("scale", store=project.store) for _ in range(3)]

    # plan and push: embed, train and select on host A, push on host B
    rnd = start_round(project, env)
    wait_for(lambda: get_round(project.store, rnd.id).status == PUSHED, 300,
             "the round pushed by the workers")
    pid = int(project.store.get_meta("ls_project_id"))
    with project.store.session() as s:
        chosen = set(s.scalars(select(Selection.item_id).where(Selection.round_id == rnd.id)))
        paths = dict(s.execute(select(Item.id, Item.path)).all())
    tasks = list(live_ls.client()._sdk.tasks.list(project=pid, fields="all"))
    assert len(chosen) == 6 and {t.data["item_id"] for t in tasks} == chosen

    # votes in Label Studio, then the pull a webhook enqueues: pull and close on host B
    done = [label_stream(live_ls.url, a.token, pid,
                         lambda d: truth_of(paths[int(d["item_id"])]), lead_time=1.0)
            for a in team]
    assert done == [6, 6, 6]
    enqueue_pull(project, env)  # False if a tick's pull already waits: it reads them too
    wait_for(lambda: get_round(project.store, rnd.id).status == CLOSED, 180,
             "the round closed by the workers")

    # one store holds the whole round: the votes, the consensus labels, the metrics
    closed = get_round(project.store, rnd.id)
    with project.store.session() as s:
        votes = s.scalar(select(func.count()).where(Annotation.round_id == rnd.id))
        labels = dict(s.execute(select(Label.item_id, Label.label).where(
            Label.round_id == rnd.id, Label.origin == "consensus")).all())
    assert votes == 18 and closed.metrics["labels_spent"] == 18
    assert labels == {i: truth_of(paths[i]) for i in chosen}

    # each host did its share, by its queues, and only its share
    from rq.job import Job

    from workers.enqueue import close_job_id

    close = Job.fetch(close_job_id(project, rnd.id), connection=env)
    wait_for(lambda: close.get_status(refresh=True) == "finished", 60, "the close job's end")
    ran: dict[str, set[str]] = {}
    for job in _finished_jobs(env):
        step = (job.meta or {}).get("step") or (job.func_name or "").rsplit(".", 1)[-1]
        step = step.removesuffix("_job")
        if step in STEP_HOST:
            ran.setdefault(step, set()).add(str(job.worker_name))
    assert {s: hosts for s, hosts in ran.items()} == {
        s: {f"scale-{h}"} for s, h in STEP_HOST.items()}, ran
    for host in HOSTS:  # the working directory stays the worker's own: nothing written
        assert not any(two_hosts[host].iterdir()), host


def test_a_webhook_pull_starts_at_once_and_later_events_wait_for_it(
        project: Project, redis_conn: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    from rq.registry import ScheduledJobRegistry

    q = queues.get_queue(redis_conn, Settings(), "sync")
    assert enqueue_pull(project, redis_conn)  # the first event: a pull now, not in 2 s
    assert q.count == 1 and ScheduledJobRegistry(queue=q).count == 0
    assert not enqueue_pull(project, redis_conn)  # a burst adds nothing while it waits
    assert q.count == 1
    # once the pull holds its lease, a new event gets a pull of its own
    monkeypatch.setenv("ALEARN_LS_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(AlearnError):
        jobs.pull_job(str(project.root))
    assert not redis_conn.exists(pull_debounce_key(project))
    assert enqueue_pull(project, redis_conn)
    assert q.count == 2


def test_status_loads_no_heavy_library(project: Project) -> None:
    """``alearn status`` answers from counts; scikit-learn, scipy and torch stay unloaded
    (importing them costs seconds, more than the status itself at a million items)."""
    from alearn.rounds.close import close_round

    rid, _ = voted_round(project, {1: ["cat", "cat", "dog"], 2: ["dog", "dog", "dog"]})
    close_round(project, rid)
    code = ("import sys, json\nfrom alearn.cli import main\n"
            "try:\n    main(['status', '--json'])\nexcept SystemExit:\n    pass\n"
            "heavy = ('sklearn', 'scipy', 'torch', 'timm', 'cleanlab', 'pandas')\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ALEARN_")},
           "ALEARN_REDIS_URL": "redis://127.0.0.1:1/0"}  # queues unavailable: said so
    done = subprocess.run([sys.executable, "-c", code], cwd=project.root, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    lines = done.stdout.strip().splitlines()
    status = json.loads("\n".join(lines[:-1]))
    assert status["rounds"][0]["status"] == "closed" and status["pool_size"] == 2
    assert "error" in status["queues"]
    assert json.loads(lines[-1]) == []
