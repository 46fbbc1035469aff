"""The feature cache: embeddings on disk, keyed by image content hash.

One cache directory holds the embeddings of one backbone configuration (the
``Backbone.cache_key``: backbone, weights, preprocessing), under
``<project>/data/features/<key>/``::

    meta.json                      key, dim and dtype of the vectors
    chunk-<time>-<pid>-<rand>.npz  sha256 (S64, n) + X (float16, (n, dim))

Chunk files are immutable. Every write goes to a temp file in the same directory,
then ``os.replace`` gives it its final name, so a killed writer never leaves a half
chunk behind (a stray ``.tmp-*`` file is never read, and :meth:`FeatureCache.compact`
removes old ones). Each writer creates its own uniquely named chunks, so concurrent
writers (embed shards on several hosts sharing the directory) never touch each
other's files. The index (sha256 -> chunk, row) is rebuilt in memory from the chunk
files' key arrays, reading only the chunks added since the last look.
"""

from __future__ import annotations

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

logger = logging.getLogger(__name__)

STORE_DTYPE = np.float16
_CHUNK_GLOB = "chunk-*.npz"
_TMP_PREFIX = atomic.TMP_PREFIX
_STALE_TMP_SECONDS = 3600.0


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
        self._keys: dict[str, np.ndarray] = {}  # chunk name -> sha256 array (S64)
        self._values: dict[str, np.ndarray] = {}  # chunk name -> float16 (n, dim), lazy
        self._index: dict[str, tuple[str, int]] = {}  # sha256 -> (chunk name, row)

    # ------------------------------------------------------------------ reading
    @property
    def dim(self) -> int | None:
        """Embedding size recorded in ``meta.json``, or None for an empty cache."""
        meta = self._read_meta()
        return None if meta is None else int(meta["dim"])

    def __len__(self) -> int:
        self._refresh()
        return len(self._index)

    def __contains__(self, sha256: object) -> bool:
        self._refresh()
        return sha256 in self._index

    def missing(self, sha256s: Sequence[str]) -> list[str]:
        """The hashes in ``sha256s`` with no cached vector, in input order."""
        self._refresh()
        return [s for s in sha256s if s not in self._index]

    def get(self, sha256s: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Look up cached vectors.

        Parameters
        ----------
        sha256s : sequence of str
            Content hashes to look up.

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
                continue
        raise FeatureError(
            f"feature cache {self.path}: chunks kept vanishing while reading "
            "(concurrent compaction?). Retry."
        )

    def _get(self, sha256s: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        self._refresh()
        found: list[tuple[str, int]] = []
        missing: list[str] = []
        for s in sha256s:
            loc = self._index.get(s)
            if loc is None:
                missing.append(s)
            else:
                found.append(loc)
        X = np.empty((len(found), self.dim or 0), dtype=np.float32)
        if not found:
            return X, missing
        # chunk names as small integer codes: comparing 100k strings per chunk is slow
        codes_of: dict[str, int] = {}
        codes = np.fromiter((codes_of.setdefault(c, len(codes_of)) for c, _ in found),
                            dtype=np.int64, count=len(found))
        rows = np.fromiter((r for _, r in found), dtype=np.int64, count=len(found))
        for name, code in codes_of.items():
            sel = np.flatnonzero(codes == code)
            X[sel] = self._chunk_values(name)[rows[sel]]
        return X, missing

    # ------------------------------------------------------------------ writing
    def put(self, sha256s: Sequence[str], X: np.ndarray) -> None:
        """Store vectors as one new chunk file, atomically.

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
        name = f"chunk-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        key_arr = np.array(keys, dtype="S64")
        atomic.write_with(self.path / name, lambda f: np.savez(f, sha256=key_arr, X=X16))
        logger.debug("feature cache %s: wrote %s (%d vectors)", self.key, name, len(keys))

    def compact(self) -> int:
        """Merge every chunk into one file; return how many chunks were merged.

        Safe with concurrent writers (their new chunks are left alone) and readers
        (they skip a chunk deleted under them). Also removes temp files older than
        an hour, left by killed writers.
        """
        if not self.path.is_dir():
            return 0
        for tmp in self.path.glob(f"{_TMP_PREFIX}*"):
            try:
                if time.time() - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                    tmp.unlink()
            except FileNotFoundError:
                pass
        self._refresh()
        names = sorted(self._keys)
        if len(names) < 2:
            return 0
        shas = list(dict.fromkeys(self._index))  # one row per hash
        X, _ = self.get(shas)
        self.put(shas, X)
        for name in names:
            try:
                (self.path / name).unlink()
            except FileNotFoundError:
                pass
        self._refresh()
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

    def _refresh(self) -> None:
        """Index chunks added since the last look; forget chunks that are gone."""
        names = {p.name for p in self.path.glob(_CHUNK_GLOB)} if self.path.is_dir() else set()
        gone = set(self._keys) - names
        new: list[str] = []
        for name in sorted(names - set(self._keys)):
            try:
                with np.load(self.path / name, allow_pickle=False) as z:
                    self._keys[name] = z["sha256"]
                new.append(name)
            except FileNotFoundError:  # compacted away between glob and open
                pass
        if gone:
            for name in gone:
                self._keys.pop(name, None)
                self._values.pop(name, None)
            self._index = {}
            new = sorted(self._keys)
        for name in new:
            for row, k in enumerate(self._keys[name].tolist()):
                self._index[k.decode("ascii")] = (name, row)

    def _chunk_values(self, name: str) -> np.ndarray:
        vals = self._values.get(name)
        if vals is None:
            with np.load(self.path / name, allow_pickle=False) as z:
                vals = z["X"]
            self._values[name] = vals
        return vals
