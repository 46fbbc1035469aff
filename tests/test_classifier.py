"""The head is a well-behaved scikit-learn estimator and equals scaler + LR."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_info

from alearn.model.head import EmbeddingClassifier


@parametrize_with_checks([EmbeddingClassifier()])
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


def _blobs(seed=0, n=120, dim=6, k=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    X = rng.normal(size=(n, dim)) + 2.0 * np.eye(k, dim)[y]
    return X.astype(np.float32), np.array(["cat", "dog", "bird"])[y]


def test_equals_standard_scaler_plus_logistic_regression():
    X, y = _blobs()
    ours = EmbeddingClassifier(C=0.05, max_iter=300).fit(X, y)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=300)).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-6)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    assert list(ours.classes_) == ["bird", "cat", "dog"]


def test_columns_follow_classes_seen_in_fit():
    X, y = _blobs()
    keep = y != "bird"
    clf = EmbeddingClassifier().fit(X[keep], y[keep])
    assert list(clf.classes_) == ["cat", "dog"]
    assert clf.predict_proba(X).shape == (len(X), 2)
    np.testing.assert_allclose(clf.predict_proba(X).sum(axis=1), 1.0)


def test_class_weight_balanced_changes_the_fit():
    X, y = _blobs(n=200)
    keep = (y != "bird") | (np.arange(len(y)) % 10 == 0)  # make 'bird' rare
    plain = EmbeddingClassifier(C=0.01).fit(X[keep], y[keep])
    balanced = EmbeddingClassifier(C=0.01, class_weight="balanced").fit(X[keep], y[keep])
    bird = list(plain.classes_).index("bird")
    assert balanced.predict_proba(X)[:, bird].mean() > plain.predict_proba(X)[:, bird].mean()


def test_unfitted_message_says_what_to_do():
    with pytest.raises(NotFittedError, match="Call 'fit'"):
        EmbeddingClassifier().predict_proba(np.zeros((2, 3)))


def test_blas_limited_to_one_thread_while_fitting(monkeypatch):
    seen = []
    real_fit = LogisticRegression.fit

    def spy(self, *args, **kwargs):
        seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", spy)
    X, y = _blobs()
    EmbeddingClassifier().fit(X, y)
    assert seen and set(seen) == {1}


def test_joblib_round_trip(tmp_path):
    X, y = _blobs()
    clf = EmbeddingClassifier().fit(X, y)
    joblib.dump(clf, tmp_path / "m.joblib")
    back = joblib.load(tmp_path / "m.joblib")
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))


def test_pool_stats_standardise_instead_of_the_training_rows():
    X, y = _blobs(n=150)
    pool = np.vstack([X, _blobs(seed=5, n=300)[0] + 1.5])
    mean, std = pool.mean(axis=0), pool.std(axis=0)
    ours = EmbeddingClassifier(C=0.05, pool_stats=(mean, std)).fit(X, y)
    ref = LogisticRegression(C=0.05, max_iter=500).fit((X - mean) / std, y)
    np.testing.assert_allclose(ours.predict_proba(pool), ref.predict_proba((pool - mean) / std),
                               atol=1e-5)
    plain = EmbeddingClassifier(C=0.05).fit(X, y)
    assert not np.allclose(plain.predict_proba(pool), ours.predict_proba(pool), atol=1e-3)
    with pytest.raises(ValueError, match="pool_stats are for 5-d"):
        EmbeddingClassifier(pool_stats=(mean[:5], std[:5])).fit(X, y)
