"""Annotator quality: hand-computed leave-one-out figures and flagging."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from alearn.exceptions import ConfigError
from alearn.stats.annotators import annotator_quality
from alearn.stats.ratings import ratings_matrix

_ = -1
# Worked by hand (others' majority per item; "tie" items are left out):
#          ann0 ann1 ann2   others for ann0 | ann1      | ann2
R_HAND = np.array([
    [0, 0, 0],            # 0,0 -> 0 ok     | 0 ok      | 0 ok
    [0, 1, 1],            # 1,1 -> 1 wrong  | 0/1 tie   | 0/1 tie
    [1, 1, 0],            # 1/0 tie         | 1/0 tie   | 1,1 -> 1 wrong
    [2, _, 2],            # 2 -> 2 ok       | not rated | 2 -> 2 ok
    [0, 1, 2],            # 1/2 tie         | 0/2 tie   | 0/1 tie
])


def test_leave_one_out_accuracy_by_hand() -> None:
    q = annotator_quality(R_HAND, min_items=1)
    assert [x.loo_accuracy for x in q] == pytest.approx([2 / 3, 1.0, 2 / 3])
    assert [x.n_loo for x in q] == [3, 1, 3]
    assert [x.n_items for x in q] == [5, 4, 5]
    # ann0's confusion: rows = others' majority, cols = ann0's label
    expected = np.zeros((3, 3), dtype=int)
    expected[0, 0] = expected[1, 0] = expected[2, 2] = 1
    assert np.array_equal(q[0].confusion, expected)
    assert q[2].confusion[1, 0] == 1 and q[2].confusion.sum() == 3


def test_peer_kappa_is_mean_of_pairwise_cohen() -> None:
    q = annotator_quality(R_HAND, min_items=1)
    k01 = cohen_kappa_score([0, 0, 1, 0], [0, 1, 1, 1])
    both = R_HAND[:, 0] >= 0
    k02 = cohen_kappa_score(R_HAND[both, 0], R_HAND[both, 2])
    assert q[0].peer_kappa == pytest.approx((k01 + k02) / 2)
    assert q[0].n_peers == 2


def test_gold_and_lead_times() -> None:
    gold = np.array([0, 1, -1, 2, 2])
    times = np.array([[3.0, 9, 1], [5, 9, 1], [4, 9, 1], [100, np.nan, 1], [np.nan, 9, 1]])
    q = annotator_quality(R_HAND, gold=gold, lead_times=times, min_items=1)
    # ann0 on gold items 0, 1, 3, 4: 0=0 ok, 0!=1, 2=2 ok, 0!=2 -> 2/4
    assert q[0].gold_accuracy == pytest.approx(0.5) and q[0].n_gold == 4
    assert q[1].gold_accuracy == pytest.approx(2 / 3)  # items 0, 1, 4: ok, ok, wrong
    assert q[0].median_seconds == pytest.approx(4.5)  # 3, 5, 4, 100 (item 4 is NaN)
    assert q[1].median_seconds == 9.0  # its item 3 is not rated: ignored
    assert annotator_quality(R_HAND)[0].median_seconds is None


def test_random_annotator_is_flagged() -> None:
    rng = np.random.default_rng(0)
    n, k = 400, 4
    truth = rng.integers(0, k, n)
    R = np.column_stack(
        [np.where(rng.random(n) < 0.95, truth, rng.integers(0, k, n)) for _ in range(3)]
        + [rng.integers(0, k, n)]
    )
    q = annotator_quality(R, min_accuracy=0.7, min_kappa=0.4)
    assert [x.flagged for x in q] == [False, False, False, True]
    assert len(q[3].reasons) == 2
    assert "accuracy" in q[3].reasons[0] and "kappa" in q[3].reasons[1]
    assert q[3].loo_accuracy < 0.4 and q[0].loo_accuracy > 0.9
    gold = np.where(np.arange(n) < 50, truth, -1)
    q = annotator_quality(R, gold=gold)
    assert q[3].gold_accuracy < 0.5 and any("gold" in r for r in q[3].reasons)
    json.dumps([x.to_dict() for x in q], allow_nan=False)


def test_min_items_guards_flags_and_names_come_from_ratings() -> None:
    votes = [("i1", "ann", "a"), ("i1", "bob", "a"), ("i1", "cy", "b"),
             ("i2", "ann", "b"), ("i2", "bob", "b"), ("i2", "cy", "a")]
    r = ratings_matrix(votes, ["a", "b"])
    q = annotator_quality(r)  # cy is always wrong, but on 2 items only
    assert [x.annotator for x in q] == ["ann", "bob", "cy"]
    assert q[2].loo_accuracy == 0.0 and not q[2].flagged
    assert annotator_quality(r, min_items=2)[2].flagged


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="gold must be"):
        annotator_quality(R_HAND, gold=[0, 1])
    with pytest.raises(ConfigError, match="outside -1..2"):
        annotator_quality(R_HAND, gold=np.array([0, 1, 3, -1, -1]))
    with pytest.raises(ConfigError, match="lead_times"):
        annotator_quality(R_HAND, lead_times=np.zeros((5, 2)))
