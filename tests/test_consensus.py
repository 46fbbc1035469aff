"""Consensus: majority vote by hand, Dawid-Skene against a slow loop reference."""

from __future__ import annotations

import numpy as np
import pytest

from alearn.exceptions import ConfigError, UnknownNameError
from alearn.stats.consensus import (
    CONSENSUS_METHODS,
    dawid_skene,
    get_consensus,
    majority_vote,
)

_ = -1


def test_majority_by_hand() -> None:
    R = np.array([
        [0, 0, 1],   # 2 of 3 for class 0
        [2, 2, 2],   # unanimous
        [0, 1, _],   # tie 0/1
        [2, 1, _],   # tie 1/2
        [_, _, _],   # nobody voted
        [_, 1, _],   # a single vote
    ])
    res = majority_vote(R, n_classes=3)
    assert res.labels.tolist() == [0, 2, -1, -1, -1, 1]
    assert res.status.tolist() == ["agreed", "agreed", "tie", "tie", "no_votes", "agreed"]
    assert res.confidence == pytest.approx([2 / 3, 1, 0.5, 0.5, 0, 1])
    assert res.votes.tolist()[0] == [2, 1, 0]
    first = majority_vote(R, n_classes=3, tie_policy="first")
    assert first.labels.tolist() == [0, 2, 0, 1, -1, 1]
    assert first.status.tolist()[2:4] == ["tie", "tie"]
    strict = majority_vote(R, n_classes=3, min_confidence=0.7)
    assert strict.status.tolist()[0] == "low_confidence" and strict.labels[0] == 0


def test_records_per_item() -> None:
    res = majority_vote(np.array([[0, 0, 1], [0, 1, _]]), n_classes=2)
    recs = res.records(["a", "b"])
    assert recs[0].item == "a" and recs[0].label == 0 and recs[0].votes == (2, 1)
    assert recs[1].label is None and recs[1].status == "tie"
    assert recs[1].to_dict()["confidence"] == 0.5
    assert res.status_counts() == {"agreed": 1, "tie": 1}
    with pytest.raises(ConfigError, match="1 item ids for 2"):
        res.records(["a"])


def test_registry_and_bad_options() -> None:
    assert get_consensus("majority") is majority_vote
    assert get_consensus("dawid_skene") is dawid_skene
    with pytest.raises(UnknownNameError, match="dawid_skene, majority"):
        get_consensus("mode")
    for fn in CONSENSUS_METHODS.values():
        with pytest.raises(UnknownNameError, match="tie policy"):
            fn(np.array([[0, 1]]), tie_policy="coin")
        with pytest.raises(ConfigError, match="min_confidence"):
            fn(np.array([[0, 1]]), min_confidence=1.5)


def simulate(n: int, seed: int, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Five annotators, three per item: two good, one so-so, one biased, one random."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    acc = np.array([0.9, 0.85, 0.7, 0.6, 0.0])
    R = np.full((n, 5), -1)
    who = np.argsort(rng.random((n, 5)), axis=1)[:, :3]
    for s in range(3):
        j = who[:, s]
        wrong = (truth + rng.integers(1, k, n)) % k
        wrong = np.where((j == 3) & (truth < 2), 1 - truth, wrong)  # annotator 3 mixes 0/1
        lab = np.where(rng.random(n) < acc[j], truth, wrong)
        lab = np.where(j == 4, rng.integers(0, k, n), lab)
        R[np.arange(n), j] = lab
    return R, truth


def test_dawid_skene_beats_majority_on_a_mixed_panel() -> None:
    R, truth = simulate(3000, seed=1)
    mv = majority_vote(R, n_classes=4, tie_policy="first")
    ds = dawid_skene(R, n_classes=4)
    assert ds.converged
    mv_acc, ds_acc = np.mean(mv.labels == truth), np.mean(ds.labels == truth)
    assert ds_acc > mv_acc + 0.03, (mv_acc, ds_acc)
    # it also learns who is good: the random annotator's diagonal is near chance
    diag = np.diagonal(ds.confusion, axis1=1, axis2=2).mean(1)
    assert diag[0] > 0.8 and diag[4] < 0.4


def test_dawid_skene_symmetric_votes_are_a_tie() -> None:
    R = np.array([[0, 1], [1, 0]])
    ds = dawid_skene(R, n_classes=2)
    assert ds.status.tolist() == ["tie", "tie"] and ds.labels.tolist() == [-1, -1]
    assert ds.confidence == pytest.approx([0.5, 0.5])
    assert dawid_skene(R, n_classes=2, tie_policy="first").labels.tolist() == [0, 0]


def test_dawid_skene_unanimous_is_confident() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 200)
    R = np.repeat(truth[:, None], 3, axis=1)
    ds = dawid_skene(R, n_classes=3)
    assert np.array_equal(ds.labels, truth)
    assert ds.confidence.min() > 0.99
    assert set(ds.status) == {"agreed"}


