"""The embed mark: how far a shard's items are known to be in the feature cache.

After :func:`alearn.features.pipeline.embed_project` finishes a shard ``(i, n)``, it
records in the cache folder (``embedded-<i>of<n>.json``) the highest item id it saw
(``upto``), how many of the shard's items have an id <= ``upto`` (``count``) and the
ids that failed to decode. The next run looks only at items above ``upto`` and at the
failed ones, so a run with nothing to do costs O(new items), not O(pool).

Why this stays correct:

* an item's content hash never changes and items are never deleted, and compaction
  never drops a vector, so what was cached stays cached;
* the mark lives in the cache folder: a deleted or re-keyed cache has no mark;
* a mark is written only after every chunk of its run is in the cache; a killed run
  writes none, and the next one starts from the previous mark;
* an item committed late with an id below ``upto`` (concurrent ingests on PostgreSQL)
  changes the count of items <= ``upto``: the mark is then ignored (a full check);
* ``full=True`` (``alearn embed --check``) ignores every mark.

A shard may also use the whole pool's mark (``0of1``): every item <= its ``upto`` is cached.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import ColumnElement, func, select, true
from sqlalchemy.orm import Session

import alearn.atomic as atomic
from alearn.store import Item


@dataclass
class EmbedMark:
    upto: int = 0  # every item of the shard with id <= upto is cached, but ``failed``
    count: int = 0  # items of the shard with id <= upto when the mark was written
    failed: list[int] = field(default_factory=list)


_NAME = re.compile(r"embedded-(\d+)of(\d+)\.json")


def mark_path(cache_dir: Path, shard: tuple[int, int]) -> Path:
    return Path(cache_dir) / f"embedded-{shard[0]}of{shard[1]}.json"


def read_mark(cache_dir: Path, shard: tuple[int, int]) -> EmbedMark | None:
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        d = json.loads(mark_path(cache_dir, shard).read_text(encoding="utf-8"))
        return EmbedMark(int(d["upto"]), int(d["count"]), [int(x) for x in d["failed"]])
    return None


def write_mark(cache_dir: Path, shard: tuple[int, int], mark: EmbedMark) -> None:
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    atomic.write_json(mark_path(cache_dir, shard),
                      {"upto": mark.upto, "count": mark.count, "failed": mark.failed})


def _in_shard(shard: tuple[int, int]) -> ColumnElement[bool]:
    i, n = shard
    return true() if n == 1 else (Item.id % n == i)


def count_upto(s: Session, shard: tuple[int, int], upto: int) -> int:
    """Items of ``shard`` with id <= ``upto``. For the whole pool with ``upto`` at the last
    id (a mark after a full run), a bare ``count(*)``: its fast path, no filter."""
    if shard[1] == 1 and upto >= int(s.scalar(select(func.max(Item.id))) or 0):
        return int(s.execute(select(func.count()).select_from(Item)).scalar_one())
    q = select(func.count()).select_from(Item).where(Item.id <= upto, _in_shard(shard))
    return int(s.execute(q).scalar_one())


def _holds(s: Session, shard: tuple[int, int], mark: EmbedMark | None) -> bool:
    return mark is not None and count_upto(s, shard, mark.upto) == mark.count


def _from_shards(s: Session, cache_dir: Path, floor: int = 0) -> EmbedMark | None:
    """The pool's mark made of a whole set of shard marks ``(0..n-1, n)``: every item up
    to the lowest of them is cached, but the failed ones. Sets that reach no higher than
    ``floor`` (a mark already in hand) are not checked: each check counts every shard."""
    best = None
    names = (_NAME.fullmatch(p.name) for p in Path(cache_dir).glob("embedded-*.json"))
    for n in sorted({int(m[2]) for m in names if m} - {1}):
        marks = [read_mark(cache_dir, (i, n)) for i in range(n)]
        uptos = [m.upto for m in marks if m is not None]
        if len(uptos) < n or min(uptos) <= max(floor, best.upto if best else 0):
            continue
        if not all(_holds(s, (i, n), m) for i, m in enumerate(marks)):
            continue
        upto = min(uptos)
        failed = sorted({x for m in marks if m is not None for x in m.failed if x <= upto})
        best = EmbedMark(upto, count_upto(s, (0, 1), upto), failed)
    return best


def usable_mark(s: Session, cache_dir: Path, shard: tuple[int, int]) -> EmbedMark:
    """The best mark that still holds for ``shard``: its own, the whole pool's, or (for the
    whole pool) one made of a set of shard marks; ``EmbedMark()`` (look at everything)
    when none holds."""
    best = EmbedMark()
    for src in dict.fromkeys([shard, (0, 1)]):
        mark = read_mark(cache_dir, src)
        if mark is None or mark.upto <= best.upto or not _holds(s, src, mark):
            continue
        failed = [x for x in mark.failed if x % shard[1] == shard[0]]
        best = EmbedMark(mark.upto, count_upto(s, shard, mark.upto) if src != shard
                         else mark.count, failed)
    if shard == (0, 1):
        combined = _from_shards(s, cache_dir, floor=best.upto)
        if combined is not None and combined.upto > best.upto:
            best = combined
    return best
