"""The feature cache: embeddings on disk, keyed by image content hash.

One cache directory holds the embeddings of one backbone configuration (the
``Backbone.cache_key``: backbone, weights, preprocessing), under
``<project>/data/features/<key>/``. Its *segments* are immutable files::

    meta.json                      key, dim and dtype of the vectors
    chunk-<time>-<pid>-<rand>.npz  sha256 (S64, n) + X (float16, (n, dim)): what put() writes
    base-<time>-<pid>-<rand>.X.npy     float16 (n, dim), memory-mapped when read
    base-<time>-<pid>-<rand>.keys.npy  sha256 (S64, n); written last, so it marks a whole base

Every write goes to a temp file in the same directory and ``os.replace`` gives it its
final name, so a killed writer never leaves a half file behind (a stray ``.tmp-*`` file
is never read; :meth:`FeatureCache.compact` removes old ones). Each writer creates its
own uniquely named files, so concurrent writers (embed shards on several hosts sharing
the directory) never touch each other's. *Compaction* merges segments into one base
(plain ``.npy`` files that ``np.load(mmap_mode='r')`` opens) and only then deletes the
segments it merged: whatever it deletes is already in a file it wrote, so concurrent
writers, readers and other compactions lose nothing (a reader that finds a chunk gone
re-indexes; a base it has mapped stays readable after the unlink). :meth:`put` compacts
by itself past :data:`COMPACT_CHUNKS` chunks.

The *version* (:attr:`FeatureCache.version`) is a digest of the segment names, so it
changes whenever the content may have: warm readers compare it to know when to reload.
Lookup is one vectorised binary search over the hashes' 64-bit prefixes (the full
hash is then compared), with no per-chunk scan; the index is rebuilt from the key
arrays only when the segment list changed.
"""

