"""Train the classifier head on the trusted labels, save it, and load it back.

A head's version is a hash of everything that determines it (the training items,
their labels, their features, the head and embedding config), so training twice on
the same labels yields the same version and reuses the saved file.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import joblib
import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from alearn.atomic import write_with
from alearn.config_sections import HeadConfig
from alearn.exceptions import StoreError
from alearn.files import sha256_file
from alearn.model.head import EmbeddingClassifier
from alearn.model.semi_supervised import SpreadingClassifier, sample_ids
from alearn.project import Project
from alearn.store import ModelRecord

logger = logging.getLogger(__name__)

CV_FOLDS = 5


# project -> (fingerprint, ids, X): one job (train, select, close) reads the pool once
_POOL: weakref.WeakKeyDictionary[Project, tuple[tuple, np.ndarray, np.ndarray]] = (
    weakref.WeakKeyDictionary()
)


def _pool_fingerprint(project: Project) -> tuple:
    """What identifies the pool's features: cache key, item count and id, cache version."""
    from alearn.features.cache import FeatureCache
    from alearn.features.cache_key import project_cache_key  # no timm when remembered
    from alearn.features.pool import item_extent

    key = project_cache_key(project)
    with project.store.session() as s:
        n_items, last = item_extent(s)
    return (key, n_items, last, FeatureCache(project.features_dir, key).version)


def pool_features(project: Project) -> tuple[np.ndarray, np.ndarray]:
    """Item ids (n,) and cached embeddings (n, dim) of every embedded item.

    Kept in memory for the ``project`` object until its items or its feature cache
    change (checked with one count query and a directory listing), since close,
    convergence, training and selection all need the same arrays.
    """
    from alearn.features.pipeline import load_pool_features  # torch: import on use

    fingerprint = _pool_fingerprint(project)
    hit = _POOL.get(project)
    if hit is not None and hit[0] == fingerprint:
        return hit[1], hit[2]
    ids, X = load_pool_features(project, backbone_key=fingerprint[0])
    ids, X = np.asarray(ids, dtype=np.int64), np.asarray(X, dtype=np.float32)
    _POOL[project] = (fingerprint, ids, X)
    return ids, X


def pool_stats(project: Project) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) of every embedded item's features, each of shape (dim,); None if none.

    The head standardises with these. They are saved under ``models_dir`` keyed by the
    pool's fingerprint, so the whole pool is read once per change of the pool (an
    embed), not by every training or close; that read streams the memory-mapped cache
    in blocks (``Pool.moments``), never the whole pool in memory.
    """
    from alearn.features.pool import open_pool

    fingerprint = _pool_fingerprint(project)
    digest = hashlib.sha1(repr(fingerprint).encode()).hexdigest()[:12]
    path = project.models_dir / f"pool-stats-{digest}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["mean"], z["std"]
    pool = open_pool(project, key=fingerprint[0])
    if not len(pool):
        return None
    mean, std = pool.moments()
    write_with(path, lambda f: np.savez(f, mean=mean, std=std))
    for old in project.models_dir.glob("pool-stats-*.npz"):
        if old != path:
            old.unlink(missing_ok=True)
    return mean, std


def _items_with_features(project: Project, wanted: set[int] | None,
                         *, values: bool) -> tuple[np.ndarray, np.ndarray | None]:
    from alearn.features.pool import open_pool  # the store's items mapped onto the cache

    pool = open_pool(project)
    ids = pool.ids
    if wanted is not None:
        pos = pool.positions(np.fromiter(wanted, dtype=np.int64, count=len(wanted)))
        ids = np.unique(ids[pos[pos >= 0]])
    return ids, (pool.vectors(ids) if values else None)


def embedded_ids(project: Project) -> np.ndarray:
    """Ids of the items that have cached features (no feature values are read)."""
    return _items_with_features(project, None, values=False)[0]


def features_for(project: Project, item_ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, X) for those of ``item_ids`` that have cached features, sorted by id.

    Training and round close need only the labeled items (and a small stop set), not
    the whole pool: at 100k cached items this saves most of their time.
    """
    ids, X = _items_with_features(project, {int(i) for i in item_ids}, values=True)
    return ids, np.asarray(X, dtype=np.float32)


