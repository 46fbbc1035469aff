"""Estimates with a bootstrap interval, and the arithmetic the agreement figures share.

Every agreement figure is an :class:`Estimate`: the value, a 95% percentile bootstrap
interval over items (seeded; resamples where the figure is undefined are dropped), and
the number of items it rests on. Where a figure cannot be computed its value is ``None``
and ``reason`` says why (:func:`not_computable`); no NaN is ever returned silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_EPS = 1e-12

__all__ = ["Estimate", "bootstrap_estimate", "not_computable", "safe_div"]


@dataclass(frozen=True)
class Estimate:
    """One agreement figure: value with a 95% bootstrap interval, or None and why."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n_items: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def not_computable(n_items: int, why: str) -> Estimate:
    """An Estimate with no value, saying why."""
    return Estimate(None, None, None, n_items, f"not computable, because {why}")


def bootstrap_estimate(
    features: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], *, n_boot: int, seed: int,
    undefined: str, weights: np.ndarray | None = None,
) -> Estimate:
    """Value and percentile bootstrap CI of ``stat`` applied to column sums of ``features``.

    ``features`` (n_items, d) holds per-item sufficient statistics (or, with ``weights``,
    distinct rows and how many items have each); ``stat`` maps sums of shape (B, d) to
    values (B,), NaN where undefined. Resampling n items with replacement is the same as a
    multinomial draw over the distinct rows, so one resample costs O(distinct rows).
    """
    if weights is None:
        features, inverse = np.unique(features, axis=0, return_inverse=True)
        weights = np.bincount(inverse.ravel(), minlength=len(features))
    n = int(weights.sum())
    value = float(stat((weights @ features)[None])[0])
    if not np.isfinite(value):
        return not_computable(n, undefined)
    low = high = None
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        p = weights / n
        chunk = max(1, 2_000_000 // len(features))
        vals = np.concatenate([
            stat(rng.multinomial(n, p, size=min(chunk, n_boot - s)) @ features)
            for s in range(0, n_boot, chunk)
        ])
        vals = vals[np.isfinite(vals)]
        if vals.size:
            low, high = (float(v) for v in np.percentile(vals, [2.5, 97.5]))
    return Estimate(value, low, high, n, None)


def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, NaN where ``den`` is (nearly) 0."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    ok = np.abs(den) > _EPS
    np.divide(num, den, out=out, where=ok)
    return out
