"""The head that uses the unlabeled pool (alearn.model.semi_supervised).

It is a scikit-learn estimator, its nearest-neighbour search is exact, its spreading
labels a clustered pool at least as well as scikit-learn's LabelSpreading, it beats the
plain head where the pool's structure carries the classes, and its pseudo-labels never
become trusted labels nor reach an export.
"""

from __future__ import annotations

import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
from factories import ingested_project
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import NearestNeighbors
from sklearn.semi_supervised import LabelSpreading
from sklearn.utils.estimator_checks import parametrize_with_checks
from sqlalchemy import func, select

from alearn.export.dataset import export_dataset
from alearn.features.backbone import cache_key_for
from alearn.features.cache import FeatureCache
from alearn.model import knn_graph as kg
from alearn.model import semi_supervised as ss
from alearn.model.current import current_head
from alearn.model.head import EmbeddingClassifier
from alearn.model.semi_supervised import SpreadingClassifier
from alearn.model.training import make_head
from alearn.store import Item, Label


def clusters(seed: int = 0, n: int = 4000, k: int = 4, signal: int = 8, dim: int = 100
             ) -> tuple[np.ndarray, np.ndarray]:
    """``k`` tight clusters in ``signal`` dimensions, buried in ``dim - signal`` dimensions
    of unit noise: a handful of labels cannot tell a linear head which dimensions matter,
    the pool's neighbourhoods can."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = 8 * np.linalg.qr(rng.normal(size=(signal, k)))[0].T  # all 8 * sqrt(2) apart
    X = rng.normal(0, 1, (n, dim))
    X[:, :signal] = 2 * (centres[y] + rng.normal(0, 0.6, (n, signal)))
    return X.astype(np.float32), y


def few_labels(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                           for c in np.unique(y)])


@parametrize_with_checks([SpreadingClassifier()])
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


def test_clone_keeps_the_sample_and_cross_validation_works():
    X, y = clusters(n=600)
    head = SpreadingClassifier(unlabeled=X, n_neighbors=10, max_pseudo=200)
    twin = clone(head)
    assert twin.get_params()["n_neighbors"] == 10
    np.testing.assert_array_equal(twin.unlabeled, X)
    labeled = few_labels(y, 5, seed=0)
    scores = cross_val_score(head, X[labeled], y[labeled], cv=2)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    fitted = head.fit(X[labeled], y[labeled])
    assert fitted is head and 0 < head.n_pseudo_ <= 200
    proba = head.predict_proba(X)
    assert proba.shape == (len(X), 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert list(head.classes_) == [0, 1, 2, 3]


def test_a_saved_head_leaves_the_pool_sample_out_and_predicts_the_same(tmp_path):
    X, y = clusters(n=2000)
    labeled = few_labels(y, 3, seed=1)
    head = SpreadingClassifier(unlabeled=X).fit(X[labeled], y[labeled])
    joblib.dump(head, tmp_path / "h.joblib")
    loaded = joblib.load(tmp_path / "h.joblib")
    assert loaded.unlabeled is None and head.unlabeled is X  # the live one is untouched
    assert (tmp_path / "h.joblib").stat().st_size < X.nbytes / 20
    np.testing.assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))
    assert pickle.loads(pickle.dumps(head)).n_pseudo_ == head.n_pseudo_


def test_nearest_is_exact():
    rng = np.random.default_rng(3)
    Z = kg.normalise(rng.normal(size=(700, 16)).astype(np.float32))
    idx, sim = kg.nearest(Z, Z, 7, skip_self=True)
    ref = NearestNeighbors(n_neighbors=8, metric="cosine").fit(Z)
    _, ref_idx = ref.kneighbors(Z)
    np.testing.assert_array_equal(idx, ref_idx[:, 1:])  # the reference counts each row itself
    np.testing.assert_allclose(sim, np.sum(Z[:, None, :] * Z[idx], axis=2), atol=1e-5)
    assert np.all(np.diff(sim, axis=1) <= 1e-6)  # most similar first


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spreading_labels_the_pool_at_least_as_well_as_scikit_learn(seed):
    X, y = clusters(seed=seed, n=2000)
    labeled = few_labels(y, 2, seed=seed)
    stats = (X.mean(axis=0), X.std(axis=0))
    graph = kg.graph_of(X, stats, n_components=64, n_neighbors=20, seed=0)
    F, same = kg.spread_labels(graph, X[labeled], y[labeled], 4, n_neighbors=20, alpha=0.99)
    ours = np.mean(F.argmax(axis=1) == y)
    assert set(np.flatnonzero(same)) == set(labeled)  # the labeled items found themselves
    partial = np.full(len(y), -1)
    partial[labeled] = y[labeled]
    ref = LabelSpreading(kernel="knn", n_neighbors=20, max_iter=100)
    ref.fit((X - stats[0]) / stats[1], partial)
    theirs = np.mean(ref.transduction_ == y)
    assert ours >= theirs - 0.01, (ours, theirs)
    assert ours >= 0.75


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_it_beats_the_plain_head_where_the_pool_carries_the_classes(seed):
    X, y = clusters(seed=seed, n=4000)
    pool, test = slice(0, 3000), slice(3000, None)
    labeled = few_labels(y[pool], 2, seed=seed)
    stats = (X[pool].mean(axis=0), X[pool].std(axis=0))
    plain = EmbeddingClassifier(pool_stats=stats).fit(X[pool][labeled], y[pool][labeled])
    spread = SpreadingClassifier(pool_stats=stats, unlabeled=X[pool])
    spread.fit(X[pool][labeled], y[pool][labeled])
    plain_acc, spread_acc = plain.score(X[test], y[test]), spread.score(X[test], y[test])
    assert spread_acc >= plain_acc + 0.15, (plain_acc, spread_acc)
    assert spread_acc >= 0.9


def test_pick_pseudo_labels_keeps_each_class_share_and_skips_the_labeled():
    rng = np.random.default_rng(0)
    F = rng.random((1000, 3)) ** 4
    F[:700, 0] += 2.0  # class 0 owns 70% of the sample
    exclude = np.zeros(1000, dtype=bool)
    exclude[:50] = True
    rows, labels, certainty = ss.pick_pseudo_labels(F, exclude, 100)
    assert not set(rows.tolist()) & set(range(50))
    share = np.bincount(F[50:].argmax(axis=1), minlength=3) / 950
    assert len(rows) == 100 and share[0] > 0.7
    assert np.all(np.abs(np.bincount(labels, minlength=3) - 100 * share) <= 1)
    np.testing.assert_array_equal(labels, F[rows].argmax(axis=1))
    assert np.all((certainty >= 0) & (certainty <= 1))


def test_sample_ids_is_bounded_and_seeded():
    ids = np.arange(10, 50010)
    a, b = ss.sample_ids(ids, 1000), ss.sample_ids(ids, 1000)
    assert len(a) == 1000 and len(set(a.tolist())) == 1000
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ss.sample_ids(ids[:20], 1000), ids[:20])


def test_pseudo_labels_are_neither_trusted_nor_exported(tmp_path):
    n = 150
    project = ingested_project(tmp_path, n, seed=7, classes=["a", "b", "c"])
    project.config.head.unlabeled = "spread"
    project.config.head.unlabeled_items = 100  # read only a sample of the pool
    project.save_config()
    X, y = clusters(seed=5, n=n, k=3, dim=32)
    with project.store.session() as s:
        items = s.execute(select(Item.id, Item.sha256).order_by(Item.id)).all()
    key = cache_key_for(project.config.embed, root=project.root)
    FeatureCache(project.features_dir, key).put([sha for _, sha in items], X)
    names = np.array(["a", "b", "c"])
    labeled = few_labels(y, 3, seed=0)
    with project.store.session() as s:
        for i in labeled:
            s.add(Label(item_id=items[i][0], label=str(names[y[i]]), origin="consensus",
                        confidence=1.0, method="majority"))
    before = project.store.trusted_labels()

    unfitted = make_head(project)
    assert isinstance(unfitted, SpreadingClassifier)
    assert unfitted.unlabeled is not None and len(unfitted.unlabeled) == 100
    trained = current_head(project)
    assert trained is not None and isinstance(trained.head, SpreadingClassifier)
    assert trained.head.n_pseudo_ > 0  # it did learn from pseudo-labels
    assert trained.head.unlabeled is None  # the saved head holds no pool sample

    assert project.store.trusted_labels() == before
    with project.store.session() as s:
        assert s.scalar(select(func.count(Label.id))) == len(labeled)
    out = tmp_path / "export"
    export_dataset(project, out, format="csv")
    df = pd.read_csv(out / "dataset.csv")
    assert len(df) == len(labeled)
    assert dict(zip(df["id"], df["label"], strict=True)) == before


def test_it_fits_the_labels_alone_where_the_pool_does_not_follow_the_classes():
    # tight clusters that say nothing of the class, which is the sign of one coordinate
    rng = np.random.default_rng(4)
    n = 2000
    X = rng.normal(0, 1, (n, 40))
    X[:, 1:9] = 6 * np.eye(4, 8)[rng.integers(0, 4, n)] + rng.normal(0, 0.3, (n, 8))
    y = (X[:, 0] > 0).astype(int)
    labeled = few_labels(y, 10, seed=0)
    head = SpreadingClassifier(unlabeled=X.astype(np.float32)).fit(X[labeled], y[labeled])
    assert head.check_["spread_right"] < head.check_["labels_right"]
    assert head.n_pseudo_ == 0
    plain = EmbeddingClassifier().fit(X[labeled], y[labeled])
    np.testing.assert_allclose(head.predict_proba(X), plain.predict_proba(X))


def test_past_max_labels_per_class_it_fits_the_labels_alone():
    X, y = clusters(n=1500)
    labeled = few_labels(y, 16, seed=0)
    head = SpreadingClassifier(unlabeled=X, max_labels_per_class=15).fit(X[labeled], y[labeled])
    assert head.n_pseudo_ == 0 and head.check_ == {}
    head.set_params(max_labels_per_class=16).fit(X[labeled], y[labeled])
    assert head.n_pseudo_ > 0
