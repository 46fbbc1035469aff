"""Agreement statistics against reference implementations and published examples."""

from __future__ import annotations

import json

import krippendorff
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

from alearn.exceptions import ConfigError
from alearn.stats.agreement import (
    agreement_report,
    fleiss_kappa,
    gwet_ac1,
    krippendorff_alpha,
    per_class_agreement,
    percent_agreement,
)
from alearn.stats.pairwise import cohen_kappa, pairwise_kappa
from alearn.stats.ratings import check_ratings, ratings_matrix

# --- published examples ---------------------------------------------------------------
# Gwet, Handbook of Inter-Rater Reliability (4th ed.), as printed in the irrCAC README:
# 12 subjects, 4 raters, 5 categories (1..5 -> 0..4), NA = not rated.
_ = -1
RAW4RATERS = np.array([
    [0, 0, _, 0], [1, 1, 2, 1], [2, 2, 2, 2], [2, 2, 2, 2], [1, 1, 1, 1], [0, 1, 2, 3],
    [3, 3, 3, 3], [0, 0, 1, 0], [1, 1, 1, 1], [_, 4, 4, 4], [_, _, 0, 0], [_, _, 2, _],
])
# Same source, "distrib.6raters": 15 subjects, 6 raters each; counts per category.
DISTRIB_6RATERS = np.array([
    [0, 0, 0, 6, 0], [0, 3, 0, 0, 3], [0, 1, 4, 0, 1], [0, 0, 0, 0, 6], [0, 3, 0, 3, 0],
    [2, 0, 4, 0, 0], [0, 0, 4, 0, 2], [2, 0, 3, 1, 0], [2, 0, 0, 4, 0], [0, 0, 0, 0, 6],
    [1, 0, 0, 5, 0], [1, 1, 0, 4, 0], [0, 3, 3, 0, 0], [1, 0, 0, 5, 0], [0, 2, 0, 3, 1],
])
# Same source, "cont3x3abstractors": a 2-rater contingency table, 100 subjects.
CONT3X3 = np.array([[13, 0, 0], [0, 20, 7], [0, 4, 56]])
# Wikipedia's "Fleiss' kappa" worked example: 10 subjects, 14 raters, 5 categories.
# P-bar = 0.378, P-bar_e = 0.213, kappa = (0.378 - 0.213) / (1 - 0.213) = 0.210.
WIKI_FLEISS = np.array([
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
])


def counts_to_ratings(counts: np.ndarray) -> np.ndarray:
    """One row per subject, raters filled in class order (Fleiss-type data)."""
    return np.array([np.repeat(np.arange(counts.shape[1]), row) for row in counts])


def table_to_ratings(table: np.ndarray) -> np.ndarray:
    a, b = np.indices(table.shape)
    return np.repeat(np.column_stack([a.ravel(), b.ravel()]), table.ravel(), axis=0)


def test_gwet_handbook_raw4raters_with_missing_ratings() -> None:
    assert gwet_ac1(RAW4RATERS, n_classes=5).value == pytest.approx(0.77544, abs=5e-6)
    assert percent_agreement(RAW4RATERS, n_classes=5).value == pytest.approx(9 / 11)
    assert krippendorff_alpha(RAW4RATERS, n_classes=5).value == pytest.approx(0.74342, abs=5e-6)


def test_gwet_handbook_distrib_6raters() -> None:
    R = counts_to_ratings(DISTRIB_6RATERS)
    assert fleiss_kappa(R, n_classes=5).value == pytest.approx(0.4139265, abs=1e-7)
    assert gwet_ac1(R, n_classes=5).value == pytest.approx(0.4448007, abs=1e-7)
    assert krippendorff_alpha(R, n_classes=5).value == pytest.approx(0.4204384, abs=1e-7)


def test_gwet_handbook_two_raters_contingency_table() -> None:
    R = table_to_ratings(CONT3X3)
    assert cohen_kappa(R[:, 0], R[:, 1]).value == pytest.approx(0.7964094, abs=1e-7)
    assert gwet_ac1(R, n_classes=3).value == pytest.approx(0.8493305, abs=1e-7)
    assert krippendorff_alpha(R).value == pytest.approx(0.7972585, abs=1e-7)
    assert percent_agreement(R).value == pytest.approx(0.89)


def test_fleiss_wikipedia_example() -> None:
    est = fleiss_kappa(counts_to_ratings(WIKI_FLEISS))
    assert est.value == pytest.approx(0.210, abs=5e-4)
    assert est.value == pytest.approx(sm_fleiss(WIKI_FLEISS))
    assert est.n_items == 10


def test_cohen_kappa_by_hand() -> None:
    # 2 raters, 6 items: agree on 4 (p_o = 4/6). Rater x: 0,0,0,1,1,1; y: 0,0,1,1,1,0.
    # Marginals 1/2 each for both, so p_e = 1/2 and kappa = (2/3 - 1/2) / (1/2) = 1/3.
    est = cohen_kappa([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 0], n_boot=0)
    assert est.value == pytest.approx(1 / 3)
    assert est.n_items == 6 and est.ci_low is None


