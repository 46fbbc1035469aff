"""A whole round against a real Label Studio and a real Redis, the jobs run by real RQ
workers (SimpleWorker in burst mode), the annotators real Label Studio users labeling
through the label stream."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import ingested_project
from ls_server import work
from redis import Redis
from sqlalchemy import select

from alearn.ingestion.driver import ingest
from alearn.rounds.lifecycle import CLOSED, PUSHED, get_round
from alearn.store import Annotation, Item, Label, Selection
from labelstudio.annotators import label_stream
from workers.enqueue import enqueue_pull
from workers.orchestrate import start_round

pytestmark = pytest.mark.integration

CLASSES = ["cat", "dog", "bird"]


def truth_of(name: str) -> str:
    return CLASSES[int(Path(name).stem) % 3]


def test_a_whole_round_then_the_next(live_ls, env: Redis, tmp_path: Path) -> None:
    project = ingested_project(tmp_path, 30, seed=500, size=(24, 24), classes=CLASSES,
                               batch_size=6, overlap=3, min_labels_per_class=2)
    manifest = tmp_path / "seed.csv"
    manifest.write_text("path,label\n" + "".join(f"{i:03d}.png,{truth_of(f'{i}.png')}\n"
                                                 for i in range(6)))
    assert ingest(project, manifest=manifest).to_dict()["updated"] == 6
    seeded = set(project.store.trusted_labels())

    rnd = start_round(project, env)
    work(env)  # embed -> train -> select -> push, on a real worker
    rnd = get_round(project.store, rnd.id)
    assert rnd.status == PUSHED and rnd.strategy == "margin"
    pid = int(project.store.get_meta("ls_project_id"))
    client = live_ls.client()
    tasks = list(client._sdk.tasks.list(project=pid, fields="all"))
    with project.store.session() as s:
        chosen = {sel.item_id: sel for sel in s.scalars(
            select(Selection).where(Selection.round_id == rnd.id))}
    assert len(tasks) == 6 and {t.data["item_id"] for t in tasks} == set(chosen)
    assert not set(chosen) & seeded
    for t in tasks:
        (pred,) = t.predictions
        assert pred.model_version == rnd.model_version
        assert pred.score == pytest.approx(chosen[t.data["item_id"]].score)
    assert client.get_project(pid)["maximum_annotations"] == 3

    # three annotators label as themselves through the label stream, all correctly
    with project.store.session() as s:
        paths = dict(s.execute(select(Item.id, Item.path)).all())
    team = [live_ls.new_annotator("round", store=project.store) for _ in range(3)]
    done = [label_stream(live_ls.url, a.token, pid,
                         lambda d: truth_of(paths[int(d["item_id"])]), lead_time=1.5)
            for a in team]
    assert done == [6, 6, 6]

    # the pull (as a webhook would enqueue it) mirrors, sees the round complete, closes it
    assert enqueue_pull(project, env, delay=0)
    work(env)
    rnd = get_round(project.store, rnd.id)
    assert rnd.status == CLOSED
    with project.store.session() as s:
        anns = s.scalars(select(Annotation).where(Annotation.round_id == rnd.id)).all()
        labels = {lab.item_id: lab for lab in s.scalars(
            select(Label).where(Label.round_id == rnd.id))}
    assert len(anns) == 18 and {a.annotator for a in anns} == {a.email for a in team}
    assert set(labels) == set(chosen)
    for item, lab in labels.items():
        assert lab.label == truth_of(paths[item]) and lab.origin == "consensus"
    # everyone agreed: percent agreement is 1; kappa is 1 too unless every item of the
    # batch happens to have the same class (kappa is then undefined, and says so)
    agreement = rnd.metrics["agreement"]
    assert agreement["percent_agreement"]["value"] == pytest.approx(1.0)
    if len({lab.label for lab in labels.values()}) > 1:
        assert rnd.metrics["kappa"] == pytest.approx(1.0)
    else:
        assert rnd.metrics["kappa"] is None and agreement["fleiss_kappa"]["reason"]
    assert rnd.metrics["labels_spent"] == 18

    # the next round never selects labeled items
    nxt = start_round(project, env)
    work(env)
    with project.store.session() as s:
        second = set(s.scalars(select(Selection.item_id).where(Selection.round_id == nxt.id)))
    assert len(second) == 6
    assert not second & (set(chosen) | seeded)
    assert get_round(project.store, nxt.id).status == PUSHED
