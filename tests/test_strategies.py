"""Query strategies: properties (hypothesis), and equality with modAL's reference code."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modAL.batch import ranked_batch as modal_ranked_batch
from modAL.uncertainty import (
    classifier_entropy,
    classifier_margin,
    classifier_uncertainty,
    entropy_sampling,
    margin_sampling,
    uncertainty_sampling,
)

from alearn.config import RoundsConfig
from alearn.exceptions import EmptyPoolError, UnknownNameError
from alearn.query.diversity import ranked_batch, typiclust
from alearn.query.strategies import (
    NEEDS_HEAD,
    STRATEGIES,
    choose_strategy,
    get_strategy,
    strategy_names,
)
from alearn.query.utilities import (
    top_n,
    uncertainty_entropy,
    uncertainty_least_confident,
    uncertainty_margin,
)


class StubClassifier:
    """Returns fixed probabilities, so modAL's classifier_* functions can be compared."""

    def __init__(self, probas: np.ndarray) -> None:
        self.probas = probas

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.probas


def _data(seed: int, n_pool: int, k: int = 4, dim: int = 3):
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(k), size=n_pool)
    X = rng.normal(size=(n_pool, dim))
    L = rng.normal(size=(int(rng.integers(1, 6)), dim))
    return P, X, L


pools = st.tuples(st.integers(0, 2**16), st.integers(1, 40), st.integers(2, 5))


@settings(max_examples=25, deadline=None)
@given(pool=pools, n=st.integers(1, 60), name=st.sampled_from(sorted(STRATEGIES)))
def test_indices_unique_in_range_exact_count_and_deterministic(pool, n, name):
    seed, n_pool, k = pool
    P, X, L = _data(seed, n_pool, k)
    fn = get_strategy(name)
    idx = fn(P, n, embeddings=X, labeled_embeddings=L, rng=seed)
    assert idx.dtype == np.int64
    assert len(idx) == min(n, n_pool)
    assert len(set(idx.tolist())) == len(idx)
    assert idx.min() >= 0 and idx.max() < n_pool
    again = fn(P, n, embeddings=X, labeled_embeddings=L, rng=seed)
    np.testing.assert_array_equal(idx, again)


@settings(max_examples=30, deadline=None)
@given(pool=pools, n=st.integers(1, 40))
def test_uncertainty_strategies_pick_the_extremes(pool, n):
    seed, n_pool, k = pool
    P, _, _ = _data(seed, n_pool, k)
    take = min(n, n_pool)
    for name, util in [("margin", uncertainty_margin(P)),
                       ("least_confident", uncertainty_least_confident(P)),
                       ("entropy", uncertainty_entropy(P))]:
        idx = get_strategy(name)(P, n)
        rest = np.setdiff1d(np.arange(n_pool), idx)
        # every pick is at least as informative as every item left behind
        if len(rest):
            assert util[idx].min() >= util[rest].max() - 1e-12, name
        # and the ranking is best first
        assert np.all(np.diff(util[idx]) <= 1e-12), name
        assert len(idx) == take


def test_utilities_match_modal():
    P, X, _ = _data(3, 50, 5)
    clf = StubClassifier(P)
    np.testing.assert_allclose(1 - uncertainty_margin(P), classifier_margin(clf, X))
    np.testing.assert_allclose(uncertainty_least_confident(P), classifier_uncertainty(clf, X))
    np.testing.assert_allclose(uncertainty_entropy(P), classifier_entropy(clf, X))
    for ours, theirs in [("margin", margin_sampling), ("least_confident", uncertainty_sampling),
                         ("entropy", entropy_sampling)]:
        ref, _ = theirs(clf, X, n_instances=7)
        assert set(get_strategy(ours)(P, 7).tolist()) == set(ref.tolist())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), n_pool=st.integers(2, 30), dim=st.integers(1, 5),
       n=st.integers(1, 50))
def test_ranked_batch_equals_modal_ranked_batch(seed, n_pool, dim, n):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_pool, dim))
    L = rng.normal(size=(int(rng.integers(1, 8)), dim))
    P = rng.dirichlet(np.ones(3), size=n_pool)
    learner = SimpleNamespace(on_transformed=False, X_training=L)
    ref, _ = modal_ranked_batch(learner, X, 1 - P.max(axis=1), n, "euclidean", None)
    ours = ranked_batch(P, n, embeddings=X, labeled_embeddings=L)
    np.testing.assert_array_equal(ours, ref)