# --- random data against the references -------------------------------------------------
@st.composite
def ratings(draw: st.DrawFn, min_annotators: int = 2, missing: bool = True) -> np.ndarray:
    n = draw(st.integers(4, 40))
    a = draw(st.integers(min_annotators, 5))
    k = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    R = np.where(rng.random((n, a)) < draw(st.floats(0, 1)), truth[:, None],
                 rng.integers(0, k, (n, a)))
    if missing:
        R[rng.random((n, a)) < draw(st.floats(0, 0.5))] = -1
    return R


FAST = settings(max_examples=40, deadline=None)


@FAST
@given(ratings())
def test_pairwise_kappa_matches_sklearn(R: np.ndarray) -> None:
    pk = pairwise_kappa(R, n_boot=0)
    for (i, j), est in pk.pairs.items():
        both = (R[:, i] >= 0) & (R[:, j] >= 0)
        assert est.n_items == both.sum()
        if est.value is None:
            assert est.reason.startswith("not computable, because")
            continue
        ref = cohen_kappa_score(R[both, i], R[both, j])
        assert est.value == pytest.approx(ref, abs=1e-9)
        assert pk.matrix()[i, j] == pytest.approx(ref, abs=1e-9)


@FAST
@given(ratings(missing=False))
def test_fleiss_matches_statsmodels(R: np.ndarray) -> None:
    est = fleiss_kappa(R, n_classes=int(R.max()) + 1, n_boot=0)
    table, _ = aggregate_raters(R, n_cat=int(R.max()) + 1)
    if len(np.unique(R)) == 1:
        assert est.value is None
    else:
        assert est.value == pytest.approx(sm_fleiss(table), abs=1e-9)
    assert est.n_items == len(R)


@FAST
@given(ratings())
def test_alpha_matches_krippendorff_package(R: np.ndarray) -> None:
    est = krippendorff_alpha(R, n_boot=0)
    pairable = R[(R >= 0).sum(1) >= 2]
    values = np.unique(pairable[pairable >= 0])
    if len(values) < 2:
        assert est.value is None and "not computable" in est.reason
        return
    data = np.where(R < 0, np.nan, R).T.astype(float)
    ref = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert est.value == pytest.approx(ref, abs=1e-9)


@FAST
@given(ratings(), st.data())
def test_ac1_is_invariant_to_relabelling_and_column_order(R: np.ndarray, data) -> None:
    k = int(R.max()) + 1
    perm_cls = np.array(data.draw(st.permutations(range(k))))
    perm_col = np.array(data.draw(st.permutations(range(R.shape[1]))))
    R2 = np.where(R < 0, -1, perm_cls[np.maximum(R, 0)])[:, perm_col]
    a, b = gwet_ac1(R, n_classes=k, n_boot=0), gwet_ac1(R2, n_classes=k, n_boot=0)
    assert (a.value is None) == (b.value is None)
    if a.value is not None:
        assert a.value == pytest.approx(b.value, abs=1e-12)
        assert a.value <= 1 + 1e-12


@FAST
@given(ratings(min_annotators=2, missing=False), st.integers(2, 5))
def test_ac1_two_raters_matches_gwet_two_rater_formula(R: np.ndarray, k_extra: int) -> None:
    R = R[:, :2]
    k = int(R.max()) + k_extra
    table = np.zeros((k, k))
    np.add.at(table, (R[:, 0], R[:, 1]), 1)
    p = table / table.sum()
    pi = (p.sum(0) + p.sum(1)) / 2
    pe = (pi * (1 - pi)).sum() / (k - 1)
    expected = (np.trace(p) - pe) / (1 - pe)
    assert gwet_ac1(R, n_classes=k, n_boot=0).value == pytest.approx(expected, abs=1e-12)


# --- edge cases -------------------------------------------------------------------------
def test_one_class_only_kappa_and_alpha_undefined_ac1_defined() -> None:
    R = np.zeros((6, 3), dtype=int)
    for est in (fleiss_kappa(R, n_classes=3), krippendorff_alpha(R, n_classes=3),
                pairwise_kappa(R, n_classes=3).pairs[(0, 1)]):
        assert est.value is None and est.ci_low is None
        assert est.reason.startswith("not computable, because")
        assert "0/0" in est.reason
    ac1 = gwet_ac1(R, n_classes=3)
    assert ac1.value == 1.0 and ac1.reason is None
    assert percent_agreement(R).value == 1.0


def test_single_annotator_and_no_overlap() -> None:
    single = np.array([[0], [1], [2]])
    for fn in (fleiss_kappa, krippendorff_alpha, gwet_ac1, percent_agreement):
        est = fn(single, n_classes=3)
        assert est.value is None and "two or more ratings" in est.reason
    assert pairwise_kappa(single).pairs == {}
    apart = np.array([[0, -1], [1, -1], [-1, 0], [-1, 1]])
    est = pairwise_kappa(apart).pairs[(0, 1)]
    assert est.value is None and est.n_items == 0 and "no item in common" in est.reason
    assert np.isnan(pairwise_kappa(apart).matrix()[0, 1])


