"""Strategies that use the pool's embeddings: ranked batch and TypiClust.

Both have the signature of every strategy (see :mod:`alearn.query.strategies`), and need
``embeddings``; ``ranked_batch`` also needs the head's ``probas``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alearn.query.utilities import (
    RngLike,
    check_labeled,
    check_pool,
    uncertainty_least_confident,
)

TYPICLUST_MAX_CLUSTERS = 200
TYPICLUST_KNN = 20
TYPICLUST_DIM = 64


def ranked_batch(
    probas: np.ndarray | None,
    n: int,
    *,
    embeddings: np.ndarray | None = None,
    labeled_embeddings: np.ndarray | None = None,
    rng: RngLike = None,
    pool_size: int | None = None,
) -> np.ndarray:
    """Ranked batch-mode sampling (Cardoso et al. 2017), as modAL's ``ranked_batch``.

    Each pick maximises ``alpha * (1 - 1 / (1 + d)) + (1 - alpha) * u``, where ``u`` is
    least-confident uncertainty, ``d`` the Euclidean distance to the nearest labeled or
    already-picked item and ``alpha = |unpicked| / (|unpicked| + |labeled and picked|)``.
    modAL recomputes every distance at each pick; here the nearest distance is updated
    with the new pick only, which gives the same picks in O(n_pool * dim) per pick.
    Without labeled items the first pick is the item with the least mean distance to
    the pool (modAL's cold start; estimated against 2,000 sampled rows on large pools).

    ``pool_size``: when the rows are a candidate subset of a larger pool (the most
    uncertain, see :mod:`alearn.query.pool_select`), the whole pool's size, so that
    ``alpha`` weighs diversity as it would on the whole pool.
    """
    from sklearn.metrics.pairwise import (  # scikit-learn: imported on use
        euclidean_distances,
        pairwise_distances_argmin_min,
    )

    n_pool, take = check_pool(
        "ranked_batch", probas, n, embeddings, needs_probas=True, needs_embeddings=True
    )
    X = np.asarray(embeddings, dtype=float)
    u = uncertainty_least_confident(np.asarray(probas, dtype=float))
    L = check_labeled(labeled_embeddings, X.shape[1])
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
        n_unlabeled = max(pool_size or 0, n_pool) - len(picked)
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
    from sklearn.cluster import KMeans, MiniBatchKMeans  # scikit-learn: imported on use
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    n_pool, take = check_pool("typiclust", None, n, embeddings, needs_embeddings=True)
    assert embeddings is not None  # check_pool refuses None
    L = check_labeled(labeled_embeddings, np.shape(embeddings)[1])
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


def _by_typicality(X: np.ndarray, members: np.ndarray) -> np.ndarray:
    """``members`` sorted by typicality (1 / mean distance to k nearest), most first."""
    k = min(TYPICLUST_KNN, len(members) - 1)
    if k < 1:
        return members
    from sklearn.neighbors import NearestNeighbors

    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(X[members]).kneighbors(X[members])
    typicality = 1.0 / (dist[:, 1:].mean(axis=1) + 1e-12)
    return members[np.argsort(-typicality, kind="stable")]