from __future__ import annotations

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
from alearn.features.segments import (
    Segment,
    hex_prefix,
    load_chunk_keys,
    open_base,
    write_base,
)

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
        self._keys = np.empty(0, dtype="S64")  # every segment's keys, concatenated
        self._seg = np.empty(0, dtype=np.int32)  # segment number of each position
        self._row = np.empty(0, dtype=np.int64)  # row within its segment
        self._pfx = np.empty(0, dtype=np.uint64)  # sorted 64-bit prefixes
        self._pos = np.empty(0, dtype=np.int64)  # position of each sorted prefix

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
        return int(np.count_nonzero(self._winners()))

    def __contains__(self, sha256: object) -> bool:
        return isinstance(sha256, str) and not self.missing([sha256])

    def missing(self, sha256s: Sequence[str]) -> list[str]:
        """The hashes in ``sha256s`` with no cached vector, in input order."""
        self._refresh()
        pos = self._locate(sha256s)
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
        pos = self._locate(sha256s)
        if not len(self._seg):
            return pos, pos.copy()
        seg = np.where(pos >= 0, self._seg[np.maximum(pos, 0)], -1).astype(np.int64)
        row = np.where(pos >= 0, self._row[np.maximum(pos, 0)], -1)
        return seg, row

    def get(self, sha256s: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Look up cached vectors.

        Returns
        -------
        X : ndarray of shape (n_found, dim), float32
            One row per hash that is cached, in the order those hashes appear in
            ``sha256s`` (missing ones are skipped, so row ``j`` belongs to the
            ``j``-th found hash: ``[s for s in sha256s if s not in set(missing)]``).
        missing : list of str
            The hashes with no cached vector, in input order.
        """
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
        """Store vectors as one new chunk file, atomically (then compact if due).

        Parameters
        ----------
        sha256s : sequence of str
            Content hashes (64 hex characters), one per row of ``X``.
        X : ndarray of shape (n, dim)
            Embeddings; stored as float16.
        """
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
        self._refresh()
        chunks = [n for n in self._order if n.startswith("chunk-")]
        bases = [n for n in self._order if n.startswith("base-")]
        rows = sum(len(self._segments[n]) for n in chunks)
        if len(bases) + (1 if chunks else 0) > COMPACT_BASES:
            # merge all but the largest base while it holds most rows: each row is
            # rewritten O(log n) times as the cache grows, not once per compaction
            size = {n: len(self._segments[n]) for n in self._order}
            big = max(bases, key=size.__getitem__)
            small = [n for n in self._order if n != big]
            todo = small if 2 * size[big] > sum(size.values()) else self._order
        elif len(chunks) > COMPACT_CHUNKS or rows > COMPACT_CHUNK_ROWS:
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
            try:
                orphan = tmp.name.endswith(".X.npy") and not \
                    (self.path / tmp.name.replace(".X.npy", _BASE_KEYS)).exists()
                if (orphan or tmp.name.startswith(_TMP_PREFIX)) and \
                        now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                    tmp.unlink()
            except FileNotFoundError:
                pass
        self._refresh()
        if len(self._order) < 2 and not any(n.startswith("chunk-") for n in self._order):
            return 0
        return self._merge(list(self._order))

    def _merge(self, names: list[str]) -> int:
        """Write the vectors of ``names`` (one row per hash) as a new base, then delete them."""
        for _ in range(3):
            try:
                segments = [self._segments[n] for n in names]
                keep = self._winners(names)
                write_base(self.path, f"base-{_unique()}", segments, keep, self.dim or 0)
                break
            except FileNotFoundError:  # another compaction took some of them: merge the rest
                self._forget_all()
                self._refresh()
                names = [n for n in names if n in self._segments]
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
        self._segments, self._order = {}, []

    def _refresh(self, *, index: bool = True) -> None:
        """Open segments added since the last look, forget gone ones, re-index if changed."""
        names = self._list_names()
        changed = set(self._segments) != names
        for name in sorted(names - set(self._segments)):
            try:
                if name.startswith("chunk-"):
                    self._segments[name] = load_chunk_keys(self.path / name)
                else:
                    self._segments[name] = open_base(self.path, name)
            except FileNotFoundError:  # compacted away between the listing and the open
                pass
        for name in set(self._segments) - names:
            del self._segments[name]
        if index and (changed or self._order != sorted(self._segments)):
            self._reindex()

    def _reindex(self) -> None:
        self._order = sorted(self._segments)
        segs = [self._segments[n] for n in self._order]
        sizes = [len(s) for s in segs]
        self._keys = (np.concatenate([s.keys for s in segs]) if segs
                      else np.empty(0, dtype="S64"))
        self._seg = np.repeat(np.arange(len(segs), dtype=np.int32), sizes)
        self._row = (np.concatenate([np.arange(n, dtype=np.int64) for n in sizes]) if segs
                     else np.empty(0, dtype=np.int64))
        prefix = hex_prefix(self._keys)
        self._pos = np.argsort(prefix, kind="stable")
        self._pfx = prefix[self._pos]

    def _locate(self, sha256s: Sequence[str]) -> np.ndarray:
        """Index position of each hash (the latest copy), -1 where missing."""
        try:
            q = np.asarray(sha256s, dtype="S64")
        except UnicodeEncodeError:
            q = np.asarray([s if s.isascii() else "" for s in sha256s], dtype="S64")
        if not len(self._pfx) or not len(q):
            return np.full(len(q), -1, dtype=np.int64)
        qp = hex_prefix(q)
        i = np.searchsorted(self._pfx, qp, side="right") - 1
        hit = (i >= 0) & (self._pfx[np.maximum(i, 0)] == qp)
        pos = np.where(hit, self._pos[np.maximum(i, 0)], -1)
        bad = np.flatnonzero(hit & (self._keys[np.maximum(pos, 0)] != q))
        for j in bad.tolist():  # two hashes share a 64-bit prefix: compare them all
            lo = int(np.searchsorted(self._pfx, qp[j], side="left"))
            same = [int(p) for p in self._pos[lo: i[j] + 1] if self._keys[p] == q[j]]
            pos[j] = max(same) if same else -1
        return pos

    def _winners(self, names: list[str] | None = None) -> np.ndarray:
        """Mask over the positions of ``names``' segments (all by default), in index
        order: True at the latest copy of each hash."""
        if names is not None and names != self._order:
            mine = np.isin(self._seg, [self._order.index(n) for n in names])
            keys = self._keys[mine][::-1]  # the last copy of a hash comes first here
            _, first = np.unique(keys, return_index=True)
            keep = np.zeros(len(keys), dtype=bool)
            keep[len(keys) - 1 - first] = True
            return keep
        keep = np.zeros(len(self._pfx), dtype=bool)
        if not len(keep):
            return keep
        last = np.ones(len(keep), dtype=bool)  # last of its run of equal prefixes
        last[:-1] = self._pfx[1:] != self._pfx[:-1]
        keep[self._pos[last]] = True
        dup = np.flatnonzero(~last)
        odd = dup[self._keys[self._pos[dup]] != self._keys[self._pos[dup + 1]]]
        for j in odd.tolist():  # distinct hashes share a prefix: the latest of each
            run = self._pos[self._pfx == self._pfx[j]]
            latest: dict[bytes, int] = {}
            for p in sorted(run.tolist()):
                latest[bytes(self._keys[p])] = p
            keep[run] = False
            keep[list(latest.values())] = True
        return keep


def _unique() -> str:
    return f"{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