def test_all_agree_and_all_disagree() -> None:
    agree = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [1, 1, 1]])
    for fn in (fleiss_kappa, krippendorff_alpha, gwet_ac1, percent_agreement):
        assert fn(agree, n_classes=3).value == pytest.approx(1.0)
    disagree = np.array([[0, 1], [1, 0], [0, 1], [1, 0]])
    assert percent_agreement(disagree).value == 0.0
    assert cohen_kappa(disagree[:, 0], disagree[:, 1]).value == pytest.approx(-1.0)
    assert krippendorff_alpha(disagree).value < 0
    assert gwet_ac1(disagree).value == pytest.approx(-1.0)


def test_per_class_is_binary_alpha() -> None:
    R = RAW4RATERS
    per = per_class_agreement(R, n_classes=6, n_boot=0)
    for c, est in enumerate(per[:5]):
        binary = np.where(R < 0, np.nan, (R == c).astype(float)).T
        ref = krippendorff.alpha(reliability_data=binary, level_of_measurement="nominal")
        assert est.value == pytest.approx(ref, abs=1e-9)
    assert per[5].value is None and "no rating is class 5" in per[5].reason


def test_fleiss_uses_most_common_rating_count() -> None:
    R = np.array([[0, 0, 0], [1, 1, 0], [0, 1, -1], [1, 1, -1], [0, 0, -1], [2, -1, -1]])
    est = fleiss_kappa(R, n_boot=0)
    assert est.n_items == 3  # three items have 2 ratings, two have 3
    table, _ = aggregate_raters(R[2:5, :2], n_cat=3)
    assert est.value == pytest.approx(sm_fleiss(table))


# --- bootstrap ----------------------------------------------------------------------------
def test_bootstrap_is_seeded_and_matches_naive_item_resampling() -> None:
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, 300)
    R = np.where(rng.random((300, 3)) < 0.7, truth[:, None], rng.integers(0, 3, (300, 3)))
    a = krippendorff_alpha(R, n_boot=2000, seed=5)
    assert a == krippendorff_alpha(R, n_boot=2000, seed=5)
    assert a != krippendorff_alpha(R, n_boot=2000, seed=6)
    assert a.ci_low < a.value < a.ci_high
    naive = [krippendorff_alpha(R[rng.integers(0, 300, 300)], n_boot=0).value
             for _ in range(600)]
    lo, hi = np.percentile(naive, [2.5, 97.5])
    assert a.ci_low == pytest.approx(lo, abs=0.02) and a.ci_high == pytest.approx(hi, abs=0.02)


def test_report_is_json_without_nan() -> None:
    rep = agreement_report(RAW4RATERS, classes=["a", "b", "c", "d", "e", "f"], n_boot=200)
    text = json.dumps(rep.to_dict(), allow_nan=False)
    back = json.loads(text)
    assert back["gwet_ac1"]["value"] == pytest.approx(rep.gwet_ac1.value)
    assert back["per_class"]["f"]["value"] is None
    assert back["fleiss_ratings_per_item"] == 4
    assert len(back["pairwise_kappa"]["pairs"]) == 6
    assert rep.n_ratings == int((RAW4RATERS >= 0).sum())


# --- building and checking the matrix -----------------------------------------------------
def test_ratings_matrix_from_votes() -> None:
    votes = [("img1", "ann", "cat"), ("img1", "bob", 1), ("img2", "bob", "cat"),
             ("img3", "ann", None)]
    r = ratings_matrix(votes, ["cat", "dog"])
    assert r.items == ["img1", "img2"] and r.annotators == ["ann", "bob"]
    assert r.matrix.tolist() == [[0, 1], [-1, 0]]
    rep = agreement_report(r, n_boot=0)
    assert rep.classes == ["cat", "dog"]
    assert rep.pairwise_kappa.to_dict()["annotators"] == ["ann", "bob"]


@pytest.mark.parametrize("votes, match", [
    ([("i", "a", "cow")], "not one of the classes"),
    ([("i", "a", 2)], "valid indices"),
    ([("i", "a", 0), ("i", "a", 1)], "voted twice"),
    ([("i", "a", 0.5)], "type float"),
])
def test_ratings_matrix_rejects_bad_votes(votes, match) -> None:
    with pytest.raises(ConfigError, match=match):
        ratings_matrix(votes, ["cat", "dog"])


def test_check_ratings_rejects_bad_arrays() -> None:
    with pytest.raises(ConfigError, match="2-D"):
        check_ratings(np.zeros(3, dtype=int))
    with pytest.raises(ConfigError, match="integer class indices"):
        check_ratings(np.array([[0.5, 1.0]]))
    with pytest.raises(ConfigError, match="use -1"):
        check_ratings(np.array([[-2, 0]]))
    with pytest.raises(ConfigError, match="n_classes=2"):
        check_ratings(np.array([[0, 2]]), n_classes=2)
    assert check_ratings(np.array([[0.0, -1.0]]))[0].dtype == np.int64
