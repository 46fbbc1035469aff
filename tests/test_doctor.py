"""``alearn doctor`` against real Redis (and a real Label Studio and worker in one test)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from factories import run_cli as run
from redis import Redis
from rq import SimpleWorker

from alearn.project import Project
from alearn.rounds.lifecycle import create_round, fail_round, set_round_fields
from labelstudio.server import free_port

NAMES = {"project", "redis", "label-studio", "workers", "scheduler", "tick", "queues",
         "failed-jobs", "database", "rounds", "disk", "versions"}


def lines(out: str) -> dict[str, str]:
    """check name -> its line (and there is exactly one line per check)."""
    got: dict[str, str] = {}
    for line in out.splitlines():
        status, name = line.split()[:2]
        assert status in ("ok", "warn", "fail") and name not in got, line
        got[name] = line
    return got


def checks(project: Project, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code, out, err = run(["--project", str(project.root), "doctor", "--json"], capsys)
    assert err == ""
    return code, {c["name"]: c for c in json.loads(out)}


@pytest.fixture(autouse=True)
def _store(project: Project) -> None:
    """The project's store exists (as after 'alearn ingest')."""
    assert project.store is not None


@pytest.fixture
def no_ls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Label Studio on a closed port, with a token that must never be printed."""
    monkeypatch.setenv("ALEARN_LS_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ALEARN_LS_TOKEN", "tok-SECRET-4711")


def test_no_worker_fails_with_the_worker_fix(project: Project, redis_conn: Redis, no_ls: None,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["--project", str(project.root), "doctor"], capsys)
    assert code == 1 and err == ""
    got = lines(out)
    assert set(got) == NAMES
    assert got["redis"].startswith("ok ")
    assert got["workers"].startswith("fail ") and "Fix: start one with 'alearn worker'" in \
        got["workers"]
    assert got["scheduler"].startswith("fail ") and "'alearn worker'" in got["scheduler"]
    assert got["label-studio"].startswith("fail ") and "'alearn ls up'" in got["label-studio"]
    assert got["database"].startswith("ok ") and "schema current" in got["database"]
    assert "tok-SECRET-4711" not in out


def test_redis_unreachable_is_one_failing_line(project: Project, no_ls: None,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ALEARN_REDIS_URL", f"redis://:pw-SECRET-99@127.0.0.1:{free_port()}/0")
    code, out, err = run(["--project", str(project.root), "doctor"], capsys)
    assert code == 1 and err == "" and "Traceback" not in out
    got = lines(out)
    assert got["redis"].startswith("fail ") and "ALEARN_REDIS_URL" in got["redis"]
    assert "redis://***@127.0.0.1" in got["redis"]
    assert "pw-SECRET-99" not in out and "tok-SECRET-4711" not in out
    assert {"workers", "scheduler", "tick"}.isdisjoint(got)  # they need Redis
    assert got["versions"].startswith("ok ") and "torch" in got["versions"]


def test_json_shape_and_outside_a_project(tmp_path: Path, redis_conn: Redis, no_ls: None,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(["doctor", "--json"], capsys)
    data = json.loads(out)
    assert code == 1 and isinstance(data, list)
    for c in data:
        assert set(c) == {"name", "status", "found", "fix"}
        assert c["status"] in ("ok", "warn", "fail")
        assert (c["fix"] is None) == (c["status"] == "ok"), c
    by = {c["name"]: c for c in data}
    assert by["project"]["status"] == "warn" and "--project" in by["project"]["fix"]
    assert {"database", "disk", "tick", "rounds"}.isdisjoint(by)


def test_tick_armed_overdue_and_failed_jobs_scrubbed(project: Project, redis_conn: Redis,
                                                     no_ls: None,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from workers import queues
    from workers.enqueue import TICK, ensure_tick, tick_job_id

    _, got = checks(project, capsys)
    assert got["tick"]["status"] == "warn" and "'alearn status'" in got["tick"]["fix"]
    assert got["failed-jobs"]["status"] == "ok"
    ensure_tick(project, redis_conn)
    _, got = checks(project, capsys)
    assert got["tick"]["status"] == "ok" and "armed" in got["tick"]["found"]

    redis_conn.flushdb()  # a tick due two minutes ago that no scheduler ran
    import datetime as dt
    q = queues.get_queue(redis_conn, project.settings, "round")
    q.enqueue_at(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=120), TICK,
                 str(project.root), job_id=tick_job_id(project, 1))
    # a job that fails with the token in its arguments and its error
    sync = queues.get_queue(redis_conn, project.settings, "sync")
    sync.enqueue("builtins.int", "tok-SECRET-4711")
    SimpleWorker([sync], connection=redis_conn).work(burst=True)
    code, out, err = run(["--project", str(project.root), "doctor"], capsys)
    got = lines(out)
    assert code == 1 and err == ""
    assert got["tick"].startswith("fail ") and "has not run" in got["tick"]
    assert got["failed-jobs"].startswith("warn ") and "1 jobs failed" in got["failed-jobs"]
    assert "ValueError" in got["failed-jobs"] and "***" in got["failed-jobs"]
    assert "tok-SECRET-4711" not in out


def test_rounds_failed_and_dead_chain(project: Project, redis_conn: Redis, no_ls: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    import datetime as dt

    store = project.store
    r1 = create_round(store, strategy="random", batch_size=2, overlap=1)
    fail_round(store, r1.id, "push", "Label Studio refused the import")
    _, got = checks(project, capsys)
    assert got["rounds"]["status"] == "fail"
    assert "round 1 failed" in got["rounds"]["found"]
    assert "alearn round retry --round 1" in got["rounds"]["fix"]

    set_round_fields(store, r1.id, status="aborted")
    r2 = create_round(store, strategy="random", batch_size=2, overlap=1)
    set_round_fields(store, r2.id, job_id="gone-job",
                     created_at=dt.datetime.now(dt.UTC).replace(tzinfo=None)
                     - dt.timedelta(minutes=10))
    _, got = checks(project, capsys)
    assert got["rounds"]["status"] == "fail"
    assert "round 2 is planned, but its job chain is dead" in got["rounds"]["found"]
    assert "alearn round retry --round 2" in got["rounds"]["fix"]


def test_missing_column_is_reported_not_added_and_the_fix_works(
        project: Project, redis_conn: Redis, no_ls: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    project.store.dispose()
    db = project.root / "alearn.db"
    con = sqlite3.connect(db)
    con.execute('ALTER TABLE rounds DROP COLUMN closed_at')
    con.commit()
    con.close()
    for _ in range(2):  # doctor changes nothing: the column is still missing
        _, got = checks(project, capsys)
        assert got["database"]["status"] == "warn"
        assert "column rounds.closed_at" in got["database"]["found"]
        assert got["database"]["fix"].startswith("'alearn status'")
    run(["--project", str(project.root), "status"], capsys)
    _, got = checks(project, capsys)
    assert got["database"]["status"] == "ok"


def test_all_up_exits_zero_and_never_prints_the_token(
        project: Project, redis_conn: Redis, live_ls, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ALEARN_LS_URL", live_ls.url)
    monkeypatch.setenv("ALEARN_LS_TOKEN", live_ls.token)
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from alearn.cli import main; main()",
         "--project", str(project.root), "worker"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            code, got = checks(project, capsys)
            if code == 0 and got["tick"]["status"] == "ok" or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert code == 0, got
        assert all(c["status"] == "ok" for c in got.values()), got
        assert "token is valid" in got["label-studio"]["found"]
        code, out, _ = run(["--project", str(project.root), "doctor"], capsys)
        assert code == 0 and live_ls.token not in out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()

    monkeypatch.setenv("ALEARN_LS_TOKEN", "wrong-SECRET-token-0815")
    code, out, _ = run(["--project", str(project.root), "doctor"], capsys)
    got_lines = lines(out)
    assert code == 1 and got_lines["label-studio"].startswith("fail ")
    assert "refused the API token" in got_lines["label-studio"]
    assert "ALEARN_LS_TOKEN" in got_lines["label-studio"]
    assert "wrong-SECRET-token-0815" not in out and live_ls.token not in out
