"""Gold items mixed into rounds: how many, which, how they look in Label Studio, and
what round close does with their votes. Synthetic embeddings go into the project's real
feature cache; store, head and strategies are real."""

from __future__ import annotations

import numpy as np
import pytest
from factories import CLASSES, voted_round
from sqlalchemy import select
from statsmodels.stats.proportion import proportion_confint

from alearn.features.backbone import cache_key_for
from alearn.features.cache import FeatureCache
from alearn.query.selection import gold_count, plan_batch
from alearn.rounds.close import annotator_report, close_round, wilson_upper
from alearn.rounds.lifecycle import create_round
from alearn.rounds.plan_record import record_plan
from alearn.stats.ratings import ratings_matrix
from alearn.store import Item, Label, Round, Selection
from labelstudio.push import task_payload

N_ITEMS = 60
GOLD = list(range(1, 13))  # items 1..12 are gold, four per class


@pytest.fixture
def pool(project):
    """60 items in three Gaussian blobs in the feature cache; items 1-12 are gold."""
    rng = np.random.default_rng(0)
    truth = np.array(CLASSES)[np.arange(N_ITEMS) % 3]
    X = rng.normal(size=(N_ITEMS, 8)).astype(np.float32)
    X[:, :3] += 3 * np.eye(3, dtype=np.float32)[np.arange(N_ITEMS) % 3]
    shas = [f"{i:064x}" for i in range(N_ITEMS)]
    with project.store.session() as s:
        for i in range(N_ITEMS):
            s.add(Item(id=i + 1, sha256=shas[i], path=f"img/{i}.png", width=8, height=8))
        for i in GOLD:
            s.add(Label(item_id=i, label=str(truth[i - 1]), origin="manifest", is_gold=True))
    FeatureCache(project.features_dir, cache_key_for(project.config.embed, root=project.root)
                 ).put(shas, X.astype(np.float16))
    return truth


@pytest.mark.parametrize(("batch", "rate", "available", "expected"), [
    (20, 0.0, 10, 0), (20, 0.1, 10, 2), (20, 0.1, 1, 1), (10, 0.01, 5, 1),  # at least one
    (10, 0.25, 5, 2), (10, 0.35, 5, 4), (2, 0.5, 5, 1), (1, 0.5, 5, 0),     # never all gold
    (20, 0.5, 0, 0),
])
def test_gold_count(batch: int, rate: float, available: int, expected: int) -> None:
    assert gold_count(batch, rate, available) == expected


def test_plan_mixes_seeded_gold_that_looks_like_the_rest(project, pool) -> None:
    project.config.rounds.gold_rate = 0.2
    plan = plan_batch(project, batch_size=10, strategy="margin")
    gold = [it for it in plan.items if it.is_gold]
    assert len(plan.items) == 10 and len(gold) == 2  # round(10 * 0.2)
    assert {it.item_id for it in gold} <= set(GOLD)
    assert not {it.item_id for it in plan.items if not it.is_gold} & set(GOLD)
    assert [it.rank for it in plan.items] == list(range(10))
    # a gold item carries the head's prediction and a score between its neighbours'
    scores = [it.score for it in plan.items]
    assert scores == sorted(scores)
    truth = dict(enumerate(pool, start=1))
    for it in gold:
        assert it.predicted in CLASSES and it.predicted == truth[it.item_id]  # easy blobs
        assert 0.0 <= it.score <= 1.0
    # seeded: the same state gives the same plan
    again = plan_batch(project, batch_size=10, strategy="margin")
    assert [(it.item_id, it.is_gold, it.score) for it in again.items] == \
        [(it.item_id, it.is_gold, it.score) for it in plan.items]


def test_gold_not_shown_before_comes_first_and_record_plan_marks_it(project, pool) -> None:
    project.config.rounds.gold_rate = 0.3
    rnd = create_round(project.store, strategy="margin", batch_size=1, overlap=1)
    shown = GOLD[:9]  # only gold items 10, 11, 12 were never shown
    with project.store.session() as s:
        s.add_all([Selection(round_id=rnd.id, item_id=i, rank=0, score=0.0, is_gold=True)
                   for i in shown])
    plan = plan_batch(project, batch_size=10, strategy="margin")
    assert sorted(it.item_id for it in plan.items if it.is_gold) == [10, 11, 12]
    plan = plan_batch(project, batch_size=20, strategy="margin")  # 6 gold: 3 fresh + 3 shown
    gold = {it.item_id for it in plan.items if it.is_gold}
    assert len(gold) == 6 and {10, 11, 12} <= gold
    rnd2_id = _next_round(project)
    assert record_plan(project.store, rnd2_id, plan) == 20
    with project.store.session() as s:
        rows = dict(s.execute(select(Selection.item_id, Selection.is_gold)
                              .where(Selection.round_id == rnd2_id)).all())
        metrics = s.get(Round, rnd2_id).metrics
    assert {i for i, g in rows.items() if g} == gold and metrics["gold_items"] == 6


def _next_round(project) -> int:
    with project.store.session() as s:
        for r in s.scalars(select(Round)):
            r.status = "closed"
    return create_round(project.store, strategy="margin", batch_size=20, overlap=3).id


