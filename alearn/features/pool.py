"""The pool: every store item's cached vector, streamed in float32 blocks, kept warm.

:func:`open_pool` maps the store's items onto the feature cache's segments (memory
maps, see :mod:`alearn.features.segments`) without materialising the vectors.
:meth:`Pool.blocks` streams them as float32 blocks of a few hundred rows (converted by
torch's vectorised float16 cast into one reused buffer), :meth:`Pool.vectors` gathers
the rows of a few items, :meth:`Pool.moments` computes the mean and standard deviation
in one chunked pass.

**Warmth.** The item -> row map is saved beside the cache as ``derived/rows-<cache
version>-<items>.npy``, so a fresh process (an RQ work-horse is forked per job) opens a
pool of a million items by mapping files and reading 8 MB, and its vectors come from the
OS page cache. In a long-lived process, pools stay open in memory, keyed by the cache
version and the store's item count and last id; a new chunk or compaction changes the
version and the next call reopens.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import alearn.atomic as atomic
from alearn.exceptions import FeatureError
from alearn.features.cache import FeatureCache
from alearn.features.segments import Segment
from alearn.store import Item

if TYPE_CHECKING:
    from alearn.project import Project

#: rows per float32 block: small enough to stay in the CPU cache between cast and product
BLOCK_ROWS = 256
#: drop already-read pages of a memory map every this many blocks (bounded RSS)
_RELEASE_EVERY = 128
WARM_POOLS = 2
_WARM: OrderedDict[tuple[str, str, tuple[int, int]], Pool] = OrderedDict()


@dataclass(eq=False)
class Pool:
    """The embedded items of a project: ids (sorted) and where their vectors are."""

    key: str
    version: str
    items: tuple[int, int]  # the store's item count and last id when opened
    dim: int
    segments: list[Segment]
    row_item: list[np.ndarray]  # per segment: the item id of each row, -1 if none
    ids: np.ndarray  # item ids with a vector, sorted
    seg: np.ndarray  # segment of each id
    row: np.ndarray  # row in that segment

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, item_ids: np.ndarray) -> np.ndarray:
        """Index into :attr:`ids` of each item id, -1 where it has no vector."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        if not len(self.ids):
            return np.full(len(item_ids), -1, dtype=np.int64)
        i = np.minimum(np.searchsorted(self.ids, item_ids), len(self.ids) - 1)
        return np.where(self.ids[i] == item_ids, i, -1)

    def vectors(self, item_ids: np.ndarray) -> np.ndarray:
        """float32 vectors (k, dim) of ``item_ids`` (each must have one; see positions)."""
        pos = self.positions(item_ids)
        if (pos < 0).any():
            raise KeyError(f"{int((pos < 0).sum())} items have no cached vector")
        out = np.empty((len(pos), self.dim), dtype=np.float32)
        seg, row = self.seg[pos], self.row[pos]
        for s in np.unique(seg).tolist():
            sel = np.flatnonzero(seg == s)
            order = np.argsort(row[sel], kind="stable")  # read the memory map in file order
            out[sel[order]] = self.segments[s].values()[row[sel[order]]]
        return out

    def blocks(self, rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(item ids, float32 vectors) of consecutive rows, every segment in file order.

        Ids are -1 for rows that are no item's. The vectors live in one buffer that the
        next block overwrites: use (or copy) them before asking for the next.
        """
        import torch  # the vectorised float16 -> float32 cast; imported on use

        rows = rows or BLOCK_ROWS
        buf = torch.empty((rows, self.dim), dtype=torch.float32)
        for seg, owners in zip(self.segments, self.row_item, strict=True):
            with warnings.catch_warnings():  # a read-only map: torch warns, we only read
                warnings.simplefilter("ignore", UserWarning)
                T = torch.from_numpy(seg.values())
            done = 0
            for k, a in enumerate(range(0, len(seg), rows)):
                b = min(a + rows, len(seg))
                out = buf[: b - a]
                out.copy_(T[a:b])
                yield owners[a:b], out.numpy()
                if k % _RELEASE_EVERY == _RELEASE_EVERY - 1:
                    seg.release(done, b)
                    done = b
            seg.release(0, len(seg))

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of the items' vectors, float64 (dim,), in one chunked pass.

        Each block's mean and variance are float32 reductions of the block less a
        reference row (the first block's mean), so they are accurate to float32 of the
        spread, not of the values; blocks are combined in float64 (Chan et al.)."""
        import torch

        n = 0
        mean = np.zeros(self.dim)
        m2 = np.zeros(self.dim)
        ref: torch.Tensor | None = None
        for owners, X in self.blocks(4096):
            mask = owners >= 0
            if not mask.any():
                continue
            B = torch.from_numpy(X if mask.all() else X[mask])
            if ref is None:
                ref = B.mean(dim=0, dtype=torch.float64).float()
            B -= ref  # in the reused block buffer (or a masked copy)
            var_b, mean_t = torch.var_mean(B, dim=0, correction=0)
            var_b = var_b.double()
            mean_b = mean_t.double().numpy() + ref.double().numpy()
            nb = int(B.shape[0])
            delta = mean_b - mean
            total = n + nb
            mean = mean + delta * (nb / total)
            m2 = m2 + var_b.numpy() * nb + delta**2 * (n * nb / total)
            n = total
        return mean, np.sqrt(m2 / max(n, 1))


def open_pool(project: Project, *, key: str | None = None) -> Pool:
    """The project's pool for feature cache ``key`` (the configured backbone's by default).

    Compacts the cache first when it is due (many chunks, or an old cache's single big
    chunk), so the vectors are read through memory maps.
    """
    from alearn.features.cache_key import project_cache_key  # no timm when remembered

    key = key or project_cache_key(project)
    cache = FeatureCache(project.features_dir, key)
    cache.compact_if_due()
    for _ in range(3):
        try:
            return _open(project, cache)
        except FileNotFoundError:  # a concurrent compaction removed a chunk: look again
            continue
    raise FeatureError(f"feature cache {cache.path}: chunks kept vanishing while opening "
                       "the pool (concurrent compaction?). Retry.")


def _open(project: Project, cache: FeatureCache) -> Pool:
    segments = cache.segments()
    version = cache.version
    with project.store.session() as s:
        items = item_extent(s)
    warm_key = (str(cache.path), version, items)
    pool = _WARM.get(warm_key)
    if pool is not None and [s.name for s in pool.segments] == [s.name for s in segments]:
        _WARM.move_to_end(warm_key)
        return pool
    for seg in segments:  # chunks are small: read now, so a compaction cannot pull them away
        seg.values()
    owners = _row_items(project, cache, segments, version, items)
    pool = _assemble(cache.key, version, items, cache.dim or 0, segments, owners)
    _WARM[warm_key] = pool
    while len(_WARM) > WARM_POOLS:
        _WARM.popitem(last=False)
    return pool


def item_extent(s: Session) -> tuple[int, int]:
    """(number, last id) of the store's items, as two queries: each takes its fast path
    (SQLite counts a bare ``count(*)`` over its smallest index, about 3x faster than
    with ``max`` beside it; ``max(id)`` is one primary-key look-up)."""
    last = s.scalar(select(func.max(Item.id)))
    return int(s.scalar(select(func.count()).select_from(Item)) or 0), int(last or 0)


def _row_items(project: Project, cache: FeatureCache, segments: list[Segment], version: str,
               items: tuple[int, int]) -> np.ndarray:
    """Item id of every row of every segment (concatenated), -1 where none; saved."""
    total = sum(len(s) for s in segments)
    if not total:
        return np.empty(0, dtype=np.int64)
    path = cache.path / "derived" / f"rows-{version}-{items[0]}-{items[1]}.npy"
    try:
        owners = np.load(path, allow_pickle=False)
        if owners.shape == (total,):
            return owners
    except (FileNotFoundError, ValueError, OSError):
        pass
    with project.store.session() as s:
        rows = s.execute(select(Item.id, Item.sha256)).all()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    seg, row = cache.locate([r[1] for r in rows])
    if [s.name for s in cache.segments()] != [s.name for s in segments]:
        raise FileNotFoundError("the feature cache changed while the pool was opened")
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in segments])]).astype(np.int64)
    owners = np.full(total, -1, dtype=np.int64)
    hit = seg >= 0
    owners[offsets[seg[hit]] + row[hit]] = ids[hit]
    atomic.write_with(path, lambda f: np.save(f, owners, allow_pickle=False))
    for old in path.parent.glob("rows-*.npy"):
        if old != path:
            old.unlink(missing_ok=True)
    return owners


def _assemble(key: str, version: str, items: tuple[int, int], dim: int,
              segments: list[Segment], owners: np.ndarray) -> Pool:
    sizes = [len(s) for s in segments]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    where = np.flatnonzero(owners >= 0)
    ids = owners[where]
    order = np.argsort(ids, kind="stable")
    ids, where = ids[order], where[order]
    seg = np.searchsorted(offsets, where, side="right") - 1
    return Pool(key=key, version=version, items=items, dim=dim, segments=segments,
                row_item=[owners[offsets[i]: offsets[i + 1]] for i in range(len(segments))],
                ids=ids, seg=seg, row=where - offsets[seg])


def forget_warm() -> None:
    """Close every warm pool (tests; a process that wants its memory back)."""
    _WARM.clear()


def derived_dir(project: Project, key: str) -> Path:
    """Where files derived from one cache (row maps, projections) live."""
    return FeatureCache(project.features_dir, key).path / "derived"
