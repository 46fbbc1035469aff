"""The classifier head: logistic regression on standardised embeddings.

The standardisation statistics should come from the whole pool (``pool_stats``, as
:func:`alearn.model.training.make_head` sets them): unlabeled embeddings are free, while the
statistics of the labeled items alone are skewed by the very selection active learning
makes. On Fashion-MNIST that halved the labels the default schedule needed (see
scripts/bench_label_efficiency.py). Without ``pool_stats`` they come from ``X``.

A scikit-learn estimator (``__init__`` only stores its arguments, learned attributes
end in ``_``, ``fit`` returns ``self``), so it works with ``cross_val_score``, modAL's
``ActiveLearner`` and joblib persistence. BLAS is limited to one thread while it fits
and predicts: scikit-learn's logistic regression ran 5-10x slower with two BLAS threads
than with one on the project's machines.

Scoring a large pool does not go through ``predict_proba`` (which validates the input
as float64 and standardises a copy): ``_folded`` folds the standardisation into the
weights and bias, and :mod:`alearn.query.scoring` applies them to float32 blocks
streamed from the feature cache; ``_proba_fast`` is that arithmetic for one array
(tests/test_scoring.py holds it to ``predict_proba``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(est: Any, X: Any, y: Any = "no_validation", **kw: Any) -> Any:
        return est._validate_data(X, y, **kw)


class EmbeddingClassifier(ClassifierMixin, BaseEstimator):
    """Logistic regression on standardised embeddings.

    Parameters
    ----------
    C : float, default=0.003
        Inverse L2 regularisation strength (see ``HeadConfig.C``).
    class_weight : {None, 'balanced'} or dict, default=None
        Passed to :class:`~sklearn.linear_model.LogisticRegression`.
    max_iter : int, default=500
        Solver iterations.
    blas_threads : int or None, default=1
        BLAS threads while fitting and predicting; ``None`` leaves them alone.
    pool_stats : tuple (mean, scale) of ndarrays of shape (dim,), or None
        Standardise with these (the pool's feature means and standard deviations)
        instead of statistics fitted on ``X``.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Classes seen in ``fit``. ``predict_proba`` has one column per entry, in this
        order; a project class absent from the training labels has no column.
    mean_, scale_ : ndarray of shape (n_features_in_,)
        The standardisation used: ``(X - mean_) / scale_``.
    lr_ : LogisticRegression
        Fitted logistic regression on the standardised embeddings.
    n_features_in_ : int
        Embedding dimension seen in ``fit``.
    n_iter_ : ndarray of shape (1,)
        Solver iterations run.
    """

    def __init__(
        self,
        C: float = 0.003,
        class_weight: str | dict | None = None,
        max_iter: int = 500,
        blas_threads: int | None = 1,
        pool_stats: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.blas_threads = blas_threads
        self.pool_stats = pool_stats

    def _limits(self) -> threadpool_limits:
        return threadpool_limits(limits=self.blas_threads, user_api="blas")

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> EmbeddingClassifier:
        """Fit on embeddings ``X`` of shape (n_samples, dim) and labels ``y`` (n_samples,),
        each row weighted by ``sample_weight`` (default 1)."""
        X, y = _validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        if self.pool_stats is None:
            scaler = StandardScaler().fit(X, sample_weight=sample_weight)
            self.mean_, self.scale_ = scaler.mean_, scaler.scale_
        else:
            mean, scale = (np.asarray(a, dtype=np.float64).ravel() for a in self.pool_stats)
            if mean.shape != (X.shape[1],) or scale.shape != (X.shape[1],):
                raise ValueError(
                    f"pool_stats are for {mean.shape[0]}-d features but X has "
                    f"{X.shape[1]} features; compute them from the same backbone's pool."
                )
            self.mean_, self.scale_ = mean, np.where(scale > 0, scale, 1.0)
        with self._limits():
            self.lr_ = LogisticRegression(
                C=self.C, class_weight=self.class_weight, max_iter=self.max_iter
            ).fit(self._standardise(X), y, sample_weight=sample_weight)
        self.classes_ = self.lr_.classes_
        self.n_iter_ = self.lr_.n_iter_
        return self

    def _standardise(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean_) / self.scale_).astype(X.dtype, copy=False)

    def _transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = _validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self._standardise(X)

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits: shape (n_samples,) for two classes, else (n_samples, n_classes)."""
        Z = self._transform(X)
        with self._limits():
            return self.lr_.decision_function(Z)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities of shape (n_samples, n_classes), columns in ``classes_``."""
        Z = self._transform(X)
        with self._limits():
            return self.lr_.predict_proba(Z)

    def _foldable(self) -> bool:
        """True when ``predict_proba`` is this class's (standardise, then ``lr_``), so
        :meth:`_folded` reproduces it; a subclass that changes it is scored through it."""
        cls = type(self)
        return all(getattr(cls, m) is getattr(EmbeddingClassifier, m)
                   for m in ("predict_proba", "decision_function", "_transform", "_standardise"))

    def _folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b), float32, with the standardisation folded in: the logits of ``X`` are
        ``X @ W + b``. W has shape (dim, 1) for two classes, else (dim, n_classes)."""
        check_is_fitted(self)
        coef = np.asarray(self.lr_.coef_, dtype=np.float64)
        W = (coef / self.scale_).T
        b = np.asarray(self.lr_.intercept_, dtype=np.float64) - (self.mean_ / self.scale_) @ coef.T
        return np.ascontiguousarray(W, dtype=np.float32), b.astype(np.float32)

    @staticmethod
    def _proba_from_logits(Z: np.ndarray) -> np.ndarray:
        """Probabilities from :meth:`_folded` logits, as ``predict_proba`` makes them
        (sigmoid for two classes, softmax otherwise); ``Z`` is overwritten."""
        if Z.shape[1] == 1:
            p = 1.0 / (1.0 + np.exp(-Z[:, 0]))
            return np.column_stack([1.0 - p, p]).astype(Z.dtype, copy=False)
        Z -= Z.max(axis=1, keepdims=True)
        np.exp(Z, out=Z)
        Z /= Z.sum(axis=1, keepdims=True)
        return Z

    def _proba_fast(self, X: np.ndarray) -> np.ndarray:
        """``predict_proba`` for float32 embeddings in float32 (to ~1e-5), without
        validation or a standardised copy of ``X``: the scoring of large pools."""
        W, b = self._folded()
        return self._proba_from_logits(np.asarray(X, dtype=np.float32) @ W + b)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class per row, shape (n_samples,)."""
        probas = self.predict_proba(X)
        return self.classes_[np.argmax(probas, axis=1)]
