"""Annotators' track records carried between rounds: each close records its soft
confusion counts; a later round's Dawid-Skene and model-aware consensus start from them,
so a reliable annotator's single vote settles where one round alone cannot tell."""

from __future__ import annotations

import numpy as np
import pytest
from factories import ANNOTATORS
from sqlalchemy import delete
from test_adaptive_round import CLASSES3, adaptive_round

from alearn.exceptions import ConfigError
from alearn.project import Project
from alearn.rounds import metrics as round_metrics
from alearn.rounds.adaptive_round import decide, posterior
from alearn.rounds.annotator_record import carried_counts, round_counts
from alearn.rounds.close import close_round
from alearn.rounds.lifecycle import get_round
from alearn.rounds.votes import tally
from alearn.stats.consensus import dawid_skene, model_aware
from alearn.store import Annotation, Round


def test_round_counts_sum_the_posteriors_by_the_label_given() -> None:
    matrix = np.array([[0, 1], [1, -1], [0, 0]])
    post = np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])
    gold = np.array([-1, -1, 1])  # item 2 is gold: it counts at its true class
    got = round_counts(["a", "b"], matrix, post, gold)
    # a said 0 on items 0 and 2, 1 on item 1; rows: true class, columns: the label given
    assert got["a"] == [[0.8, 0.3], [0.2 + 1.0, 0.7]]
    assert got["b"] == [[0.0, 0.8], [1.0, 0.2]]
    assert round_counts(["a"], np.array([[-1]]), np.array([[0.5, 0.5]]), np.array([-1])) == {}


def test_a_track_record_is_read_as_the_annotators_confusion() -> None:
    k = 3
    conf = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])  # [c, l]
    R = np.array([[0], [1], [2], [0], [1], [0]])  # one annotator, one vote each
    # a record this large fixes the confusion: the posterior is Bayes' rule with the
    # fitted class priors (checked by hand here, not by the EM)
    ds = dawid_skene(R, n_classes=k, prior_counts=1e7 * conf[None])
    expected = ds.priors[None, :] * conf[:, R[:, 0]].T
    expected /= expected.sum(1, keepdims=True)
    assert np.allclose(ds.posteriors, expected, atol=1e-4)
    # a reliable record settles single votes; a random one leaves them unsettled
    sure = dawid_skene(R, n_classes=k, prior_counts=np.full((1, k, k), 0.1)
                       + 200 * np.eye(k)[None])
    unsure = dawid_skene(R, n_classes=k, prior_counts=np.full((1, k, k), 50.0))
    alone = dawid_skene(R, n_classes=k)
    assert sure.confidence.min() > 0.99 and unsure.confidence.max() < 0.6
    P = np.full((6, k), 1.0 / k)
    aware = model_aware(R, n_classes=k, pred_probs=P,
                        prior_counts=np.full((1, k, k), 0.1) + 200 * np.eye(k)[None])
    assert aware.confidence.min() > 0.99
    assert np.allclose(dawid_skene(R, n_classes=k, prior_counts=np.zeros((1, k, k))).posteriors,
                       alone.posteriors)
    with pytest.raises(ConfigError, match="prior_counts"):
        dawid_skene(R, n_classes=k, prior_counts=np.ones((2, k, k)))
    with pytest.raises(ConfigError, match="prior_counts"):
        model_aware(R, n_classes=k, pred_probs=P, prior_counts=-np.ones((1, k, k)))


