"""Query strategies: which unlabeled items people should label next.

A *utility* is a pure function ``probas (n_pool, n_classes) -> scores (n_pool,)``,
higher meaning more informative; a *selector* turns scores into ranked indices. No
strategy trains a model, so a worker can rank stored predictions.

Every strategy in :data:`STRATEGIES` has this signature::

    fn(probas, n, *, embeddings=None, labeled_embeddings=None, rng=None) -> indices

Parameters
----------
probas : ndarray of shape (n_pool, n_classes) or None
    The head's class probabilities for the unlabeled pool; ``None`` before there is a
    head (only ``random`` and ``typiclust`` accept that).
n : int
    Batch size, > 0. A smaller pool yields the whole pool.
embeddings : ndarray of shape (n_pool, dim) or None
    The pool's embeddings, rows aligned with ``probas`` (``ranked_batch`` and
    ``typiclust`` need them).
labeled_embeddings : ndarray of shape (n_labeled, dim) or None
    Embeddings of items already labeled or already chosen by earlier rounds.
rng : numpy Generator, int seed or None
    Randomness (random picks, tie-breaks, k-means init). Equal seeds give equal picks.

Returns
-------
indices : ndarray of int64, shape (min(n, n_pool),)
    Unique row indices into the pool, ranked: the first is the most wanted.

Raises ``EmptyPoolError`` for an empty pool and ``ValueError`` for ``n <= 0`` or
missing / misshapen inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from scipy.stats import entropy as _entropy
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.metrics import pairwise_distances_argmin_min
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize

from alearn.config import RoundsConfig
from alearn.exceptions import EmptyPoolError, UnknownNameError

RngLike = np.random.Generator | int | None


class Strategy(Protocol):
    def __call__(
        self,
        probas: np.ndarray | None,
        n: int,
        *,
        embeddings: np.ndarray | None = None,
        labeled_embeddings: np.ndarray | None = None,
        rng: RngLike = None,
    ) -> np.ndarray: ...


# --- utilities: probas (n_pool, n_classes) -> scores (n_pool,), higher = more informative


def margin(probas: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability, shape (n_pool,); lower = more uncertain.

    Equal to ``modAL.uncertainty.classifier_margin`` on the same probabilities.
    """
    probas = np.asarray(probas, dtype=float)
    if probas.shape[1] == 1:
        return np.zeros(len(probas))
    part = np.partition(-probas, 1, axis=1)
    return part[:, 1] - part[:, 0]


def least_confident_utility(probas: np.ndarray) -> np.ndarray:
    """``1 - max_k p_k`` (modAL ``classifier_uncertainty``), shape (n_pool,)."""
    return 1.0 - np.max(probas, axis=1)


def margin_utility(probas: np.ndarray) -> np.ndarray:
    """``1 - margin``, shape (n_pool,): ranks like modAL ``margin_sampling``."""
    return 1.0 - margin(probas)