def labeled_features(project: Project) -> tuple[np.ndarray, np.ndarray]:
    """(ids, X) of the embedded items that have a trusted label."""
    return features_for(project, project.store.trusted_labels())


def make_head(project: Project, stats: tuple[np.ndarray, np.ndarray] | None = None
              ) -> EmbeddingClassifier:
    """An unfitted head with the project's ``[head]`` settings and the pool's statistics
    (``stats``, read by :func:`pool_stats` when not given; and, for ``unlabeled =
    "spread"``, a seeded sample of the pool: only it is read)."""
    cfg = project.config.head
    sample = None if cfg.unlabeled == "none" else features_for(
        project, sample_ids(embedded_ids(project), cfg.unlabeled_items))[1]
    return head_from_settings(cfg, stats if stats is not None else pool_stats(project),
                              sample)


def head_from_settings(cfg: HeadConfig, stats: tuple[np.ndarray, np.ndarray] | None,
                       unlabeled: np.ndarray | None = None) -> EmbeddingClassifier:
    """An unfitted head from ``[head]`` settings, (mean, std) pool statistics and an
    unlabeled pool sample; the benchmarks build the product's head through this too."""
    weight = None if cfg.class_weight == "none" else cfg.class_weight
    if cfg.unlabeled == "spread":
        return SpreadingClassifier(C=cfg.C, class_weight=weight, max_iter=cfg.max_iter,
                                   pool_stats=stats, unlabeled=unlabeled,
                                   max_unlabeled=cfg.unlabeled_items)
    return EmbeddingClassifier(C=cfg.C, class_weight=weight, max_iter=cfg.max_iter,
                               pool_stats=stats)


