"""``alearn round close`` of a round with open tasks: refused without ``--force``; with it,
the round closes on the votes given, and a real Label Studio stops serving its open tasks
(unlabeled ones removed, partly labeled ones locked) while every vote is kept."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from factories import ingested_project, voted_round
from factories import run_cli as run
from ls_server import work
from redis import Redis
from sqlalchemy import select

from alearn.ingestion.driver import ingest
from alearn.project import Project
from alearn.rounds.lifecycle import CLOSED, PUSHED, get_round, round_events
from alearn.store import Annotation, Item
from labelstudio.annotators import label_stream
from workers import queues
from workers.commands import open_tasks
from workers.orchestrate import start_round

CLASSES = ["cat", "dog", "bird"]


def truth_of(name: str) -> str:
    return CLASSES[int(Path(name).stem) % 3]


def test_open_tasks_are_pushed_tasks_short_of_the_overlap(proj: Project) -> None:
    rid, _ = voted_round(proj, {0: ["cat", "cat", "cat"], 1: ["dog"], 2: [], 3: ["a", "b"]})
    assert open_tasks(proj, rid) == 3  # overlap 3: items 1, 2 and 3


def test_close_with_open_tasks_needs_force_then_withdraws_them(
        live_ls, env: Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = ingested_project(tmp_path, 16, seed=900, size=(24, 24), classes=CLASSES,
                               batch_size=4, overlap=2, min_labels_per_class=2)
    manifest = tmp_path / "seed.csv"
    manifest.write_text("path,label\n" + "".join(f"{i:03d}.png,{truth_of(f'{i}.png')}\n"
                                                 for i in range(6)))
    ingest(project, manifest=manifest)
    rnd = start_round(project, env)
    work(env)
    rnd = get_round(project.store, rnd.id)
    assert rnd.status == PUSHED
    pid = int(project.store.get_meta("ls_project_id"))
    client = live_ls.client()
    with project.store.session() as s:
        paths = dict(s.execute(select(Item.id, Item.path)).all())

    def choose(d: dict) -> str:
        return truth_of(paths[int(d["item_id"])])

    a, b = (live_ls.new_annotator("close", store=project.store) for _ in range(2))
    assert label_stream(live_ls.url, a.token, pid, choose, max_tasks=2) == 2
    assert label_stream(live_ls.url, b.token, pid, choose, max_tasks=1) == 1
    before = {t["id"]: len(t["annotations"]) for t in client.iter_tasks(pid, annotations=True)}
    assert len(before) == 4 and sum(before.values()) == 3
    unlabeled = {t for t, n in before.items() if n == 0}
    partial = {t for t, n in before.items() if n == 1}
    assert unlabeled and partial  # 3 votes on 4 tasks of overlap 2

    # without --force: one line, how many are open and what --force does; nothing changes
    argv = ["--project", str(project.root), "round", "close"]
    code, out, err = run(argv, capsys)
    assert code == 1 and out == ""
    line = " ".join(err.split())
    assert f"{len(unlabeled) + len(partial)} open tasks" in line and "--force" in line
    assert "removes its unlabeled tasks" in line and "locks" in line
    assert get_round(project.store, rnd.id).status != CLOSED
    assert {t["id"] for t in client.iter_tasks(pid)} == set(before)

    # --force: closed on the 3 votes; unlabeled tasks removed, partly labeled ones locked.
    # A worker's pull holds the round's lock for the first 2 s: the command waits for it
    # (it used to fail at once and ask the operator to run it again)
    held, released = threading.Event(), threading.Event()

    def worker_pulling() -> None:
        with queues.job_lock(env, f"{queues.project_key(str(project.root))}:votes") as got:
            assert got
            held.set()
            time.sleep(2.0)
        released.set()

    holder = threading.Thread(target=worker_pulling)
    holder.start()
    assert held.wait(10)
    code, out, err = run([*argv, "--force"], capsys)
    holder.join()
    assert code == 0, err
    assert released.is_set()
    said = " ".join(out.split())
    assert f"Round {rnd.number} closed: 3 labels" in said
    assert (f"{len(unlabeled)} unlabeled removed from Label Studio, {len(partial)} partly "
            "labeled locked") in said
    rnd = get_round(project.store, rnd.id)
    assert rnd.status == CLOSED and rnd.metrics["labels_spent"] == 3
    left = {t["id"]: len(t["annotations"]) for t in client.iter_tasks(pid, annotations=True)}
    assert set(left) == set(before) - unlabeled
    assert left == {t: before[t] for t in left}  # every vote is still in Label Studio
    for tid in partial:
        task = client._sdk.tasks.get(id=str(tid))
        assert task.overlap == 1 and task.is_labeled
    with project.store.session() as s:
        kept = s.scalars(select(Annotation).where(Annotation.round_id == rnd.id)).all()
    assert len(kept) == 3 and {x.annotator for x in kept} == {a.email, b.email}
    events = [e for e in round_events(project.store, rnd.id) if e["kind"] == "force_closed"]
    assert events and events[0]["deleted"] == len(unlabeled)
    assert events[0]["locked"] == len(partial)
    # Label Studio serves nothing more of this round, even to someone new
    c = live_ls.new_annotator("close", store=project.store)
    assert label_stream(live_ls.url, c.token, pid, choose) == 0

    # again, with --json: the closed round is kept, the withdrawal is idempotent
    code, out, err = run([*argv, "--round", str(rnd.number), "--force", "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["closed"] is True and data["labels_spent"] == 3
    assert data["withdrawn"] == {"deleted": 0, "locked": len(partial),
                                 "complete": 4 - len(unlabeled) - len(partial)}