def test_ranked_batch_cold_start_first_pick_is_modals():
    P, X, _ = _data(7, 30, 3, 4)
    learner = SimpleNamespace(on_transformed=False, X_training=None)
    ref, _ = modal_ranked_batch(learner, X, 1 - P.max(axis=1), 5, "euclidean", None)
    ours = ranked_batch(P, 5, embeddings=X)
    assert ours[0] == ref[0]
    assert len(set(ours.tolist())) == 5  # modAL may pick its cold-start item twice; we don't


def test_typiclust_picks_one_typical_item_per_blob_largest_first():
    rng = np.random.default_rng(0)
    centers = 20 * np.eye(3)  # three directions: distinct after L2 normalisation
    sizes = [60, 40, 20]
    X = np.vstack([c + rng.normal(size=(s, 3)) for c, s in zip(centers, sizes, strict=True)])
    blob = np.repeat(np.arange(3), sizes)
    idx = typiclust(None, 3, embeddings=X, rng=0)
    assert blob[idx].tolist() == [0, 1, 2]
    # each pick is typical: nearer its blob's direction (cosine) than most of its blob
    cos = (X @ np.eye(3)).max(axis=1) / np.linalg.norm(X, axis=1)
    for i in idx:
        assert cos[i] >= np.quantile(cos[blob == blob[i]], 0.7)
    # a blob already covered by a labeled item is skipped
    idx = typiclust(None, 2, embeddings=X, labeled_embeddings=centers[:1], rng=0)
    assert sorted(blob[idx].tolist()) == [1, 2]


def test_class_balanced_quotas_and_margin_order():
    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(3) * 0.5, size=200)
    idx = get_strategy("class_balanced")(P, 9)
    pred, u = P.argmax(1), uncertainty_margin(P)
    assert np.bincount(pred[idx], minlength=3).tolist() == [3, 3, 3]
    for c in range(3):
        members = np.flatnonzero(pred == c)
        chosen = idx[pred[idx] == c]
        np.testing.assert_array_equal(np.sort(u[chosen]), np.sort(u[members])[-3:])


def test_class_balanced_gives_a_small_class_share_to_others():
    P = np.array([[0.9, 0.1]] * 10 + [[0.2, 0.8]])
    idx = get_strategy("class_balanced")(P, 6)
    assert len(idx) == 6 and 10 in idx.tolist()


def test_top_n_ties_go_to_lower_index_or_rng():
    s = np.array([1.0, 1.0, 1.0, 0.0])
    assert top_n(s, 2).tolist() == [0, 1]
    picks = {tuple(top_n(s, 1, rng=i).tolist()) for i in range(30)}
    assert picks == {(0,), (1,), (2,)}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_empty_pool_and_bad_n(name):
    fn = get_strategy(name)
    with pytest.raises(EmptyPoolError, match="empty"):
        fn(np.empty((0, 3)), 5, embeddings=np.empty((0, 2)))
    P, X, _ = _data(0, 5)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="positive integer"):
            fn(P, bad, embeddings=X)


@pytest.mark.parametrize("name", sorted(NEEDS_HEAD))
def test_strategies_needing_a_head_say_so(name):
    with pytest.raises(ValueError, match="probas"):
        get_strategy(name)(None, 3, embeddings=np.zeros((5, 2)))


def test_mismatched_rows_rejected():
    with pytest.raises(ValueError, match="rows"):
        get_strategy("ranked_batch")(np.full((4, 2), 0.5), 2, embeddings=np.zeros((5, 2)))


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        get_strategy("bogus")
    assert "margin" in str(info.value) and "'bogus'" in str(info.value)
    assert strategy_names()[0] == "auto"


def test_choose_strategy_schedule():
    cfg = RoundsConfig(cold_start_strategy="typiclust", uncertainty_strategy="margin",
                       min_labels_per_class=2)
    classes = ["a", "b"]
    assert choose_strategy(cfg, {}, classes) == "typiclust"
    assert choose_strategy(cfg, {"a": 5, "b": 1}, classes) == "typiclust"
    assert choose_strategy(cfg, {"a": 2, "b": 2}, classes) == "margin"
    named = cfg.model_copy(update={"strategy": "entropy"})
    assert choose_strategy(named, {}, classes) == "entropy"
    with pytest.raises(UnknownNameError):
        choose_strategy(cfg.model_copy(update={"strategy": "nope"}), {}, classes)
