"""The feature cache's immutable files (segments): npz chunks and memory-mapped bases.

A *chunk* (``chunk-*.npz``: ``sha256`` S64 and ``X`` float16) is what one ``put()``
writes; its vectors are read into memory when asked for. A *base* is the pair
``<name>.X.npy`` (float16, (n, dim)) and ``<name>.keys.npy`` (S64, (n,)), plain ``.npy``
files: ``X`` is memory-mapped read-only, so reading it costs page-cache reads, not a
decode, and a process that maps it keeps reading it after a compaction unlinks it.
:meth:`Segment.release` drops pages already read from the process (``MADV_DONTNEED``),
so streaming a pool larger than memory keeps a small resident set; the OS page cache
keeps them for the next reader.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

import alearn.atomic as atomic

_HEX = np.full(256, 0, dtype=np.uint64)
_HEX[np.frombuffer(b"0123456789", dtype=np.uint8)] = np.arange(10, dtype=np.uint64)
_HEX[np.frombuffer(b"abcdef", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint64)
_HEX[np.frombuffer(b"ABCDEF", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint64)
_WRITE_ROWS = 8192
_PAGE = mmap.PAGESIZE


def hex_prefix(keys: np.ndarray) -> np.ndarray:
    """The first 16 hex digits of each S64 key as a uint64 (sorts like the key)."""
    if not len(keys):
        return np.empty(0, dtype=np.uint64)
    digits = _HEX[np.ascontiguousarray(keys, dtype="S64").view(np.uint8).reshape(-1, 64)[:, :16]]
    out = np.zeros(len(keys), dtype=np.uint64)
    for i in range(16):
        out |= digits[:, i] << np.uint64(60 - 4 * i)
    return out


class Segment:
    """One immutable file set of the cache: its name, keys and (lazily) its vectors."""

    def __init__(self, name: str, keys: np.ndarray, paths: Sequence[Path],
                 X: np.ndarray | None = None, mapped: mmap.mmap | None = None,
                 data_offset: int = 0) -> None:
        self.name = name
        self.keys = keys
        self.paths = list(paths)
        self._X = X
        self._mmap = mapped
        self._offset = data_offset

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def mapped(self) -> bool:
        """True for a memory-mapped base."""
        return self._mmap is not None

    def values(self) -> np.ndarray:
        """The float16 vectors, shape (n, dim); a read-only memory map for a base."""
        if self._X is None:
            with np.load(self.paths[0], allow_pickle=False) as z:
                self._X = z["X"]
        return self._X

    def release(self, start: int, stop: int) -> None:
        """Drop rows ``start:stop`` from this process's resident memory (bases only)."""
        if self._mmap is None or self._X is None or stop <= start:
            return
        row = self._X.shape[1] * self._X.itemsize
        a = self._offset + start * row
        b = self._offset + stop * row
        a -= a % _PAGE
        b -= b % _PAGE
        if b > a:
            self._mmap.madvise(mmap.MADV_DONTNEED, a, b - a)

    def delete(self) -> None:
        """Unlink the files (the keys first: a base without keys is never read)."""
        for path in reversed(self.paths):
            path.unlink(missing_ok=True)


def load_chunk(path: Path, eager_rows: int) -> Segment:
    """A chunk: its keys, and its vectors too when it has at most ``eager_rows`` rows (so
    a compaction cannot pull them away later; an old cache's one big chunk loads on use)."""
    with np.load(path, allow_pickle=False) as z:
        keys = z["sha256"]
        X = z["X"] if len(keys) <= eager_rows else None
    return Segment(path.name, keys, [path], X=X)


def open_base(folder: Path, name: str) -> Segment:
    """Map a base's vectors read-only and read its keys."""
    keys_path, x_path = folder / f"{name}.keys.npy", folder / f"{name}.X.npy"
    keys = np.load(keys_path, mmap_mode="r", allow_pickle=False)
    with open(x_path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
        offset = f.tell()
        if fortran or len(shape) != 2 or shape[0] != len(keys):
            raise OSError(f"{x_path}: not a base's (n, dim) C-order array")
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if shape[0] else None
    X = (np.frombuffer(mapped, dtype=dtype, count=shape[0] * shape[1], offset=offset)
         .reshape(shape) if mapped is not None else np.empty(shape, dtype=dtype))
    return Segment(name, keys, [x_path, keys_path], X=X, mapped=mapped, data_offset=offset)


def write_base(folder: Path, name: str, segments: Sequence[Segment], keep: np.ndarray,
               dim: int) -> None:
    """Write the rows ``keep`` (a mask over the segments' rows, concatenated) as base
    ``name``: the vectors in blocks (bounded memory), then the keys, each atomically."""
    n = int(np.count_nonzero(keep))
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
              "fortran_order": False, "shape": (n, dim)}
    keys: list[np.ndarray] = []

    def write_x(f: BinaryIO) -> None:
        np.lib.format.write_array_header_1_0(f, header)
        off = 0
        for seg in segments:
            rows = np.flatnonzero(keep[off: off + len(seg)])
            off += len(seg)
            keys.append(np.asarray(seg.keys)[rows])
            X = seg.values()
            whole = len(rows) == len(seg)
            for a in range(0, len(rows), _WRITE_ROWS):
                block = X[a: a + _WRITE_ROWS] if whole else X[rows[a: a + _WRITE_ROWS]]
                f.write(np.ascontiguousarray(block, dtype=np.float16).tobytes())
                if whole:
                    seg.release(a, a + _WRITE_ROWS)
            seg.release(0, len(seg))

    atomic.write_with(folder / f"{name}.X.npy", write_x)
    all_keys = np.concatenate(keys) if keys else np.empty(0, dtype="S64")
    atomic.write_with(folder / f"{name}.keys.npy",
                      lambda f: np.save(f, all_keys.astype("S64"), allow_pickle=False))