def entropy_utility(probas: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row (modAL ``classifier_entropy``), shape (n_pool,)."""
    return _entropy(np.asarray(probas, dtype=float), axis=1)


UTILITIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "least_confident": least_confident_utility,
    "margin": margin_utility,
    "entropy": entropy_utility,
}


# --- selector


def top_n(scores: np.ndarray, n: int, *, rng: RngLike = None) -> np.ndarray:
    """Indices of the ``n`` highest scores, highest first.

    Ties go to the lower index, or are broken at random when ``rng`` is given (as
    modAL's ``shuffled_argmax``).
    """
    scores = np.asarray(scores, dtype=float)
    if rng is None:
        return np.argsort(-scores, kind="stable")[:n].astype(np.int64)
    perm = np.random.default_rng(rng).permutation(len(scores))
    order = np.argsort(-scores[perm], kind="stable")[:n]
    return perm[order].astype(np.int64)


# --- input checks


def _pool_size(
    name: str,
    probas: np.ndarray | None,
    n: int,
    embeddings: np.ndarray | None,
    *,
    needs_probas: bool = False,
    needs_embeddings: bool = False,
) -> tuple[int, int]:
    """Validate inputs; return (pool size, number to take)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"{name}: batch size n must be a positive integer, got {n!r}")
    sizes = []
    if probas is not None:
        if np.ndim(probas) != 2:
            raise ValueError(
                f"{name}: probas must have shape (n_pool, n_classes), got {np.shape(probas)}"
            )
        sizes.append(len(probas))
    elif needs_probas:
        raise ValueError(f"{name} needs the head's probas; train a head first or use typiclust")
    if embeddings is not None:
        if np.ndim(embeddings) != 2:
            raise ValueError(
                f"{name}: embeddings must have shape (n_pool, dim), got {np.shape(embeddings)}"
            )
        sizes.append(len(embeddings))
    elif needs_embeddings:
        raise ValueError(f"{name} needs the pool's embeddings")
    if not sizes:
        raise ValueError(f"{name}: pass probas or embeddings so the pool size is known")
    if len(set(sizes)) > 1:
        raise ValueError(f"{name}: probas has {sizes[0]} rows but embeddings has {sizes[1]}")
    if sizes[0] == 0:
        raise EmptyPoolError(
            f"{name}: the unlabeled pool is empty; ingest and embed more images "
            "(alearn ingest / alearn embed)"
        )
    return sizes[0], min(int(n), sizes[0])


def _labeled(labeled_embeddings: np.ndarray | None, dim: int) -> np.ndarray | None:
    if labeled_embeddings is None or len(labeled_embeddings) == 0:
        return None
    L = np.asarray(labeled_embeddings, dtype=float)
    if L.ndim != 2 or L.shape[1] != dim:
        raise ValueError(
            f"labeled_embeddings must have shape (n_labeled, {dim}), got {L.shape}"
        )
    return L


# --- strategies


def random(
    probas: np.ndarray | None,
    n: int,
    *,
    embeddings: np.ndarray | None = None,
    labeled_embeddings: np.ndarray | None = None,
    rng: RngLike = None,
) -> np.ndarray:
    """Uniform random sample without replacement (the baseline)."""
    n_pool, take = _pool_size("random", probas, n, embeddings)
    return np.random.default_rng(rng).choice(n_pool, size=take, replace=False).astype(np.int64)


def _uncertainty(name: str) -> Strategy:
    utility = UTILITIES[name]

    def strategy(
        probas: np.ndarray | None,
        n: int,
        *,
        embeddings: np.ndarray | None = None,
        labeled_embeddings: np.ndarray | None = None,
        rng: RngLike = None,
    ) -> np.ndarray:
        _, take = _pool_size(name, probas, n, embeddings, needs_probas=True)
        return top_n(utility(np.asarray(probas, dtype=float)), take, rng=rng)

    strategy.__name__ = name
    strategy.__doc__ = f"The ``n`` items with the highest {utility.__name__}."
    return strategy


least_confident = _uncertainty("least_confident")
margin_sampling = _uncertainty("margin")
entropy_sampling = _uncertainty("entropy")


def ranked_batch(
    probas: np.ndarray | None,
    n: int,
    *,
    embeddings: np.ndarray | None = None,
    labeled_embeddings: np.ndarray | None = None,
    rng: RngLike = None,
) -> np.ndarray:
    """Ranked batch-mode sampling (Cardoso et al. 2017), as modAL's ``ranked_batch``.

    Each pick maximises ``alpha * (1 - 1 / (1 + d)) + (1 - alpha) * u``, where ``u`` is
    least-confident uncertainty, ``d`` the Euclidean distance to the nearest labeled or
    already-picked item and ``alpha = |unpicked| / (|unpicked| + |labeled and picked|)``.
    modAL recomputes every distance at each pick; here the nearest distance is updated
    with the new pick only, which gives the same picks in O(n_pool * dim) per pick.
    Without labeled items the first pick is the item with the least mean distance to
    the pool (modAL's cold start; estimated against 2,000 sampled rows on large pools).
    """
    n_pool, take = _pool_size(
        "ranked_batch", probas, n, embeddings, needs_probas=True, needs_embeddings=True
    )
    X = np.asarray(embeddings, dtype=float)
    u = least_confident_utility(np.asarray(probas, dtype=float))
    L = _labeled(labeled_embeddings, X.shape[1])
    mask = np.ones(n_pool, dtype=bool)
    picked: list[int] = []
    if L is None:
        ref = X
        if n_pool > 2000:
            ref = X[np.random.default_rng(rng).choice(n_pool, 2000, replace=False)]
        first = int(np.argmin(euclidean_distances(ref, X).mean(axis=0)))
        picked.append(first)
        mask[first] = False
        d_min = euclidean_distances(X, X[first : first + 1])[:, 0]
        n_labeled = 1
    else:
        _, d_min = pairwise_distances_argmin_min(X, L)
        n_labeled = len(L)
    while len(picked) < take:
        n_unlabeled = n_pool - len(picked)
        alpha = n_unlabeled / (n_unlabeled + n_labeled)
        scores = alpha * (1.0 - 1.0 / (1.0 + d_min)) + (1.0 - alpha) * u
        scores[~mask] = -np.inf
        best = int(np.argmax(scores))
        picked.append(best)
        mask[best] = False
        n_labeled += 1
        d_min = np.minimum(d_min, euclidean_distances(X, X[best : best + 1])[:, 0])
    return np.asarray(picked, dtype=np.int64)


def typiclust(
    probas: np.ndarray | None,
    n: int,
    *,
    embeddings: np.ndarray | None = None,
    labeled_embeddings: np.ndarray | None = None,
    rng: RngLike = None,
) -> np.ndarray:
    """TypiClust cold start (Hacohen et al. 2022): typical items of uncovered clusters.

    Embeddings are L2-normalised (cosine geometry) and reduced to 64 dimensions by PCA.
    k-means splits the pool into ``n_labeled + n`` clusters (at most 200); each pick is
    the most typical remaining item (1 / mean distance to its 20 nearest neighbours in
    its cluster) of the cluster with the fewest labeled or picked items, the largest
    such cluster first. ``probas`` is ignored.
    """
    n_pool, take = _pool_size("typiclust", None, n, embeddings, needs_embeddings=True)
    L = _labeled(labeled_embeddings, np.shape(embeddings)[1])
    seed = int(np.random.default_rng(rng).integers(2**31 - 1))
    Z = normalize(np.asarray(embeddings if L is None else np.vstack([embeddings, L]),
                             dtype=np.float32))
    if Z.shape[1] > TYPICLUST_DIM and len(Z) > TYPICLUST_DIM:
        Z = PCA(TYPICLUST_DIM, random_state=seed).fit_transform(Z).astype(np.float32)
    X, L = Z[:n_pool], (None if L is None else Z[n_pool:])
    n_clusters = min((0 if L is None else len(L)) + take, TYPICLUST_MAX_CLUSTERS, n_pool)
    if n_pool > 20000:
        km: Any = MiniBatchKMeans(n_clusters, random_state=seed, n_init=3, batch_size=2048)
    else:
        km = KMeans(n_clusters, random_state=seed, n_init=1)
    cluster = km.fit_predict(X)
    covered = np.zeros(n_clusters, dtype=np.int64)
    if L is not None:
        covered += np.bincount(km.predict(L), minlength=n_clusters)
    sizes = np.bincount(cluster, minlength=n_clusters)
    queues = [_by_typicality(X, np.flatnonzero(cluster == c)) for c in range(n_clusters)]
    depth = np.zeros(n_clusters, dtype=np.int64)
    picked: list[int] = []
    while len(picked) < take:
        open_ = depth < sizes
        # fewest labeled/picked first, then the largest cluster, then the lowest id
        key = np.where(open_, covered * (n_pool + 1) - sizes, np.iinfo(np.int64).max)
        c = int(np.argmin(key))
        picked.append(int(queues[c][depth[c]]))
        depth[c] += 1
        covered[c] += 1
    return np.asarray(picked, dtype=np.int64)


TYPICLUST_MAX_CLUSTERS = 200
TYPICLUST_KNN = 20
TYPICLUST_DIM = 64


def _by_typicality(X: np.ndarray, members: np.ndarray) -> np.ndarray:
    """``members`` sorted by typicality (1 / mean distance to k nearest), most first."""
    k = min(TYPICLUST_KNN, len(members) - 1)
    if k < 1:
        return members
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(X[members]).kneighbors(X[members])
    typicality = 1.0 / (dist[:, 1:].mean(axis=1) + 1e-12)
    return members[np.argsort(-typicality, kind="stable")]


def class_balanced(
    probas: np.ndarray | None,
    n: int,
    *,
    embeddings: np.ndarray | None = None,
    labeled_embeddings: np.ndarray | None = None,
    rng: RngLike = None,
) -> np.ndarray:
    """Equal quotas per predicted class; within a class the smallest margin first.

    Picks round-robin over the predicted classes (the class holding the most uncertain
    item first), so every class gets ``n // n_classes`` or one more, and a class with
    too few predicted items leaves its share to the others.
    """
    _, take = _pool_size("class_balanced", probas, n, embeddings, needs_probas=True)
    P = np.asarray(probas, dtype=float)
    m = margin(P)
    if rng is not None:  # random tie-break between equal margins
        m = m + np.random.default_rng(rng).uniform(0, 1e-12, size=len(m))
    pred = np.argmax(P, axis=1)
    queues = []
    for c in np.unique(pred):
        members = np.flatnonzero(pred == c)
        queues.append(members[np.argsort(m[members], kind="stable")])
    queues.sort(key=lambda q: (m[q[0]], q[0]))
    picked: list[int] = []
    depth = 0
    while len(picked) < take:
        for q in queues:
            if depth < len(q) and len(picked) < take:
                picked.append(int(q[depth]))
        depth += 1
    return np.asarray(picked, dtype=np.int64)


STRATEGIES: dict[str, Strategy] = {
    "random": random,
    "least_confident": least_confident,
    "margin": margin_sampling,
    "entropy": entropy_sampling,
    "ranked_batch": ranked_batch,
    "typiclust": typiclust,
    "class_balanced": class_balanced,
}

#: Strategies that need the head's probabilities (they fall back to cold start without).
NEEDS_HEAD = frozenset({"least_confident", "margin", "entropy", "ranked_batch", "class_balanced"})

AUTO = "auto"


def strategy_names(*, include_auto: bool = True) -> list[str]:
    """Valid names for ``--strategy`` / ``rounds.strategy``."""
    return ([AUTO] if include_auto else []) + sorted(STRATEGIES)


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name`` (raises UnknownNameError listing valid names)."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownNameError("strategy", name, sorted(STRATEGIES)) from None


def check_strategy_name(name: str) -> str:
    """Return ``name`` if it is 'auto' or registered, else raise UnknownNameError."""
    if name != AUTO and name not in STRATEGIES:
        raise UnknownNameError("strategy", name, strategy_names())
    return name


def choose_strategy(
    rounds_cfg: RoundsConfig, label_counts: Mapping[str, int], classes: Sequence[str]
) -> str:
    """Resolve ``rounds_cfg.strategy`` to a registered name.

    A named strategy is returned as is. ``'auto'`` is ``rounds_cfg.cold_start_strategy``
    until every class in ``classes`` has at least ``rounds_cfg.min_labels_per_class``
    trusted labels in ``label_counts``, then ``rounds_cfg.uncertainty_strategy``. The
    defaults (typiclust, then margin, from 3 labels per class) were the best schedule
    measured by scripts/bench_label_efficiency.py on Fashion-MNIST.
    """
    name = check_strategy_name(rounds_cfg.strategy)
    if name != AUTO:
        return name
    need = rounds_cfg.min_labels_per_class
    warm = all(label_counts.get(c, 0) >= need for c in classes)
    chosen = rounds_cfg.uncertainty_strategy if warm else rounds_cfg.cold_start_strategy
    get_strategy(chosen)
    return chosen