def test_a_later_round_reads_the_record_of_the_closed_rounds_before_it(proj: Project) -> None:
    proj.config.agreement.consensus = "dawid_skene"
    rng = np.random.default_rng(3)
    truth = {k: CLASSES3[int(rng.integers(0, 3))] for k in range(60)}
    # round 1: 30 items, three votes each; ann-a and ann-b always right, ann-c on a third
    first = {k: [truth[k], truth[k],
                 truth[k] if k % 3 else CLASSES3[(CLASSES3.index(truth[k]) + 1) % 3]]
             for k in range(30)}
    r1, _ = adaptive_round(proj, first)
    m1 = close_round(proj, r1)
    who = [f"{a}" for a in ANNOTATORS]
    assert set(m1.annotator_counts) == set(who)
    a = np.array(m1.annotator_counts["ann-a"])
    assert a.sum() == pytest.approx(30) and np.trace(a) > 29
    # round 2: one vote each, from ann-a or ann-b
    second: dict[int, list[str | None]] = {
        k: [truth[k]] if k % 2 else [None, truth[k]] for k in range(30, 60)}
    r2, ids = adaptive_round(proj, second)
    votes = tally(proj, [r2])
    carried = carried_counts(proj.store, r2, votes.ratings.annotators, 3)
    assert sorted(votes.ratings.annotators) == ["ann-a", "ann-b"]
    col = list(votes.ratings.annotators).index("ann-a")
    assert carried is not None and np.allclose(carried[col], a)
    assert carried_counts(proj.store, r1, votes.ratings.annotators, 3) is None
    # one round alone cannot tell how good ann-a is; its record settles the votes
    assert posterior(proj, votes.ratings).max() < 0.95
    assert posterior(proj, votes.ratings, r2).min() >= 0.95
    decision = decide(proj, r2)
    assert decision is not None and set(decision.wanted.values()) == {1}
    m2 = close_round(proj, r2)
    assert m2.consensus == {"agreed": 30}
    # round 1 recomputed after round 2 closed: it does not read later rounds
    again = close_round(proj, r1, recompute=True)
    assert again.annotator_counts == m1.annotator_counts
    # a record that is not a 3 x 3 table of counts is left out, and the rest still read:
    # another shape (the classes changed since), text, a ragged list, huge or negative
    for bad in ([[1.0, 0.0], [0.0, 1.0]], "abc", {"x": 1}, [[1, 2], [3]],
                [["a", "b", "c"]] * 3, [[1e308] * 3] * 3, [[-1.0] * 3] * 3,
                [[10**400] * 3] * 3):  # an integer too large for a float
        with round_metrics.editing(proj.store, r1) as m:
            m.annotator_counts = {"ann-a": bad, "ann-b": m1.annotator_counts["ann-b"]}
        got = carried_counts(proj.store, r2, votes.ratings.annotators, 3)
        assert got is not None and not got[col].any()
        assert np.allclose(got[1 - col], m1.annotator_counts["ann-b"])
        assert posterior(proj, votes.ratings, r2).shape == (30,)
    # a whole record that is not a table of annotators reads as none
    with proj.store.session() as s:
        row = s.get(Round, r1)
        assert row is not None
        row.metrics = {**row.metrics, "annotator_counts": "not a record"}
    assert round_metrics.of(get_round(proj.store, r1)).annotator_counts == {}
    assert carried_counts(proj.store, r2, votes.ratings.annotators, 3) is None
    close_round(proj, r2, recompute=True)  # and a close goes on without it


def test_a_record_the_database_cannot_read_is_read_row_by_row(project: Project) -> None:
    """SQLite's JSON functions refuse a whole query over one metrics text they cannot
    parse (a NaN token, which Python's json reads); the rows are then read one by one
    and the unreadable record skipped."""
    from sqlalchemy import text

    first = {k: [CLASSES3[k % 3]] * 3 for k in range(12)}
    r1, _ = adaptive_round(project, first)
    close_round(project, r1)
    r2, _ = adaptive_round(project, {k: [CLASSES3[k % 3]] * 3 for k in range(12, 24)})
    close_round(project, r2)
    r3, _ = adaptive_round(project, {k: [CLASSES3[k % 3]] for k in range(24, 30)})
    with project.store.session() as s:
        s.execute(text("UPDATE rounds SET metrics = :m WHERE id = :i"),
                  {"m": '{"annotator_counts": {"ann-a": [[NaN, 0, 0], [0, 1, 0], [0, 0, 1]]}}',
                   "i": r1})
    with project.store.session() as s, pytest.raises(Exception, match="malformed JSON"):
        s.execute(text("SELECT json_extract(metrics, '$.annotator_counts') FROM rounds"))
    got = carried_counts(project.store, r3, ["ann-a"], 3)  # round 2's record alone
    two = round_metrics.of(get_round(project.store, r2)).annotator_counts["ann-a"]
    assert got is not None and np.allclose(got[0], two)


def test_a_round_recomputed_without_votes_leaves_no_record(proj: Project) -> None:
    proj.config.agreement.consensus = "dawid_skene"
    r1, _ = adaptive_round(proj, {k: ["cat", "cat", "dog"] for k in range(10)})
    m1 = close_round(proj, r1)
    assert m1.annotator_counts and m1.annotators
    r2, _ = adaptive_round(proj, {k: ["dog"] for k in range(10, 20)})
    votes = tally(proj, [r2])
    assert carried_counts(proj.store, r2, votes.ratings.annotators, 3) is not None
    with proj.store.session() as s:  # every vote of round 1 withdrawn in Label Studio
        s.execute(delete(Annotation).where(Annotation.round_id == r1))
    again = close_round(proj, r1, recompute=True)
    assert (again.annotator_counts, again.annotators, again.kappa) == ({}, [], None)
    assert round_metrics.of(get_round(proj.store, r1)).annotator_counts == {}
    assert carried_counts(proj.store, r2, votes.ratings.annotators, 3) is None
