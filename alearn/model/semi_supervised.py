"""The unlabeled pool in the head: label spreading over a k-nearest-neighbour graph.

:class:`SpreadingClassifier` is the project's head (:class:`EmbeddingClassifier`,
logistic regression on standardised embeddings) fitted on the trusted labels **plus
pseudo-labels** for a bounded, seeded sample of the unlabeled pool:

1. the sample (``unlabeled``, at most ``max_unlabeled`` rows) and the labeled items are
   joined in an exact k-nearest-neighbour graph (:mod:`alearn.model.knn_graph`: cosine
   similarity on the first ``n_components`` principal axes of the standardised
   embeddings, edge weights ``s**3``), built once per sample and kept in memory;
2. first two checks, either of which fits the head on the labels alone, as
   :class:`EmbeddingClassifier`: more than ``max_labels_per_class`` labels per class on
   average (beyond that, on Fashion-MNIST, pseudo-labels held the head back), or, on
   stratified folds of the labels, the spreading predicting fewer held-out labels than
   the head fitted on the other labels alone (the pool's neighbourhoods do not follow
   the classes; ``check_`` holds the counts);
3. the labels spread over the graph (Zhou et al. 2004, as in Iscen et al. 2019), each
   class's labels scaled by one over its count, so that a class's share of the labels
   does not decide its reach;
4. each sample item gets the class with the most mass and a certainty (the relative
   margin between its two largest masses); at most ``max_pseudo`` of them (each class in
   proportion to how many items the spreading gave it, its most certain first) join the
   training set with weight ``pseudo_weight``, a trusted label weighing 1.

Pseudo-labels exist only inside :meth:`SpreadingClassifier.fit`: they are not stored as
attributes, never written to the store and never exported; only the fitted logistic
regression keeps what they taught it. The sample is not pickled with a fitted head
(``unlabeled`` is saved as None): a loaded head predicts as before, and refitting it
without a sample fits the trusted labels alone.

The graph is exact (blocked matrix products): with the sample bounded at
``max_unlabeled`` (10,000 by default, ``head.unlabeled_items``) it costs a few seconds
at most, so no approximate-neighbour library is needed even for a pool of millions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from alearn.model.head import EmbeddingClassifier, _validate_data
from alearn.model.knn_graph import Graph, extend, graph_of, spread_labels

_CHECK_FOLDS = 3


def sample_ids(ids: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """At most ``n`` of ``ids``, drawn with ``seed`` (all of them if there are fewer),
    sorted: the pool sample a head reads, so that a large pool is never read whole."""
    ids = np.asarray(ids)
    if len(ids) <= n:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, n, replace=False))


def pick_pseudo_labels(F: np.ndarray, exclude: np.ndarray, max_pseudo: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample rows, class indices, certainties) of at most ``max_pseudo`` pseudo-labels.

    Each class gets a quota in proportion to the items the spreading gave it; within a
    class the most certain come first. Rows in ``exclude`` or with no mass are skipped.
    """
    n_classes = F.shape[1]
    top = np.sort(F, axis=1)[:, ::-1]
    ok = (top[:, 0] > 0) & ~exclude
    second = top[ok, 1] if n_classes > 1 else np.zeros(int(ok.sum()))
    certainty = (top[ok, 0] - second) / top[ok, 0]
    label = np.argmax(F[ok], axis=1)
    rows = np.flatnonzero(ok)
    share = np.bincount(label, minlength=n_classes) / max(len(label), 1)
    raw = share * max_pseudo
    quota = np.floor(raw).astype(int)
    quota[np.argsort(quota - raw)[:max(0, max_pseudo - int(quota.sum()))]] += 1
    keep: list[np.ndarray] = []
    for c in range(n_classes):
        members = np.flatnonzero(label == c)
        keep.append(members[np.argsort(-certainty[members], kind="stable")[:quota[c]]])
    chosen = np.sort(np.concatenate(keep)) if keep else np.array([], dtype=np.int64)
    return rows[chosen], label[chosen], certainty[chosen]


