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
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import or_, select

from alearn.exceptions import ConfigError, EmptyPoolError
from alearn.features.cache import FeatureCache
from alearn.features.cache_key import project_cache_key
from alearn.features.embedded_mark import EmbedMark, usable_mark, write_mark
from alearn.store import Item

if TYPE_CHECKING:
    from alearn.config import EmbedConfig
    from alearn.features.backbone import Backbone
    from alearn.project import Project

logger = logging.getLogger(__name__)

#: images per cache write (a killed embed loses at most one such chunk)
EMBED_CHUNK = 1024


def load_backbone(cfg: EmbedConfig, *, root: Path | None = None) -> Backbone:
    """The configured backbone (:func:`alearn.features.backbone.load_backbone`): timm and
    torch are imported here, only when something is to be embedded."""
    from alearn.features.backbone import load_backbone as load

    return load(cfg, root=root)


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
                  backbone: Backbone | None = None, chunk_size: int = EMBED_CHUNK,
                  full: bool = False) -> EmbedSummary:
    """Embed the items of one shard that are not cached yet, into the feature cache.

    Items whose ``id % n == i`` form shard ``(i, n)``. Only items above the shard's embed
    mark (:mod:`alearn.features.embedded_mark`) and the ones that failed before are looked
    up in the cache, so a run with nothing to do costs O(new items); ``full`` looks at
    every item. The backbone is loaded only if something is missing (pass ``backbone``
    to reuse a loaded one; its cache key is then used). Vectors are written every
    ``chunk_size`` images, so a killed run loses only its unfinished chunk. A file that
    cannot be decoded is reported in ``failed``; the rest go on.
    """
    t0 = perf_counter()
    try:
        i, n = _check_shard(shard)
    except ValueError as exc:
        raise ConfigError(f"shard: {exc}") from None
    cfg = project.config.embed
    key = backbone.cache_key if backbone is not None else project_cache_key(project)
    cache = FeatureCache(project.features_dir, key)
    mark, rows = _candidates(project, cache, (i, n), full=full)
    above = [r for r in rows if r.id > mark.upto]
    if not above and not mark.count:
        raise EmptyPoolError("the store has no items to embed. Run 'alearn ingest' first.")
    todo_set = set(cache.missing([r.sha256 for r in rows])) if rows else set()
    todo = [r for r in rows if r.sha256 in todo_set]
    computed, failed = 0, list[tuple[int, str]]()
    if todo:
        from alearn.features.torch_embed import embed_files  # torch: only with work to do

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
    # every chunk is in the cache now: move the mark past what this run looked at
    write_mark(cache.path, (i, n), EmbedMark(max([mark.upto, *(r.id for r in above)]),
                                             mark.count + len(above), [j for j, _ in failed]))
    items = mark.count + len(above)
    summary = EmbedSummary(computed, items - len(todo), failed, perf_counter() - t0,
                           key=key, shard=(i, n), items=items)
    logger.info("embed shard=%d/%d key=%s computed=%d cached=%d failed=%d", i, n, key,
                summary.computed, summary.cached, len(failed))
    return summary


def _candidates(project: Project, cache: FeatureCache, shard: tuple[int, int], *,
                full: bool) -> tuple[EmbedMark, list[Any]]:
    """The shard's usable mark, and its items above it or failed before (id order)."""
    with project.store.session() as s:
        # an empty cache (its files deleted by hand) voids the marks left in its folder
        mark = EmbedMark() if full or not cache.version else usable_mark(s, cache.path, shard)
        failed = (Item.id.in_(mark.failed) if len(mark.failed) <= 500  # SQL's bound
                  else Item.id >= min(mark.failed))  # parameters: a superset, no harm
        q = select(Item.id, Item.sha256, Item.path).where(
            or_(Item.id > mark.upto, failed) if mark.failed else Item.id > mark.upto)
        if shard[1] > 1:
            q = q.where(Item.id % shard[1] == shard[0])
        return mark, list(s.execute(q.order_by(Item.id)).all())


def pending_items(project: Project) -> int:
    """How many items the next embed may have to compute: the ones above the pool's
    embed mark (or that failed) and not in the cache. Cheap when nothing is new."""
    cache = FeatureCache(project.features_dir, project_cache_key(project))
    _mark, rows = _candidates(project, cache, (0, 1), full=False)
    return len(cache.missing([r.sha256 for r in rows])) if rows else 0


def choose_embed_shards(live_workers: int, pending: int, chunk: int = EMBED_CHUNK) -> int:
    """Embed shards for a round: one per live embed worker, but only when there are at
    least two chunks to embed, and never more shards than chunks; at least 1."""
    if pending < 2 * chunk:
        return 1
    return max(1, min(live_workers, pending // chunk))


def load_pool_features(project: Project, *,
                       backbone_key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cached features of every item in the store that has them, sorted by item id.

    ``backbone_key`` defaults to the project's configured backbone (no weights loaded).

    Returns
    -------
    item_ids : ndarray of shape (n,), int64
    X : ndarray of shape (n, dim), float32 (``(0, 0)`` when nothing is cached)
    """
    key = backbone_key or project_cache_key(project)
    with project.store.session() as s:
        rows = s.execute(select(Item.id, Item.sha256).order_by(Item.id)).all()
    X, missing = FeatureCache(project.features_dir, key).get([r.sha256 for r in rows])
    gone = set(missing)
    ids = np.array([r.id for r in rows if r.sha256 not in gone], dtype=np.int64)
    return ids, X
