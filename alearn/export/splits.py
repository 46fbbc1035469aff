"""Train/validation/test splits that keep class proportions and near-duplicates together.

Near-identical images (a re-save, a slightly noisier copy) must never sit on both sides
of a split, or the test score measures memory. Each image gets a 64-bit perceptual hash
(:func:`phash`); images whose hashes differ in at most ``max_distance`` bits are joined
into one group (union-find, :func:`near_duplicate_groups`), and whole groups are assigned
to splits by a deterministic greedy pass that keeps each class near its target share, then
moved where needed so that every class with enough groups reaches every split
(:func:`stratified_group_split`). :func:`split_shortfalls` names the classes that could not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from alearn.exceptions import ConfigError

SPLIT_NAMES = ("train", "validation", "test")
HASH_BITS = 64


def parse_split(value: str | Sequence[float]) -> tuple[float, float, float]:
    """Parse ``"0.8,0.1,0.1"`` (or a sequence) into three fractions summing to 1."""
    text = value if isinstance(value, str) else ",".join(str(v) for v in value)
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    ok = (len(parts) == 3 and all(np.isfinite(p) and p >= 0 for p in parts)
          and abs(sum(parts) - 1.0) <= 1e-6 and parts[0] > 0)
    if not ok:
        raise ConfigError(
            f"split {text!r}: give three non-negative numbers (train,validation,test) that "
            "sum to 1, with train above 0, e.g. '0.8,0.1,0.1'."
        )
    return parts  # type: ignore[return-value]


def _dct_matrix(n: int, k: int) -> np.ndarray:
    """The first ``k`` rows of the orthonormal DCT-II matrix of size ``n``; shape (k, n)."""
    rows = np.arange(k)[:, None]
    cols = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * cols + 1) * rows / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(32, 8)


def phash(img: Image.Image) -> int:
    """64-bit perceptual hash (the DCT hash of ``imagehash.phash``).

    The image is reduced to 32x32 grayscale; bit i is set where the i-th of the 8x8
    lowest-frequency DCT coefficients exceeds their median. Unlike a difference hash it
    has about as many ones as zeros even for flat backgrounds, so unrelated images are
    far apart (about 32 bits) and small edits move it by a few bits.
    """
    a = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS),
                   dtype=np.float64)
    coeffs = (_DCT @ a @ _DCT.T).ravel()
    bits = coeffs > np.median(coeffs)
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def file_phash(path: Path) -> int:
    """:func:`phash` of an image file (JPEGs are decoded at a reduced scale)."""
    with Image.open(path) as img:
        img.draft("L", (64, 64))
        return phash(img)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def near_duplicate_groups(hashes: Sequence[int], *, max_distance: int = 4) -> np.ndarray:
    """Group images whose hashes are within ``max_distance`` bits (transitively).

    Parameters
    ----------
    hashes : sequence of int, length n_images
        64-bit perceptual hashes.
    max_distance : int
        Largest Hamming distance that makes two images near-duplicates (0: equal hashes).

    Returns
    -------
    groups : ndarray of shape (n_images,)
        For each image, the smallest index in its group.

    Notes
    -----
    Pigeonhole search: split the 64 bits into ``max_distance + 1`` blocks; two hashes
    within the distance agree on at least one whole block, so only hashes sharing a block
    value are compared. That is near-linear for real images.
    """
    if not 0 <= max_distance <= 32:
        raise ConfigError(f"near-duplicate distance {max_distance}: give 0 to 32 bits.")
    n = len(hashes)
    uf = _UnionFind(n)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    h = np.array([int(x) & (2**HASH_BITS - 1) for x in hashes], dtype=np.uint64)
    uniq, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    for i, u in enumerate(inverse.ravel()):  # equal hashes: same group
        uf.union(int(first[u]), i)
    if max_distance > 0 and len(uniq) > 1:
        edges = np.linspace(0, HASH_BITS, max_distance + 2).astype(int)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            block = (uniq >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
            order = np.argsort(block, kind="stable")
            cuts = np.flatnonzero(np.diff(block[order])) + 1
            for members in np.split(order, cuts):
                if len(members) > 1:
                    _join_close(uniq, members, max_distance, uf, first)
    return np.array([uf.find(i) for i in range(n)], dtype=np.int64)


def _join_close(uniq: np.ndarray, members: np.ndarray, max_distance: int, uf: _UnionFind,
                first: np.ndarray) -> None:
    vals = uniq[members]
    dist = np.bitwise_count(vals[:, None] ^ vals[None, :])
    rows, cols = np.nonzero(np.triu(dist <= max_distance, k=1))
    for r, c in zip(rows, cols, strict=True):
        uf.union(int(first[members[r]]), int(first[members[c]]))


def stratified_group_split(
    labels: Sequence[int], groups: Sequence[int], fractions: Sequence[float], *,
    n_classes: int, seed: int = 0,
) -> np.ndarray:
    """Assign whole groups to splits, keeping each class near its target share.

    Parameters
    ----------
    labels : sequence of int, length n_items
        Class index of each item.
    groups : sequence of int, length n_items
        Group id of each item; a group never spans two splits.
    fractions : sequence of float, length n_splits
        Target share of each split (summing to 1).
    n_classes : int
    seed : int
        Orders groups of equal size; the same inputs and seed give the same splits.

    Returns
    -------
    split : ndarray of shape (n_items,)
        Split index of each item.

    Notes
    -----
    Groups go largest first (ties in a seeded random order). Each goes to the split whose
    per-class shortfall ``target - current``, summed over the group's items, is largest;
    ties go to the earlier split. With singleton groups a class of n items gets the
    split sizes a largest-deficit rounding of ``n * fractions`` gives.

    That rounding leaves small classes out of small splits (5 items at 0.8/0.1/0.1: 4/1/0),
    and with many small classes a split can end up empty. A second pass (:func:`_cover`)
    then moves whole groups: every class with at least as many groups as there are splits
    with a non-zero share gets a group in each of them, and no such split stays empty when
    there are at least as many groups as such splits. Each move is the one that moves the
    class counts least from their targets, and never takes a class's last group out of a
    split, so a split the greedy pass already covers is left as it is.
    """
    labels_a = np.asarray(labels, dtype=np.int64)
    groups_a = np.asarray(groups, dtype=np.int64)
    frac = np.asarray(fractions, dtype=float)
    if labels_a.shape != groups_a.shape:
        raise ValueError(f"labels {labels_a.shape} and groups {groups_a.shape} differ in shape")
    split = np.full(len(labels_a), -1, dtype=np.int64)
    if not len(labels_a):
        return split
    uniq, inverse = np.unique(groups_a, return_inverse=True)
    counts = np.zeros((len(uniq), n_classes), dtype=float)
    np.add.at(counts, (inverse, labels_a), 1.0)
    target = frac[:, None] * counts.sum(axis=0)[None, :]
    current = np.zeros_like(target)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    usable = frac > 0
    group_split = np.empty(len(uniq), dtype=np.int64)
    for g in order:
        gain = ((target - current) * counts[g][None, :]).sum(axis=1)
        gain[~usable] = -np.inf
        s = int(np.argmax(gain))
        group_split[g] = s
        current[s] += counts[g]
    _cover(group_split, counts, target, usable, order)
    split[:] = group_split[inverse]
    return split


def _cover(group_split: np.ndarray, counts: np.ndarray, target: np.ndarray,
           usable: np.ndarray, order: np.ndarray) -> None:
    """Move whole groups (in place) so that each class with at least as many groups as
    usable splits is in every usable split, and no usable split is empty while another
    holds two groups or more."""
    has = counts > 0
    n_groups, k = len(group_split), int(usable.sum())
    per_class = has.sum(axis=0)
    eligible = per_class >= k
    rank = np.empty(n_groups, dtype=np.int64)
    rank[order] = np.arange(n_groups)
    present = np.zeros_like(target)  # groups holding each class, per split
    np.add.at(present, group_split, has.astype(float))
    current = np.zeros_like(target)
    np.add.at(current, group_split, counts)
    wanted = [(int(c), int(s)) for c in np.argsort(per_class, kind="stable") if eligible[c]
              for s in np.flatnonzero(usable)]
    wanted += [(-1, int(s)) for s in np.flatnonzero(usable)]
    for c, s in wanted:
        n_in = np.bincount(group_split, minlength=len(target))
        if (present[s, c] > 0) if c >= 0 else n_in[s] > 0:
            continue
        movable = (group_split != s) & (n_in[group_split] >= 2)
        keeps = ~(has & eligible[None, :] & (present[group_split] < 2)).any(axis=1)
        cand = movable & keeps & (has[:, c] if c >= 0 else True)
        if c < 0 and not cand.any():
            cand = movable  # an empty split is worse than a class missing from one
        if not cand.any():
            continue
        # change in the squared distance of the counts from their targets
        surplus = current[group_split] - target[group_split] - (current[s] - target[s])
        cost = (2 * counts**2 - 2 * counts * surplus).sum(axis=1)
        g = min(np.flatnonzero(cand), key=lambda i: (cost[i], rank[i]))
        t = group_split[g]
        present[t] -= has[g]
        current[t] -= counts[g]
        present[s] += has[g]
        current[s] += counts[g]
        group_split[g] = s


def split_shortfalls(labels: Sequence[int], groups: Sequence[int], split: Sequence[int],
                     fractions: Sequence[float], *, n_classes: int
                     ) -> list[tuple[int, int, str]]:
    """``(class, split, reason)`` for each split with a non-zero share that has no item of
    a class, in class then split order; the reason says why the class could not be there."""
    labels_a, groups_a = np.asarray(labels, dtype=np.int64), np.asarray(groups, dtype=np.int64)
    split_a = np.asarray(split, dtype=np.int64)
    usable = np.flatnonzero(np.asarray(fractions, dtype=float) > 0)
    k, out = len(usable), []
    for c in range(n_classes):
        mine = labels_a == c
        n, n_groups = int(mine.sum()), len(np.unique(groups_a[mine]))
        if not n:
            reason = "no exported labels"
        elif n < k:
            reason = f"only {n} item{'s' if n > 1 else ''}, for {k} splits"
        elif n_groups < k:
            reason = (f"{n} items in only {n_groups} near-duplicate group"
                      f"{'s' if n_groups > 1 else ''}, for {k} splits (a group stays in "
                      "one split)")
        else:
            reason = "its near-duplicate groups also hold other classes needed elsewhere"
        out += [(c, int(s), reason) for s in usable if not (split_a[mine] == s).any()]
    return out