def training_set(
    project: Project, ids: np.ndarray, X: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trusted labels of embedded items in the project's classes: (ids, X, y), by item id."""
    labels = project.store.trusted_labels()
    classes = set(project.config.classes)
    unknown = Counter(lab for lab in labels.values() if lab not in classes)
    if unknown:
        logger.warning("ignoring trusted labels outside the project classes: %s", dict(unknown))
    rows = [i for i, item in enumerate(ids.tolist()) if labels.get(item) in classes]
    rows.sort(key=lambda i: int(ids[i]))
    sel = np.asarray(rows, dtype=np.int64)
    y = np.asarray([labels[int(ids[i])] for i in rows], dtype=object)
    return ids[sel], X[sel], y


def model_version(project: Project, ids: np.ndarray, X: np.ndarray, y: np.ndarray,
                  stats: tuple[np.ndarray, np.ndarray] | None = None) -> str:
    """``m-`` + 10 hex digits of sha1 over the training set, its features, the config
    and the pool's feature statistics (which the head standardises with; ``stats``,
    read by :func:`pool_stats` when not given)."""
    h = hashlib.sha1()
    for stat in (stats if stats is not None else pool_stats(project)) or ():
        h.update(np.ascontiguousarray(stat, dtype=np.float64).tobytes())
    h.update(project.config.head.model_dump_json().encode())
    h.update(project.config.embed.model_dump_json(include={"backbone", "weights",
                                                           "image_size"}).encode())
    h.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    h.update("\x1f".join(map(str, y)).encode())
    h.update(np.ascontiguousarray(X, dtype=np.float32).tobytes())
    return "m-" + h.hexdigest()[:10]


def _folds(y: np.ndarray) -> StratifiedKFold | None:
    """Stratified k folds, k = min(5, smallest class); None if a class has < 2 labels."""
    counts = Counter(y.tolist())
    if len(counts) < 2 or min(counts.values()) < 2:
        return None
    return StratifiedKFold(n_splits=min(CV_FOLDS, min(counts.values())), shuffle=True,
                           random_state=0)


def cv_accuracy(head: EmbeddingClassifier, X: np.ndarray, y: np.ndarray) -> float | None:
    """Stratified k-fold accuracy (k = min(5, smallest class)); None if a class has < 2."""
    folds = _folds(y)
    return None if folds is None else float(np.mean(cross_val_score(head, X, y, cv=folds)))


def cv_predictions(project: Project, X: np.ndarray, y: np.ndarray
                   ) -> tuple[np.ndarray, int] | None:
    """Each label's prediction by a head fitted on the other folds (the folds of
    :func:`cv_accuracy`), and the number of folds; None if a class has < 2 labels."""
    folds = _folds(y)
    if folds is None:
        return None
    return cross_val_predict(make_head(project), X, y, cv=folds), folds.n_splits


def train_head(project: Project, *, round_id: int | None = None) -> ModelRecord | None:
    """Fit the head on the trusted labels, save it and record it.

    Returns the :class:`~alearn.store.ModelRecord` (an existing one when this exact
    training set was fitted before), or ``None`` when the labels cover fewer than two
    classes: planning then falls back to the cold-start strategy.
    """
    ids, X = labeled_features(project)
    ids, X, y = training_set(project, ids, X)
    n_classes = len(set(y.tolist()))
    if n_classes < 2:
        logger.info("no head: %d trusted labels over %d class(es); need two classes",
                    len(y), n_classes)
        return None
    stats = pool_stats(project)  # read once: the version and both heads use them
    version = model_version(project, ids, X, y, stats)
    store = project.store
    with store.session() as s:
        existing = s.scalar(select(ModelRecord).where(ModelRecord.version == version))
    if existing is not None and existing.path and Path(existing.path).is_file() and \
            store.get_meta(f"model_sha256:{version}") == sha256_file(Path(existing.path)):
        if round_id is not None and existing.round_id is None:  # fitted first by a close
            with store.session() as s:
                s.execute(update(ModelRecord).where(ModelRecord.id == existing.id)
                          .values(round_id=round_id))
            existing.round_id = round_id
        return existing
    head = make_head(project, stats).fit(X, y)
    cv = cv_accuracy(make_head(project, stats), X, y)
    path = project.models_dir / f"{version}.joblib"
    _atomic_dump(head, path)
    store.set_meta(f"model_sha256:{version}", sha256_file(path))
    try:
        with store.session() as s:
            record = s.scalar(select(ModelRecord).where(ModelRecord.version == version))
            if record is None:
                record = ModelRecord(version=version, round_id=round_id, n_train=len(y),
                                     cv_accuracy=cv, path=str(path))
                s.add(record)
            else:  # its file had gone missing: rewritten above
                record.path = str(path)
    except IntegrityError:  # another process recorded the same fit meanwhile
        with store.session() as s:
            record = s.scalars(select(ModelRecord).where(ModelRecord.version == version)).one()
    logger.info("model_event=trained model_version=%s round=%s n_train=%d cv_accuracy=%s",
                version, round_id, len(y), cv)
    return record


def load_head(project: Project, version: str) -> EmbeddingClassifier:
    """The saved head ``version`` (raises StoreError if unknown or its file is gone)."""
    with project.store.session() as s:
        record = s.scalar(select(ModelRecord).where(ModelRecord.version == version))
    if record is None:
        raise StoreError(f"no model {version!r} in the store. Train one first "
                         "(alearn round start, or alearn.model.training.train_head).")
    path = Path(record.path or project.models_dir / f"{version}.joblib").resolve()
    models = project.models_dir.resolve()
    if models not in path.parents:
        raise StoreError(f"model {version!r}: its file {path} is outside the project's "
                         f"models folder {models}; alearn loads models only from there.")
    if not path.is_file():
        raise StoreError(f"model {version!r}: file {path} is missing. The next round "
                         "('alearn round start') trains the head again.")
    expected = project.store.get_meta(f"model_sha256:{version}")
    if expected is None or sha256_file(path) != expected:
        raise StoreError(f"model file {path} is not the one alearn saved (its sha256 "
                         f"{'is unrecorded' if expected is None else 'differs'}); it is not "
                         "loaded. Delete it and the next round retrains the head.")
    head = joblib.load(path)  # noqa: S301 - our own file, checked by hash above
    if not isinstance(head, EmbeddingClassifier):
        raise StoreError(f"model file {path} does not hold an EmbeddingClassifier.")
    return head


def _atomic_dump(obj: object, path: Path) -> None:
    write_with(path, lambda f: joblib.dump(obj, f))
