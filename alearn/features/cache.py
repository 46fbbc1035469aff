"""The feature cache: embeddings on disk, keyed by image content hash.

One cache directory holds the embeddings of one backbone configuration (the
``Backbone.cache_key``) under ``<project>/data/features/<key>/``. Its *segments* are
immutable files (:mod:`alearn.features.segments`)::

    meta.json                          key, dim and dtype of the vectors
    chunk-<time>-<pid>-<rand>.npz      sha256 (S64, n) + X (float16, (n, dim)): one put()
    base-<time>-<pid>-<rand>.X.npy     float16 (n, dim), memory-mapped when read
    base-<time>-<pid>-<rand>.keys.npy  sha256 (S64, n); written last: it marks a whole base

Every file is written to a temp file in the same directory, then renamed
(:mod:`alearn.atomic`), so a killed writer never leaves half a file (a stray ``.tmp-*``
is never read; :meth:`FeatureCache.compact` removes old ones). Each writer names its own
files, so concurrent writers (embed shards on several hosts sharing the directory) never
touch each other's. *Compaction* writes the segments it merges as one base and only
then deletes them: whatever it deletes is already in a file it wrote, so concurrent
writers, readers and compactions lose nothing (a reader that finds a chunk gone
re-indexes; a mapped base stays readable after its unlink). :meth:`FeatureCache.put`
compacts by itself when due (:meth:`FeatureCache.compact_if_due`).

The *version* (:attr:`FeatureCache.version`) digests the segment names, so it changes
whenever the content may have: warm readers compare it to know when to reload. Lookup
is vectorised (:mod:`alearn.features.keyindex`), rebuilt only when segments changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import alearn.atomic as atomic
from alearn.exceptions import FeatureError
from alearn.features.keyindex import KeyIndex
from alearn.features.segments import Segment, load_chunk, open_base, write_base

logger = logging.getLogger(__name__)

STORE_DTYPE = np.float16
_CHUNK_GLOB = "chunk-*.npz"
_BASE_KEYS = ".keys.npy"
_TMP_PREFIX = atomic.TMP_PREFIX
_STALE_TMP_SECONDS = 3600.0
#: put() merges the chunks into a base past this many chunk files (or rows)
COMPACT_CHUNKS = 32
COMPACT_CHUNK_ROWS = 16384
#: ... and merges every base into one past this many bases
COMPACT_BASES = 4


class FeatureCache:
    """Embeddings of one backbone configuration, stored by image sha256.

    Parameters
    ----------
    root : Path
        The features directory (``project.features_dir``).
    key : str
        The backbone configuration's cache key; the cache lives in ``root / key``.
    """

    def __init__(self, root: Path, key: str) -> None:
        if not key or "/" in key or key.startswith("."):
            raise FeatureError(f"feature cache key {key!r} is not a plain folder name.")
        self.root = Path(root)
        self.key = key
        self.path = self.root / key
        self._segments: dict[str, Segment] = {}
        self._order: list[str] = []  # segment names, in index order
        self._index = KeyIndex([])

    # ------------------------------------------------------------------ reading
    @property
    def dim(self) -> int | None:
        """Embedding size recorded in ``meta.json``, or None for an empty cache."""
        meta = self._read_meta()
        return None if meta is None else int(meta["dim"])

    @property
    def version(self) -> str:
        """A digest of the segment names: changes whenever vectors are added or merged."""
        names = sorted(self._list_names())
        return hashlib.sha1("\n".join(names).encode()).hexdigest()[:16] if names else ""

    def __len__(self) -> int:
        self._refresh()
        return int(np.count_nonzero(self._index.winners()))

    def __contains__(self, sha256: object) -> bool:
        return isinstance(sha256, str) and not self.missing([sha256])

    def missing(self, sha256s: Sequence[str]) -> list[str]:
        """The hashes in ``sha256s`` with no cached vector, in input order."""
        self._refresh()
        pos = self._index.locate(sha256s)
        return [s for s, p in zip(sha256s, pos.tolist(), strict=True) if p < 0]

    def segments(self) -> list[Segment]:
        """The segments, in index order (a later one wins for a hash stored twice).

        Opens them (bases memory-mapped, chunks' vectors read on use) without building
        the lookup index, so a reader that knows its rows pays no index."""
        self._refresh(index=False)
        return [self._segments[n] for n in sorted(self._segments)]

    def locate(self, sha256s: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(segment number, row) of each hash in :meth:`segments` order; -1 if missing."""
        self._refresh()
        return self._index.where(self._index.locate(sha256s))

    def get(self, sha256s: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Look up cached vectors: ``X`` (n_found, dim) float32, one row per cached hash
        in input order (missing ones skipped), and the ``missing`` hashes in input order."""
        for _ in range(3):
            try:
                return self._get(sha256s)
            except FileNotFoundError:  # a concurrent compact() removed a chunk: re-index
                self._forget_all()
        raise FeatureError(
            f"feature cache {self.path}: chunks kept vanishing while reading "
            "(concurrent compaction?). Retry."
        )

    def _get(self, sha256s: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        seg, row = self.locate(sha256s)
        found = np.flatnonzero(seg >= 0)
        missing = [sha256s[i] for i in np.flatnonzero(seg < 0).tolist()]
        X = np.empty((len(found), self.dim or 0), dtype=np.float32)
        segments = [self._segments[n] for n in self._order]
        for s in np.unique(seg[found]).tolist():
            sel = np.flatnonzero(seg[found] == s)
            X[sel] = segments[s].values()[row[found[sel]]]
        return X, missing

    # ------------------------------------------------------------------ writing
    def put(self, sha256s: Sequence[str], X: np.ndarray) -> None:
        """Store ``X`` (n, dim; kept as float16) for ``sha256s`` (n hex hashes) as one new
        chunk file, atomically; then compact if due."""
        X = np.asarray(X)
        keys = list(sha256s)
        if X.ndim != 2 or X.shape[0] != len(keys):
            raise FeatureError(
                f"put() needs X of shape (n, dim) with n = len(sha256s) = {len(keys)}; "
                f"got shape {X.shape}."
            )
        if not keys:
            return
        bad = [k for k in keys if len(k) != 64]
        if bad:
            raise FeatureError(f"put() got {len(bad)} keys that are not sha256 hex: {bad[:3]}")
        with np.errstate(over="ignore"):
            X16 = X.astype(STORE_DTYPE)
        if not np.all(np.isfinite(X16)):
            raise FeatureError(
                f"embeddings for {self.key} contain NaN/inf (or values beyond float16 "
                f"range, max |x| = {float(np.nanmax(np.abs(X))):.3g}); not caching them."
            )
        self._ensure_meta(X.shape[1])
        name = f"chunk-{_unique()}.npz"
        key_arr = np.array(keys, dtype="S64")
        atomic.write_with(self.path / name, lambda f: np.savez(f, sha256=key_arr, X=X16))
        logger.debug("feature cache %s: wrote %s (%d vectors)", self.key, name, len(keys))
        self.compact_if_due()

    def compact_if_due(self) -> int:
        """Merge the chunks into a base past :data:`COMPACT_CHUNKS` chunks (or
        :data:`COMPACT_CHUNK_ROWS` rows, e.g. an old cache's single big chunk), and every
        base into one past :data:`COMPACT_BASES`; returns the segments merged. Skipped
        while another process of this host compacts."""
        self._refresh(index=False)  # names and sizes only: no index while writing
        order = sorted(self._segments)
        size = {n: len(self._segments[n]) for n in order}
        chunks = [n for n in order if n.startswith("chunk-")]
        bases = [n for n in order if n.startswith("base-")]
        if len(bases) + (1 if chunks else 0) > COMPACT_BASES:
            # all but the largest base while it holds most rows: each row is rewritten
            # O(log n) times as the cache grows, not once per compaction
            big = max(bases, key=size.__getitem__)
            todo = [n for n in order if n != big or 2 * size[big] <= sum(size.values())]
        elif len(chunks) > COMPACT_CHUNKS or sum(size[n] for n in chunks) > COMPACT_CHUNK_ROWS:
            todo = chunks
        else:
            return 0
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "compact.lock", "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            return self._merge(list(todo))

    def compact(self) -> int:
        """Merge every segment into one base; return how many segments were merged.

        Safe with concurrent writers (their new chunks are left alone), readers and
        other compactions. Also removes temp files older than an hour, left by killed
        writers.
        """
        if not self.path.is_dir():
            return 0
        now = time.time()
        for tmp in [*self.path.glob(f"{_TMP_PREFIX}*"), *self.path.glob("base-*.X.npy")]:
            keys = self.path / tmp.name.replace(".X.npy", _BASE_KEYS)  # orphan: no keys
            with contextlib.suppress(FileNotFoundError):
                if (tmp.name.startswith(_TMP_PREFIX) or not keys.exists()) and \
                        now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                    tmp.unlink()
        self._refresh()
        if len(self._order) < 2 and not any(n.startswith("chunk-") for n in self._order):
            return 0
        return self._merge(list(self._order))

    def _merge(self, names: list[str]) -> int:
        """Write the vectors of ``names`` (one row per hash) as a new base, then delete them."""
        for _ in range(3):
            try:
                self._refresh()
                names = [n for n in names if n in self._segments]
                segments = [self._segments[n] for n in names]
                keep = self._index.winners([self._order.index(n) for n in names])
                write_base(self.path, f"base-{_unique()}", segments, keep, self.dim or 0)
                break
            except FileNotFoundError:  # another compaction took some of them: merge the rest
                self._forget_all()
        else:
            raise FeatureError(f"feature cache {self.path}: could not compact; retry.")
        for name in names:
            self._segments[name].delete()
        self._forget_all()
        logger.info("feature cache %s: merged %d segments", self.key, len(names))
        return len(names)

    # ------------------------------------------------------------------ internals
    def _read_meta(self) -> dict | None:
        try:
            return json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def _ensure_meta(self, dim: int) -> None:
        meta = self._read_meta()
        if meta is None:
            data = {"key": self.key, "dim": int(dim), "dtype": np.dtype(STORE_DTYPE).name}
            atomic.write_json(self.path / "meta.json", data, indent=2)
        elif int(meta["dim"]) != dim:
            raise FeatureError(
                f"feature cache {self.path} holds {meta['dim']}-d vectors, but put() got "
                f"{dim}-d ones. The cache key must change with the backbone; delete the "
                "folder if it is stale."
            )

    def _list_names(self) -> set[str]:
        if not self.path.is_dir():
            return set()
        names = {p.name for p in self.path.glob(_CHUNK_GLOB)}
        return names | {p.name[: -len(_BASE_KEYS)] for p in self.path.glob(f"base-*{_BASE_KEYS}")}

    def _forget_all(self) -> None:
        self._segments, self._order, self._index = {}, [], KeyIndex([])

    def _refresh(self, *, index: bool = True) -> None:
        """Open segments added since the last look, forget gone ones, re-index if changed.

        The listing is taken again until every listed segment opened and none of them
        was deleted meanwhile: a compaction deletes only after writing its base, so such
        a listing holds every vector (chunks are listed before bases for that reason)."""
        for _ in range(10):
            names = self._list_names()
            try:
                for name in sorted(names - set(self._segments)):
                    self._segments[name] = (load_chunk(self.path / name, COMPACT_CHUNK_ROWS)
                                            if name.startswith("chunk-")
                                            else open_base(self.path, name))
            except FileNotFoundError:  # compacted away between the listing and the open
                continue
            if names <= self._list_names():
                break
        for name in set(self._segments) - names:
            del self._segments[name]
        if index and self._order != sorted(self._segments):
            self._reindex()

    def _reindex(self) -> None:
        self._order = sorted(self._segments)
        self._index = KeyIndex([self._segments[n] for n in self._order])


def _unique() -> str:
    return f"{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
