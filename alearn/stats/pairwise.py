"""Cohen's kappa: two raters on the items both rated, and every pair of annotators."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from alearn.stats.bootstrap import Estimate, bootstrap_estimate, not_computable, safe_div
from alearn.stats.ratings import check_ratings, named_ratings

__all__ = ["PairwiseKappa", "cohen_kappa", "pairwise_kappa"]


def _kappa_stat(k: int) -> Callable[[np.ndarray], np.ndarray]:
    def stat(s: np.ndarray) -> np.ndarray:
        c = s.reshape(len(s), k, k)
        n = c.sum(axis=(1, 2))
        po = safe_div(np.trace(c, axis1=1, axis2=2), n)
        pe = safe_div(np.einsum("bi,bi->b", c.sum(2), c.sum(1)), n * n)
        return safe_div(po - pe, 1 - pe)
    return stat


def cohen_kappa(
    x: Any, y: Any, *, n_classes: int | None = None, n_boot: int = 1000, seed: int = 0,
    names: tuple[str, str] = ("x", "y"),
) -> Estimate:
    """Cohen's kappa of two raters on the items both rated.

    Parameters
    ----------
    x, y : array-like of shape (n_items,)
        Class indices, -1 where that rater did not rate the item.
    """
    R, k = check_ratings(np.column_stack([np.asarray(x), np.asarray(y)]), n_classes)
    both = R[(R[:, 0] >= 0) & (R[:, 1] >= 0)]
    if len(both) == 0:
        return not_computable(0, f"annotators {names[0]} and {names[1]} rated no item in common")
    cells = np.bincount(both[:, 0] * k + both[:, 1], minlength=k * k)
    seen = np.flatnonzero(cells)
    why = (f"{names[0]} and {names[1]} gave all {len(both)} shared items the same single "
           f"class ({int(both[0, 0])}): chance agreement is 1, so kappa is 0/0 "
           "(they agree on every item; Gwet's AC1 is defined here)")
    return bootstrap_estimate(np.eye(k * k)[seen], _kappa_stat(k), n_boot=n_boot, seed=seed,
                              undefined=why, weights=cells[seen])


@dataclass(frozen=True)
class PairwiseKappa:
    """Cohen's kappa of every pair of annotators, each on the items both rated."""

    annotators: list[Hashable]
    pairs: dict[tuple[int, int], Estimate]  # (i, j) with i < j

    def matrix(self) -> np.ndarray:
        """Kappa values, shape (n_annotators, n_annotators); NaN on the diagonal and for
        pairs whose Estimate is None (its ``reason`` says why)."""
        a = len(self.annotators)
        out = np.full((a, a), np.nan)
        for (i, j), est in self.pairs.items():
            if est.value is not None:
                out[i, j] = out[j, i] = est.value
        return out

    def n_items(self) -> np.ndarray:
        """Items both annotators rated, shape (n_annotators, n_annotators)."""
        out = np.zeros((len(self.annotators),) * 2, dtype=np.int64)
        for (i, j), est in self.pairs.items():
            out[i, j] = out[j, i] = est.n_items
        return out

    def to_dict(self) -> dict[str, Any]:
        names = [str(a) for a in self.annotators]
        return {"annotators": names, "pairs": [
            {"a": names[i], "b": names[j], **est.to_dict()} for (i, j), est in self.pairs.items()
        ]}


def pairwise_kappa(
    R: Any, *, n_classes: int | None = None, n_boot: int = 1000, seed: int = 0
) -> PairwiseKappa:
    """Cohen's kappa for each pair of annotators (columns of ``R``)."""
    R, k, names = named_ratings(R, n_classes)
    a = R.shape[1]
    pairs = {
        (i, j): cohen_kappa(R[:, i], R[:, j], n_classes=k, n_boot=n_boot, seed=seed,
                            names=(str(names[i]), str(names[j])))
        for i in range(a) for j in range(i + 1, a)
    }
    return PairwiseKappa(names, pairs)
