"""Agreement a team can trust, end to end: a real Label Studio, a real Redis, the jobs
run by real RQ workers (SimpleWorker in burst mode), every annotator and reviewer a
real Label Studio user labeling through the label stream.

One round of 80 images (8 of them gold) over four classes, labeled by three simulated
annotators: two good ones (right with probability 0.85, else a uniformly wrong class)
and one who answers at random. Every answer is a seeded function of (annotator, image),
so the run is deterministic whatever order Label Studio serves the tasks in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factories import ingested_project
from ls_server import work
from redis import Redis
from sqlalchemy import select

from alearn.ingestion.driver import ingest
from alearn.project import Project
from alearn.report.status import project_status
from alearn.rounds.adjudication import votes_text
from alearn.rounds.lifecycle import CLOSED, COLLECTING, PUSHED, get_round
from alearn.rounds.votes import round_votes
from alearn.stats.consensus import dawid_skene, majority_vote
from alearn.stats.ratings import ratings_matrix
from alearn.store import Annotation, Item, Label, Selection
from labelstudio.annotators import label_stream
from workers.enqueue import enqueue_pull
from workers.orchestrate import start_round

pytestmark = pytest.mark.integration

CLASSES = ["cat", "dog", "bird", "fish"]
N_GOLD, N_POOL = 12, 72
SEED = 7
GOOD_ACCURACY = 0.85


def truth_of(path: str) -> str:
    return CLASSES[int(Path(path).stem) % len(CLASSES)]


def answer(who: int, path: str, *, seed: int = SEED) -> str:
    """Annotator ``who``'s answer on an image: 0 and 1 are good, 2 answers at random."""
    k, true = len(CLASSES), CLASSES.index(truth_of(path))
    rng = np.random.default_rng([seed, who, int(Path(path).stem)])
    if who == 2:
        return CLASSES[int(rng.integers(0, k))]
    right = rng.random() < GOOD_ACCURACY
    return CLASSES[true if right else (true + int(rng.integers(1, k))) % k]


def make_project(tmp_path: Path, n_images: int, *, gold: int) -> Project:
    project = ingested_project(tmp_path, n_images, seed=900, classes=CLASSES,
                               embed={"batch_size": 16}, min_labels_per_class=2)
    manifest = tmp_path / "gold.csv"
    manifest.write_text("path,label\n" + "".join(
        f"{i:03d}.png,{truth_of(f'{i}.png')}\n" for i in range(gold)))
    if gold:
        ingest(project, manifest=manifest)
    return project


def paths_of(project: Project) -> dict[int, str]:
    with project.store.session() as s:
        return dict(s.execute(select(Item.id, Item.path)).all())