def test_dawid_skene_is_deterministic_and_handles_unrated_items() -> None:
    R, _truth = simulate(500, seed=2)
    R[:5] = -1
    a, b = dawid_skene(R, n_classes=4), dawid_skene(R, n_classes=4)
    assert np.array_equal(a.posteriors, b.posteriors) and np.array_equal(a.labels, b.labels)
    assert a.status[:5].tolist() == ["no_votes"] * 5 and a.labels[:5].tolist() == [-1] * 5
    assert np.allclose(a.posteriors.sum(1), 1)
    empty = dawid_skene(np.full((3, 2), -1), n_classes=2)
    assert empty.status.tolist() == ["no_votes"] * 3


def ds_reference(R: np.ndarray, k: int, n_iter: int, smoothing: float) -> np.ndarray:
    """Dawid-Skene written out with loops and products, item by item (slow, obvious)."""
    n, a = R.shape
    T = []
    for i in range(n):
        v = [sum(1 for j in range(a) if R[i, j] == c) for c in range(k)]
        T.append([x / sum(v) for x in v])
    for _ in range(n_iter):
        conf = [[[smoothing] * k for _c in range(k)] for _j in range(a)]
        for i in range(n):
            for j in range(a):
                if R[i, j] >= 0:
                    for c in range(k):
                        conf[j][c][R[i, j]] += T[i][c]
        for j in range(a):
            for c in range(k):
                s = sum(conf[j][c])
                conf[j][c] = [x / s for x in conf[j][c]]
        prior = [(sum(T[i][c] for i in range(n)) + smoothing) / (n + k * smoothing)
                 for c in range(k)]
        for i in range(n):
            p = []
            for c in range(k):
                x = prior[c]
                for j in range(a):
                    if R[i, j] >= 0:
                        x *= conf[j][c][R[i, j]]
                p.append(x)
            T[i] = [x / sum(p) for x in p]
    return np.array(T)


@pytest.mark.parametrize("n_iter", [1, 3, 25])
def test_dawid_skene_matches_loop_reference(n_iter: int) -> None:
    R, _truth = simulate(40, seed=7, k=3)
    R[np.random.default_rng(8).random(R.shape) < 0.15] = -1
    R = R[(R >= 0).any(1)]
    ds = dawid_skene(R, n_classes=3, max_iter=n_iter, tol=0.0, smoothing=0.5)
    ref = ds_reference(R, 3, n_iter, 0.5)
    assert ds.n_iter == n_iter
    np.testing.assert_allclose(ds.posteriors, ref, atol=1e-10)
    assert np.array_equal(ds.labels, ref.argmax(1))
    assert ds.confidence == pytest.approx(ref.max(1))


def test_dawid_skene_bad_options() -> None:
    with pytest.raises(ConfigError, match="smoothing > 0"):
        dawid_skene(np.array([[0, 1]]), smoothing=0)
