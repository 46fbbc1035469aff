"""The project pipeline: embed the store's items into the feature cache, and read them back.

:func:`embed_project` embeds the store's items into the :class:`FeatureCache`, keyed by
``Backbone.cache_key`` (backbone, weights, preprocessing) and content hash, so an image
is embedded once, one shard of the items at a time; :func:`load_pool_features` reads
them back. The backbone itself is in :mod:`alearn.features.backbone`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from alearn.exceptions import ConfigError, EmptyPoolError
from alearn.features.backbone import Backbone, cache_key_for, load_backbone
from alearn.features.cache import FeatureCache
from alearn.features.torch_embed import embed_files
from alearn.store import Item

if TYPE_CHECKING:
    from alearn.project import Project

logger = logging.getLogger(__name__)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (0 <= i < n) into ``(i, n)``; raises ValueError saying what is wrong."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None:
        raise ValueError(f"{text!r} is not of the form i/n, e.g. 0/4")
    return _check_shard((int(m[1]), int(m[2])))


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need n >= 1 and 0 <= i < n (shards are 0/n..{n-1}/n)")
    return i, n


@dataclass
class EmbedSummary:
    """What :func:`embed_project` did for its shard."""

    computed: int  # images embedded now
    cached: int  # images found in the cache
    failed: list[tuple[int, str]]  # (item id, reason) for files that could not be decoded
    seconds: float
    key: str = ""  # the feature cache key
    shard: tuple[int, int] = (0, 1)
    items: int = 0  # items in this shard

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "computed": self.computed,
            "cached": self.cached,
            "failed": len(self.failed),
            "failures": [{"item_id": i, "reason": r} for i, r in self.failed],
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.computed / self.seconds, 1) if self.seconds else None,
            "shard": f"{self.shard[0]}/{self.shard[1]}",
            "key": self.key,
        }


def embed_project(project: Project, *, shard: tuple[int, int] = (0, 1), progress: bool = True,
                  backbone: Backbone | None = None, chunk_size: int = 1024) -> EmbedSummary:
    """Embed the items of one shard that are not cached yet, into the feature cache.

    Items whose ``id % n == i`` form shard ``(i, n)``. The backbone is loaded only if
    something is missing (pass ``backbone`` to reuse a loaded one; its cache key is then
    used). Vectors are written every ``chunk_size`` images, so a killed run keeps most
    of its work. A file that cannot be decoded is reported in ``failed``; the rest go on.
    """
    t0 = perf_counter()
    try:
        i, n = _check_shard(shard)
    except ValueError as exc:
        raise ConfigError(f"shard: {exc}") from None
    cfg = project.config.embed
    with project.store.session() as s:
        rows = s.execute(select(Item.id, Item.sha256, Item.path).order_by(Item.id)).all()
    if not rows:
        raise EmptyPoolError("the store has no items to embed. Run 'alearn ingest' first.")
    rows = [r for r in rows if r.id % n == i]
    key = backbone.cache_key if backbone is not None else cache_key_for(cfg, root=project.root)
    cache = FeatureCache(project.features_dir, key)
    todo_set = set(cache.missing([r.sha256 for r in rows]))
    todo = [r for r in rows if r.sha256 in todo_set]
    computed, failed = 0, list[tuple[int, str]]()
    if todo:
        backbone = backbone or load_backbone(cfg, root=project.root)

        def save(positions: list[int], X: np.ndarray) -> None:
            cache.put([todo[j].sha256 for j in positions], X)

        computed, failures = embed_files(
            backbone.model, backbone.transform(), project.image_root, [r.path for r in todo],
            on_vectors=save, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
            chunk_size=chunk_size, progress=progress, label=f"embedding shard {i}/{n}",
            sha256s=[r.sha256 for r in todo])
        failed = [(todo[j].id, reason) for j, reason in failures]
    for item_id, reason in failed:
        logger.warning("embed failed item=%d reason=%s", item_id, reason)
    summary = EmbedSummary(computed, len(rows) - len(todo), failed, perf_counter() - t0,
                           key=key, shard=(i, n), items=len(rows))
    logger.info("embed shard=%d/%d key=%s computed=%d cached=%d failed=%d", i, n, key,
                summary.computed, summary.cached, len(failed))
    return summary


def load_pool_features(project: Project, *,
                       backbone_key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cached features of every item in the store that has them, sorted by item id.

    ``backbone_key`` defaults to the project's configured backbone (no weights loaded).

    Returns
    -------
    item_ids : ndarray of shape (n,), int64
    X : ndarray of shape (n, dim), float32 (``(0, 0)`` when nothing is cached)
    """
    key = backbone_key or cache_key_for(project.config.embed, root=project.root)
    with project.store.session() as s:
        rows = s.execute(select(Item.id, Item.sha256).order_by(Item.id)).all()
    X, missing = FeatureCache(project.features_dir, key).get([r.sha256 for r in rows])
    gone = set(missing)
    ids = np.array([r.id for r in rows if r.sha256 not in gone], dtype=np.int64)
    return ids, X