def test_without_head_gold_gets_rank_scores_and_no_prediction(project, pool) -> None:
    with project.store.session() as s:  # gold in one class only: no head can be trained
        for lab in s.scalars(select(Label)):
            lab.label = "cat"
    project.config.rounds.gold_rate = 0.25
    plan = plan_batch(project, batch_size=8, strategy="margin")
    assert plan.model_version is None and sum(it.is_gold for it in plan.items) == 2
    assert [it.score for it in plan.items] == [r / 8 for r in range(8)]
    assert all(it.predicted is None for it in plan.items)


def test_gold_task_looks_like_any_other_task(project, pool) -> None:
    project.config.rounds.gold_rate = 0.2
    rnd = create_round(project.store, strategy="margin", batch_size=10, overlap=3)
    record_plan(project.store, rnd.id, plan_batch(project, batch_size=10, strategy="margin"))
    with project.store.session() as s:
        rnd = s.get(Round, rnd.id)
        rows = s.execute(select(Selection, Item).join(Item, Item.id == Selection.item_id)
                         .where(Selection.round_id == rnd.id)).all()
    payloads = {sel.is_gold: task_payload(sel, item, rnd, image_base="/data/local-files/?d=x",
                                          model_version="m-1") for sel, item in rows}
    gold, other = payloads[True], payloads[False]
    assert set(gold["data"]) == set(other["data"]) == {"image", "item_id", "round", "sha256"}
    assert set(gold["predictions"][0]) == set(other["predictions"][0])
    assert gold["predictions"][0]["result"] and "gold" not in repr(gold).lower()


def test_close_never_counts_gold_as_consensus_and_measures_annotators(project) -> None:
    project.config.agreement.consensus = "majority"  # these ties are majority vote's
    # items 0-5 are gold (truth: cat); ann-c always says dog, ann-a/b are right
    votes = {k: ["cat", "cat", "dog"] for k in range(6)}
    votes[6] = ["dog", "bird", "cat"]      # gold, tied: still no adjudication
    votes.update({7: ["bird", "bird", "bird"], 8: ["dog", "dog", "cat"],
                  9: ["cat", "dog", "bird"]})  # 9: a real tie
    gold = {k: "cat" for k in range(7)}
    rid, ids = voted_round(project, votes, gold=gold)
    m = close_round(project, rid)
    with project.store.session() as s:
        labels = {lab.item_id: lab for lab in s.scalars(select(Label))}
    for k in range(7):
        lab = labels[ids[k]]
        assert (lab.label, lab.origin, lab.round_id) == ("cat", "manifest", None)
    assert labels[ids[7]].origin == "consensus" and labels[ids[8]].label == "dog"
    assert m.adjudication_items == [ids[9]] and ids[9] not in labels
    assert m.consensus_items == 3 and sum(m.consensus.values()) == 3
    assert m.consensus == {"agreed": 2, "tie": 1}
    by = {a["annotator"]: a for a in m.annotators}
    assert by["ann-a"]["n_gold"] == by["ann-c"]["n_gold"] == 7
    assert by["ann-a"]["gold_accuracy"] == pytest.approx(6 / 7)  # wrong on item 6
    assert by["ann-c"]["gold_accuracy"] == pytest.approx(1 / 7)
    assert by["ann-c"]["flagged"] and any("gold" in r for r in by["ann-c"]["reasons"])
    assert not by["ann-a"]["flagged"]


@pytest.mark.parametrize(("p", "n"), [(0.2, 10), (0.5, 8), (0.85, 60), (0.0, 5), (1.0, 7)])
def test_wilson_upper_matches_statsmodels(p: float, n: int) -> None:
    # one-sided 90% = upper end of the two-sided 80% interval
    _low, high = proportion_confint(round(p * n), n, alpha=0.20, method="wilson")
    assert wilson_upper(round(p * n) / n, n) == pytest.approx(high, abs=1e-3)


def _simulated(seed: int, n: int, k: int = 3) -> tuple:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    cols = [np.where(rng.random(n) < 0.85, truth, (truth + rng.integers(1, k, n)) % k)
            for _ in range(2)] + [rng.integers(0, k, n)]
    classes = [f"c{i}" for i in range(k)]
    votes = [(i, f"a{j}", classes[cols[j][i]]) for i in range(n) for j in range(3)]
    return ratings_matrix(votes, classes), truth


@pytest.mark.parametrize("seed", range(5))
def test_random_annotator_flagged_good_ones_not_with_three_annotators(seed: int) -> None:
    """With one random annotator among three, peer figures would flag the good ones too
    (their mean peer kappa is about 0.3); the round's flags do not."""
    ratings, _truth = _simulated(seed, 80)
    rep = annotator_report(ratings, gold=np.full(80, -1), lead_times=np.full((80, 3), np.nan),
                           n_classes=3, min_accuracy=0.7)
    assert [a["flagged"] for a in rep] == [False, False, True]
    assert rep[2]["model_accuracy"] < min(rep[0]["model_accuracy"], rep[1]["model_accuracy"])
    assert rep[0]["peer_kappa"] < 0.4 and rep[0]["peer_notes"]  # what peer kappa would say