def accuracy(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of items whose label is the truth (no label, -1, counts as wrong)."""
    return float(np.mean(labels == truth))


def test_flags_dawid_skene_and_adjudication_through_label_studio(
    live_ls, env: Redis, tmp_path: Path
) -> None:
    project = make_project(tmp_path, N_GOLD + N_POOL, gold=N_GOLD)
    team = [live_ls.new_annotator(f"ann{j}", store=project.store) for j in range(3)]
    reviewer, outsider = live_ls.new_annotator("reviewer"), live_ls.new_annotator("outsider")
    cfg = project.config
    cfg.rounds.batch_size, cfg.rounds.overlap, cfg.rounds.gold_rate = 80, 3, 0.1
    cfg.agreement.consensus, cfg.agreement.adjudication = "majority", "review"
    cfg.agreement.reviewers = [reviewer.email]
    cfg.review.max_per_round = 0  # only ties here; label review: tests/test_label_review.py
    project.save_config()

    rnd = start_round(project, env)
    work(env)
    assert get_round(project.store, rnd.id).status == PUSHED
    with project.store.session() as s:
        chosen = {sel.item_id: sel.is_gold for sel in s.scalars(
            select(Selection).where(Selection.round_id == rnd.id))}
    paths = paths_of(project)
    gold_ids = {i for i, g in chosen.items() if g}
    assert len(chosen) == 80 and len(gold_ids) == 8  # round(80 * 0.1)
    assert all(int(Path(paths[i]).stem) < N_GOLD for i in gold_ids)

    pid = int(project.store.get_meta("ls_project_id"))
    done = [label_stream(live_ls.url, a.token, pid,
                         lambda d, j=j: answer(j, paths[int(d["item_id"])]), lead_time=2.0)
            for j, a in enumerate(team)]
    assert done == [80, 80, 80]
    assert enqueue_pull(project, env, delay=0)
    work(env)  # pull -> close -> adjudication push
    rnd = get_round(project.store, rnd.id)
    assert rnd.status == CLOSED
    m = rnd.metrics

    # (a) the random annotator is flagged, the good ones are not; gold measured everyone
    by = {a["annotator"]: a for a in m["annotators"]}
    assert set(by) == {a.email for a in team}
    assert [by[a.email]["flagged"] for a in team] == [False, False, True]
    assert all(by[a.email]["n_gold"] == 8 and by[a.email]["gold_accuracy"] is not None
               for a in team)
    assert by[team[2].email]["model_accuracy"] < 0.5 < by[team[0].email]["model_accuracy"]

    # gold items keep their manifest label and are no consensus items
    with project.store.session() as s:
        labels = {lab.item_id: lab for lab in s.scalars(select(Label))}
    assert all(labels[i].origin == "manifest" and labels[i].round_id is None for i in gold_ids)
    assert m["consensus_items"] == 72 and sum(m["consensus"].values()) == 72

    # (b) on the same mirrored votes, Dawid-Skene labels more items right than majority
    votes = round_votes(project, [rnd.id])
    ratings = ratings_matrix([v[:3] for v in votes], CLASSES)
    truth = np.array([CLASSES.index(truth_of(paths[int(i)])) for i in ratings.items])
    mv = majority_vote(ratings.matrix, n_classes=4, min_confidence=cfg.agreement.min_confidence)
    ds = dawid_skene(ratings.matrix, n_classes=4, min_confidence=cfg.agreement.min_confidence)
    acc_mv, acc_ds = accuracy(mv.labels, truth), accuracy(ds.labels, truth)
    assert acc_ds > acc_mv, (acc_ds, acc_mv)
    # the round's stored consensus labels are majority vote's
    for row, item in enumerate(int(i) for i in ratings.items):
        if item not in gold_ids and mv.status[row] == "agreed":
            assert labels[item].label == CLASSES[mv.labels[row]]
            assert labels[item].origin == "consensus"

    # (c) the ties went to the adjudication project, with the earlier votes as text
    ties = m["adjudication_items"]
    tied_rows = [r for r, i in enumerate(ratings.items) if mv.status[r] == "tie"
                 and int(i) not in gold_ids]
    assert len(ties) >= 2 and sorted(ties) == sorted(int(ratings.items[r]) for r in tied_rows)
    assert not set(ties) & set(labels)
    adj_pid = int(project.store.get_meta("ls_adjudication_project_id"))
    client = live_ls.client()
    adj_project = client.get_project(adj_pid)
    assert adj_project["title"] == client.get_project(pid)["title"] + " - adjudication"
    assert adj_project["maximum_annotations"] == 1
    tasks = {t["data"]["item_id"]: t for t in client.iter_tasks(adj_pid)}
    assert set(tasks) == set(ties)
    with project.store.session() as s:
        for item in ties:
            cast = s.execute(select(Annotation.annotator, Annotation.label).where(
                Annotation.item_id == item, Annotation.round_id == rnd.id)).all()
            assert tasks[item]["data"]["votes_text"] == votes_text(cast, CLASSES)
            assert tasks[item]["data"]["round"] == rnd.id
            assert len({lab for _w, lab in cast}) == 3  # a three-way split: a tie

    # an outsider decides one task first (set aside), the reviewer decides the rest
    truth_by_item = {i: truth_of(p) for i, p in paths.items()}
    assert label_stream(live_ls.url, outsider.token, adj_pid,
                        lambda d: truth_by_item[int(d["item_id"])], max_tasks=1) == 1
    n = label_stream(live_ls.url, reviewer.token, adj_pid,
                     lambda d: truth_by_item[int(d["item_id"])], lead_time=3.0)
    assert n == len(ties) - 1
    assert enqueue_pull(project, env, delay=0)
    work(env)
    with project.store.session() as s:
        adjudicated = {lab.item_id: lab for lab in s.scalars(
            select(Label).where(Label.origin == "adjudicated"))}
    aside = get_round(project.store, rnd.id).metrics["adjudication"]
    assert len(adjudicated) == len(ties) - 1 and set(adjudicated) < set(ties)
    for item, lab in adjudicated.items():
        assert (lab.label, lab.method, lab.confidence, lab.round_id) == (
            truth_by_item[item], "adjudication", 1.0, rnd.id)
    (set_aside,) = aside["set_aside"]
    assert set_aside["reviewer"] == outsider.email and "not a reviewer" in set_aside["reason"]
    assert set_aside["item_id"] in set(ties) - set(adjudicated)
    assert (aside["pending"], aside["decided"], aside["pushed"]) == (1, len(ties) - 1, len(ties))
    status = project_status(project)["adjudication"]
    assert (status["pending"], status["decided"], len(status["set_aside"])) == (
        1, len(ties) - 1, 1)


def test_more_votes_keeps_the_round_open_until_the_extra_votes_arrive(
    live_ls, env: Redis, tmp_path: Path
) -> None:
    """'more_votes': three annotators split three ways on some items; two more people
    are then served exactly those tasks, and the round closes over all five votes."""
    project = make_project(tmp_path, 16, gold=8)
    cfg = project.config
    cfg.rounds.batch_size, cfg.rounds.overlap = 6, 3
    # a three-way split is majority vote's tie (the model-aware consensus may settle it)
    cfg.agreement.consensus, cfg.agreement.adjudication = "majority", "more_votes"
    project.save_config()
    rnd = start_round(project, env)
    work(env)
    paths = paths_of(project)
    pid = int(project.store.get_meta("ls_project_id"))
    with project.store.session() as s:
        chosen = list(s.scalars(select(Selection.item_id).where(Selection.round_id == rnd.id)))
    split = set(sorted(chosen)[:2])  # these two get a three-way split

    def first_three(j: int):  # noqa: ANN202
        def choose(d: dict) -> str:
            item = int(d["item_id"])
            true = CLASSES.index(truth_of(paths[item]))
            return CLASSES[(true + j) % 4] if item in split else CLASSES[true]
        return choose

    team = [live_ls.new_annotator(f"mv{j}", store=project.store) for j in range(5)]
    assert [label_stream(live_ls.url, a.token, pid, first_three(j), lead_time=1.0)
            for j, a in enumerate(team[:3])] == [6, 6, 6]
    assert enqueue_pull(project, env, delay=0)
    work(env)  # pull -> complete -> close asks for more votes instead of closing
    rnd = get_round(project.store, rnd.id)
    assert rnd.status == COLLECTING
    assert {int(i): n for i, n in rnd.metrics["more_votes"]["targets"].items()} == {
        i: 5 for i in split}
    served: list[int] = []
    for a in team[3:]:
        assert label_stream(live_ls.url, a.token, pid,
                            lambda d: served.append(int(d["item_id"]))
                            or truth_of(paths[int(d["item_id"])]), lead_time=1.0) == 2
    assert sorted(served) == sorted([*split, *split])
    assert enqueue_pull(project, env, delay=0)
    work(env)
    rnd = get_round(project.store, rnd.id)
    assert rnd.status == CLOSED and rnd.metrics["adjudication_items"] == []
    labels = project.store.trusted_labels()
    for item in split:  # truth, 0+1, 0+2, 0+3 then truth twice: 3 of 5 votes
        assert labels[item] == truth_of(paths[item])
    assert rnd.metrics["labels_spent"] == 6 * 3 + 2 * 2
