"""Coverage: which pockets of the pool's variability the trusted labels reach.

The pool's embeddings are clustered: seeded MiniBatchKMeans on the first :data:`DIMS`
principal components of the L2-normalised features of a seeded sample of at most
:data:`SAMPLE` items, read from the feature cache :data:`BATCH` rows at a time, so memory
stays bounded for a pool of any size. Every trusted label is assigned to its nearest
cluster. A class *covers* the clusters that hold at least one of its trusted labels; a
cluster that holds none is a *pocket* that no trusted label covers yet, listed largest
first with the sample items nearest its centre (the thumbnails of
:mod:`alearn.report.coverage_view`), so the team sees what is missing. A cluster's share
of the pool is its share of the sample.
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from sqlalchemy import select

from alearn.project import Project
from alearn.store import Item

log = logging.getLogger(__name__)

#: at most this many pool items are clustered (a seeded sample of the pool)
SAMPLE = 10_000
#: features are read from the cache this many rows at a time
BATCH = 4_096
#: representative items kept per pocket (its thumbnail strip)
PER_POCKET = 6
#: pockets listed, largest first
MAX_POCKETS = 12
#: each cluster should hold at least this many sampled items on average
MIN_PER_CLUSTER = 10
#: k-means runs on this many principal components of the features (seeded randomized
#: PCA): the clusters of image embeddings live in few directions, and k-means++ over
#: 1280 dimensions would cost 20 times more
DIMS = 64
#: ... fitted on at most this many of the sampled items
PCA_ROWS = 2_000
#: SQLite's limit on bound parameters is 999 in old builds
_IN_CHUNK = 900


def n_clusters(n_items: int, n_classes: int) -> int:
    """A few pockets per class (4, at least 8 in all, at most 64), and no more than one
    cluster per :data:`MIN_PER_CLUSTER` items; 0 when there are too few items."""
    k = min(max(8, 4 * n_classes), 64, n_items // MIN_PER_CLUSTER)
    return k if k >= 2 else 0


def _chunks(values: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(values), n):
        yield values[i:i + n]


def _pool_ids(project: Project) -> np.ndarray:
    """Every item id, streamed from the store into one int64 array (8 bytes an item)."""
    with project.store.session() as s:
        rows = s.scalars(select(Item.id).order_by(Item.id).execution_options(yield_per=50_000))
        return np.fromiter(rows, dtype=np.int64)


def _items(project: Project, ids: list[int]) -> dict[int, tuple[str, str]]:
    """item id -> (sha256, path), for ``ids``."""
    out: dict[int, tuple[str, str]] = {}
    with project.store.session() as s:
        for part in _chunks(ids, _IN_CHUNK):
            out.update((i, (h, p)) for i, h, p in s.execute(
                select(Item.id, Item.sha256, Item.path).where(Item.id.in_(part))))
    return out


def feature_cache(project: Project) -> Any:
    """The project's feature cache (:class:`alearn.features.cache.FeatureCache`)."""
    from alearn.features.backbone import cache_key_for  # torch: import on use
    from alearn.features.cache import FeatureCache

    return FeatureCache(project.features_dir,
                        cache_key_for(project.config.embed, root=project.root))


