"""The feature cache's lookup: sha256 -> (segment, row), vectorised.

Every segment's keys are concatenated in segment order (a later segment wins for a
hash stored twice). The 64-bit prefixes of the hex hashes are sorted once; a lookup of
``q`` hashes is one ``searchsorted`` over them plus a full comparison of the hashes
found, so it costs O(q log n) in numpy, with no per-chunk scan and no Python loop over
the pool. Distinct hashes that share a 64-bit prefix (never seen in practice) are
resolved by comparing the full hashes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alearn.features.segments import Segment, hex_prefix


class KeyIndex:
    """Lookup over ``segments`` (in the order given)."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        sizes = [len(s) for s in segments]
        self.keys = (np.concatenate([np.asarray(s.keys) for s in segments]) if segments
                     else np.empty(0, dtype="S64"))
        self.seg = np.repeat(np.arange(len(segments), dtype=np.int64), sizes)
        self.row = (np.concatenate([np.arange(n, dtype=np.int64) for n in sizes])
                    if segments else np.empty(0, dtype=np.int64))
        prefix = hex_prefix(self.keys)
        self.pos = np.argsort(prefix, kind="stable")  # position of each sorted prefix
        self.pfx = prefix[self.pos]

    def where(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment number, row) of index positions; -1 for -1."""
        if not len(self.seg):
            return pos, pos.copy()
        at = np.maximum(pos, 0)
        return np.where(pos >= 0, self.seg[at], -1), np.where(pos >= 0, self.row[at], -1)

    def locate(self, sha256s: Sequence[str]) -> np.ndarray:
        """Index position of each hash (the latest copy), -1 where missing."""
        try:
            q = np.asarray(sha256s, dtype="S64")
        except UnicodeEncodeError:
            q = np.asarray([s if s.isascii() else "" for s in sha256s], dtype="S64")
        if not len(self.pfx) or not len(q):
            return np.full(len(q), -1, dtype=np.int64)
        qp = hex_prefix(q)
        i = np.searchsorted(self.pfx, qp, side="right") - 1
        hit = (i >= 0) & (self.pfx[np.maximum(i, 0)] == qp)
        pos = np.where(hit, self.pos[np.maximum(i, 0)], -1)
        bad = np.flatnonzero(hit & (self.keys[np.maximum(pos, 0)] != q))
        for j in bad.tolist():  # two hashes share a 64-bit prefix: compare them all
            lo = int(np.searchsorted(self.pfx, qp[j], side="left"))
            same = [int(p) for p in self.pos[lo: i[j] + 1] if self.keys[p] == q[j]]
            pos[j] = max(same) if same else -1
        return pos

    def winners(self, segments: Sequence[int] | None = None) -> np.ndarray:
        """Mask over the positions of ``segments`` (all by default), concatenated in
        order: True at the latest copy of each hash."""
        if segments is not None and list(segments) != list(range(int(self.seg.max(initial=-1))
                                                                + 1)):
            keys = self.keys[np.isin(self.seg, list(segments))][::-1]  # last copy first
            _, first = np.unique(keys, return_index=True)
            keep = np.zeros(len(keys), dtype=bool)
            keep[len(keys) - 1 - first] = True
            return keep
        keep = np.zeros(len(self.pfx), dtype=bool)
        if not len(keep):
            return keep
        last = np.ones(len(keep), dtype=bool)  # last of its run of equal prefixes
        last[:-1] = self.pfx[1:] != self.pfx[:-1]
        keep[self.pos[last]] = True
        dup = np.flatnonzero(~last)
        odd = dup[self.keys[self.pos[dup]] != self.keys[self.pos[dup + 1]]]
        for j in odd.tolist():  # distinct hashes share a prefix: the latest of each
            run = self.pos[self.pfx == self.pfx[j]]
            latest: dict[bytes, int] = {}
            for p in sorted(run.tolist()):
                latest[bytes(self.keys[p])] = p
            keep[run] = False
            keep[list(latest.values())] = True
        return keep