class SpreadingClassifier(EmbeddingClassifier):
    """The head fitted on trusted labels and label-spread pseudo-labels of the pool.

    Parameters
    ----------
    C, class_weight, max_iter, blas_threads, pool_stats
        As for :class:`~alearn.model.head.EmbeddingClassifier`.
    unlabeled : ndarray of shape (n, dim), or None
        Embeddings of unlabeled pool items (a seeded sample); None fits the labels alone.
    max_unlabeled : int, default=10000
        At most this many rows of ``unlabeled`` are used (a seeded subsample).
    n_neighbors : int, default=20
        Neighbours of each item in the graph.
    n_components : int, default=64
        Principal axes the graph's cosine similarity is measured on.
    alpha : float, default=0.99
        Weight of the graph against the labels in the spreading.
    max_labels_per_class : float, default=15
        Pseudo-labels are used only while the labels number at most this many per class
        on average: with more, the head fitted on the labels alone was the better one on
        the benchmarks (see BENCHMARKS.md).
    max_pseudo : int, default=2000
        Most pseudo-labels added to one fit.
    pseudo_weight : float, default=0.5
        A pseudo-label's sample weight (a trusted label weighs 1).
    random_state : int, default=0
        Seeds the subsample and the principal axes.

    Attributes
    ----------
    n_pseudo_ : int
        How many pseudo-labels the last fit used (the labels themselves are not kept).
    check_ : dict
        The check of step 2: ``spread_right`` and ``labels_right`` held-out labels
        predicted, of ``held_out``; empty when it could not run (a class with one label).
    """

    def __init__(self, C: float = 0.003, class_weight: str | dict | None = None,
                 max_iter: int = 500, blas_threads: int | None = 1,
                 pool_stats: tuple[np.ndarray, np.ndarray] | None = None,
                 unlabeled: np.ndarray | None = None, max_unlabeled: int = 10000,
                 n_neighbors: int = 20, n_components: int = 64, alpha: float = 0.99,
                 max_labels_per_class: float = 15, max_pseudo: int = 2000,
                 pseudo_weight: float = 0.5,
                 random_state: int = 0) -> None:
        super().__init__(C=C, class_weight=class_weight, max_iter=max_iter,
                         blas_threads=blas_threads, pool_stats=pool_stats)
        self.unlabeled = unlabeled
        self.max_unlabeled = max_unlabeled
        self.n_neighbors = n_neighbors
        self.n_components = n_components
        self.alpha = alpha
        self.max_labels_per_class = max_labels_per_class
        self.max_pseudo = max_pseudo
        self.pseudo_weight = pseudo_weight
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> SpreadingClassifier:
        """Fit on labeled embeddings ``X`` (n_samples, dim), labels ``y`` and pseudo-labels
        spread to the ``unlabeled`` sample."""
        X, y = _validate_data(self, X, y, dtype=[np.float64, np.float32])
        classes, y_index = np.unique(y, return_inverse=True)
        U = self._sample()
        self.n_pseudo_, self.check_ = 0, dict[str, int]()
        if (U is None or len(classes) < 2 or self.max_pseudo <= 0
                or len(y) > self.max_labels_per_class * len(classes)):
            return super().fit(X, y, sample_weight=sample_weight)
        if U.shape[1] != X.shape[1]:
            raise ValueError(f"the unlabeled sample has {U.shape[1]}-d features but X has "
                             f"{X.shape[1]}; take both from the same backbone's pool.")
        with self._limits():
            graph = graph_of(U, self.pool_stats, self.n_components, self.n_neighbors,
                           self.random_state)
            if not self._graph_predicts_as_well(graph, X, y, y_index, sample_weight):
                return super().fit(X, y, sample_weight=sample_weight)
            F, same = spread_labels(graph, X, y_index, len(classes),
                                    n_neighbors=self.n_neighbors, alpha=self.alpha)
        rows, pseudo, _ = pick_pseudo_labels(F, same, self.max_pseudo)
        self.n_pseudo_ = len(rows)
        w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, float)
        super().fit(np.vstack([X, U[rows].astype(X.dtype)]),
                    np.concatenate([y, classes[pseudo]]),
                    sample_weight=np.concatenate([w, np.full(len(rows), self.pseudo_weight)]))
        self.n_pseudo_ = len(rows)
        return self

    def _graph_predicts_as_well(self, graph: Graph, X: np.ndarray, y: np.ndarray,
                                y_index: np.ndarray, sample_weight: Any) -> bool:
        """Whether the spreading predicts held-out labels at least as often as the
        labels alone do (stratified folds of the labels; True when a class has one)."""
        counts = np.bincount(y_index)
        if counts.min() < 2:
            return True
        folds = StratifiedKFold(n_splits=min(_CHECK_FOLDS, int(counts.min())), shuffle=True,
                                random_state=self.random_state)
        w = None if sample_weight is None else np.asarray(sample_weight, float)
        spread_right = plain_right = 0
        for train, test in folds.split(X, y_index):
            F, _ = spread_labels(graph, X[train], y_index[train], len(counts),
                                 n_neighbors=self.n_neighbors, alpha=self.alpha)
            spread_right += int(np.sum(extend(graph, F, X[test], self.n_neighbors)
                                       .argmax(axis=1) == y_index[test]))
            plain = EmbeddingClassifier(C=self.C, class_weight=self.class_weight,
                                        max_iter=self.max_iter, blas_threads=None,
                                        pool_stats=self.pool_stats)
            plain.fit(X[train], y[train], sample_weight=None if w is None else w[train])
            plain_right += int(np.sum(plain.predict(X[test]) == y[test]))
        self.check_ = {"spread_right": spread_right, "labels_right": plain_right,
                       "held_out": len(y)}
        return spread_right >= plain_right

    def _sample(self) -> np.ndarray | None:
        if self.unlabeled is None or len(self.unlabeled) < 2:
            return None
        U = np.asarray(self.unlabeled)
        if len(U) > self.max_unlabeled:
            rng = np.random.default_rng(self.random_state)
            U = U[np.sort(rng.choice(len(U), self.max_unlabeled, replace=False))]
        return U

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["unlabeled"] = None  # a sample of the pool: not part of a saved head
        return state