def read_features(project: Project, ids: list[int], cache: Any = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Cached features of ``ids`` (those that have them), :data:`BATCH` at a time, through
    the feature cache's public API: (found ids, float32 (n, dim))."""
    cache = cache if cache is not None else feature_cache(project)
    found: list[np.ndarray] = []
    blocks: list[np.ndarray] = []
    for part in _chunks(ids, BATCH):
        shas = _items(project, part)
        known = [i for i in part if i in shas]
        X, missing = cache.get([shas[i][0] for i in known])
        gone = set(missing)
        found.append(np.asarray([i for i in known if shas[i][0] not in gone], dtype=np.int64))
        blocks.append(np.asarray(X, dtype=np.float32))
    if not blocks or not sum(len(b) for b in blocks):
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(found), np.concatenate([b for b in blocks if len(b)])


def _unit(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def _distinct(X: np.ndarray) -> int:
    """Distinct rows of ``X`` (as float16: k-means cannot split closer points)."""
    if not len(X):
        return 0
    rows = np.ascontiguousarray(X.astype(np.float16))
    return len(np.unique(rows.view(np.dtype((np.void, rows.shape[1] * 2))).ravel()))


def coverage(project: Project, *, sample: int = SAMPLE, seed: int = 0,
             predict: Callable[[np.ndarray], np.ndarray] | None = None,
             members: bool = False) -> dict[str, Any]:
    """Coverage of the pool's clusters by each class's trusted labels (JSON-able).

    ``predict`` (a head's ``predict`` on raw features) adds each pocket's predicted
    classes; ``members`` adds every clustered item's cluster (``members``: item ids and
    clusters, for a benchmark). ``why`` says why there is nothing to show.
    """
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import PCA

    classes = list(project.config.classes)
    out: dict[str, Any] = {"classes": classes, "clusters": [], "by_class": {},
                           "pockets": [], "why": ""}
    pool = _pool_ids(project)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(pool, size=min(sample, len(pool)), replace=False))
    cache = feature_cache(project)
    ids, X = read_features(project, picked.tolist(), cache)
    out.update(pool_size=int(len(pool)), sampled=int(len(picked)), clustered=int(len(ids)))
    Xn = _unit(X) if len(ids) else X
    distinct = _distinct(Xn)
    k = min(n_clusters(len(ids), len(classes)), distinct)
    if k < 2:
        out["why"] = (f"{len(ids)} embedded items in the sample; coverage needs at least "
                      f"{2 * MIN_PER_CLUSTER} distinct ones (run 'alearn embed').")
        return out
    fit_rows = rng.permutation(len(ids))[:PCA_ROWS]
    pca = PCA(n_components=min(DIMS, Xn.shape[1], len(fit_rows) - 1),
              svd_solver="randomized", random_state=seed).fit(Xn[fit_rows])
    Z = pca.transform(Xn)
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3,
                         batch_size=min(1024, len(ids))).fit(Z)
    assigned = km.labels_
    sizes = np.bincount(assigned, minlength=k)
    # every trusted label (in the project's classes) goes to its nearest cluster
    labels = {i: c for i, c in project.store.trusted_labels().items() if c in classes}
    held: dict[int, Counter[str]] = defaultdict(Counter)
    placed = 0
    for part in _chunks(sorted(labels), BATCH):
        l_ids, l_X = read_features(project, part, cache)
        if len(l_ids):
            for item, cluster in zip(l_ids.tolist(), km.predict(pca.transform(_unit(l_X))).tolist(),
                                     strict=True):
                held[int(cluster)][labels[item]] += 1
                placed += 1
    out.update(n_clusters=k, trusted_placed=placed, trusted_labels=len(labels))
    for c in range(k):
        share = float(sizes[c] / len(ids))
        out["clusters"].append({"cluster": c, "sampled": int(sizes[c]), "share": share,
                                "estimated_items": round(share * len(pool)),
                                "trusted": dict(held[c])})
    for cls in classes:
        mine = [c for c in range(k) if held[c][cls]]
        out["by_class"][cls] = {
            "trusted": sum(held[c][cls] for c in range(k)), "clusters": mine,
            "share": float(sum(sizes[c] for c in mine) / len(ids))}
    empty = sorted((c for c in range(k) if not held[c]), key=lambda c: (-sizes[c], c))
    out["uncovered"] = len(empty)
    out["uncovered_share"] = float(sum(sizes[c] for c in empty) / len(ids))
    for c in empty[:MAX_POCKETS]:
        inside = np.flatnonzero(assigned == c)
        dist = np.linalg.norm(Z[inside] - km.cluster_centers_[c], axis=1)
        near = inside[np.argsort(dist, kind="stable")[:PER_POCKET]]
        items = _items(project, ids[near].tolist())
        pocket = {**out["clusters"][c],
                  "items": [{"item_id": int(i), "path": items[int(i)][1]}
                            for i in ids[near].tolist()]}
        if predict is not None:
            mix = Counter(str(p) for p in predict(X[inside]))
            pocket["predicted"] = {cls: mix[cls] / len(inside) for cls in classes if mix[cls]}
        out["pockets"].append(pocket)
    if members:
        out["members"] = {"item_ids": ids.tolist(), "clusters": assigned.tolist()}
    log.info("coverage clusters=%d uncovered=%d clustered=%d trusted_placed=%d", k,
             len(empty), len(ids), placed)
    return out


def head_predictor(project: Project) -> Callable[[np.ndarray], np.ndarray] | None:
    """The current head's ``predict`` (the head the report shows), or None when there is
    none yet (fewer than two classes trusted, nothing embedded)."""
    from alearn.exceptions import AlearnError
    from alearn.model.current import current_head

    try:
        head = current_head(project)
    except AlearnError as exc:
        log.info("coverage without predictions: %s", exc)
        return None
    return None if head is None else head.head.predict
