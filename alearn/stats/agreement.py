"""Inter-annotator agreement on a ratings matrix, each figure with a bootstrap interval.

The data model is a ratings matrix ``R`` of shape (n_items, n_annotators): ``R[i, j]`` is
the class index (0..k-1) annotator ``j`` gave item ``i``, or -1 if ``j`` did not rate it.
:func:`ratings_matrix` builds one from ``(item, annotator, label)`` triples.

Every figure is an :class:`Estimate`: the value, a 95% percentile bootstrap interval over
items (seeded; resamples where the figure is undefined are dropped), and the number of
items it rests on. Where a figure cannot be computed its value is ``None`` and ``reason``
says why; no NaN is ever returned silently.

Decisions, stated once:

- **One class only.** When every rating is the same class, expected (chance) agreement is
  1 and Cohen's, Fleiss' kappa and Krippendorff's alpha are 0/0: they are reported as
  ``None`` with that reason. Gwet's AC1 is defined there (it equals percent agreement).
- **Fleiss' kappa** needs the same number of ratings per item. It uses the items that have
  exactly ``m`` ratings, ``m`` being the most common count >= 2 (the larger on a tie);
  ``n_items`` says how many items that was.
- **Gwet's AC1** follows Gwet (2008) / Gwet's handbook for several raters with missing
  ratings: agreement over items with >= 2 ratings, class prevalence over items with >= 1.
- **Per-class agreement** is Krippendorff's alpha on the binary "this class or not"
  ratings (it handles missing ratings and any number of raters).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from alearn.exceptions import ConfigError

log = logging.getLogger(__name__)

MISSING = -1
_EPS = 1e-12

__all__ = [
    "AgreementReport", "Estimate", "PairwiseKappa", "Ratings", "agreement_report",
    "check_ratings", "cohen_kappa", "fleiss_kappa", "gwet_ac1", "krippendorff_alpha",
    "pairwise_kappa", "per_class_agreement", "percent_agreement", "ratings_matrix",
    "vote_counts",
]


@dataclass(frozen=True)
class Ratings:
    """A ratings matrix with the ids behind its rows, columns and values."""

    items: list[Hashable]
    annotators: list[Hashable]
    matrix: np.ndarray  # (n_items, n_annotators) int64, -1 = not rated
    classes: list[str]


def ratings_matrix(
    votes: Iterable[tuple[Hashable, Hashable, Any]], classes: Sequence[str]
) -> Ratings:
    """Build a :class:`Ratings` from ``(item_id, annotator, label)`` triples.

    ``label`` is a class name from ``classes`` or a class index; ``None`` (a skipped task)
    is ignored. Items and annotators keep the order in which they first appear.
    Two votes for the same (item, annotator) raise :class:`ConfigError`.
    """
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    items: dict[Hashable, int] = {}
    annotators: dict[Hashable, int] = {}
    cells: dict[tuple[int, int], int] = {}
    for item, annotator, label in votes:
        if label is None:
            continue
        if isinstance(label, str):
            if label not in index:
                raise ConfigError(
                    f"vote ({item!r}, {annotator!r}) has label {label!r}, which is not one "
                    f"of the classes {classes}. Pass the project's class list."
                )
            code = index[label]
        elif isinstance(label, int | np.integer) and not isinstance(label, bool):
            code = int(label)
            if not 0 <= code < len(classes):
                raise ConfigError(
                    f"vote ({item!r}, {annotator!r}) has class index {code}; valid indices "
                    f"are 0..{len(classes) - 1}."
                )
        else:
            raise ConfigError(
                f"vote ({item!r}, {annotator!r}) has label {label!r} of type "
                f"{type(label).__name__}; give a class name or a class index."
            )
        key = (items.setdefault(item, len(items)),
               annotators.setdefault(annotator, len(annotators)))
        if key in cells:
            raise ConfigError(
                f"annotator {annotator!r} voted twice on item {item!r}; keep one vote per "
                "(item, annotator), e.g. the latest annotation."
            )
        cells[key] = code
    matrix = np.full((len(items), len(annotators)), MISSING, dtype=np.int64)
    if cells:
        rows, cols = np.array(list(cells), dtype=np.int64).T
        matrix[rows, cols] = np.fromiter(cells.values(), dtype=np.int64, count=len(cells))
    return Ratings(list(items), list(annotators), matrix, classes)


def check_ratings(R: Any, n_classes: int | None = None) -> tuple[np.ndarray, int]:
    """Validate a ratings matrix; return it as int64 and the number of classes ``k``.

    ``k`` is ``n_classes`` if given, else the largest class index + 1.
    """
    if isinstance(R, Ratings):
        n_classes = len(R.classes) if n_classes is None else n_classes
        R = R.matrix
    arr = np.asarray(R)
    if arr.ndim != 2:
        raise ConfigError(
            f"ratings must be a 2-D array of shape (n_items, n_annotators); got shape "
            f"{arr.shape}."
        )
    if not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr))
                and np.all(arr == np.round(arr))):
            raise ConfigError(
                f"ratings must hold integer class indices and -1 for 'not rated'; got dtype "
                f"{arr.dtype}. Use ratings_matrix() to build it from votes."
            )
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < MISSING:
        raise ConfigError(f"ratings contain {arr.min()}; use -1 for 'not rated'.")
    top = int(arr.max()) + 1 if arr.size else 0
    if n_classes is None:
        n_classes = top
    elif top > n_classes:
        raise ConfigError(
            f"ratings contain class index {top - 1} but n_classes={n_classes}; pass the "
            "full class list."
        )
    return arr, int(n_classes)


def vote_counts(R: np.ndarray, k: int) -> np.ndarray:
    """Votes per class: ndarray of shape (n_items, k), int64, from a checked matrix."""
    rows, cols = np.nonzero(R >= 0)
    flat = rows * k + R[rows, cols]
    return np.bincount(flat, minlength=R.shape[0] * k).reshape(R.shape[0], k)


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


def _none(n_items: int, why: str) -> Estimate:
    return Estimate(None, None, None, n_items, f"not computable, because {why}")


def _estimate(
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
        return _none(n, undefined)
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


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    ok = np.abs(den) > _EPS
    np.divide(num, den, out=out, where=ok)
    return out


def _kappa_stat(k: int) -> Callable[[np.ndarray], np.ndarray]:
    def stat(s: np.ndarray) -> np.ndarray:
        c = s.reshape(len(s), k, k)
        n = c.sum(axis=(1, 2))
        po = _div(np.trace(c, axis1=1, axis2=2), n)
        pe = _div(np.einsum("bi,bi->b", c.sum(2), c.sum(1)), n * n)
        return _div(po - pe, 1 - pe)
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
        return _none(0, f"annotators {names[0]} and {names[1]} rated no item in common")
    cells = np.bincount(both[:, 0] * k + both[:, 1], minlength=k * k)
    seen = np.flatnonzero(cells)
    why = (f"{names[0]} and {names[1]} gave all {len(both)} shared items the same single "
           f"class ({int(both[0, 0])}): chance agreement is 1, so kappa is 0/0 "
           "(they agree on every item; Gwet's AC1 is defined here)")
    return _estimate(np.eye(k * k)[seen], _kappa_stat(k), n_boot=n_boot, seed=seed,
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


def _unpack(R: Any, n_classes: int | None) -> tuple[np.ndarray, int, list[Hashable]]:
    names = list(R.annotators) if isinstance(R, Ratings) else None
    arr, k = check_ratings(R, n_classes)
    return arr, k, names if names is not None else list(range(arr.shape[1]))


def pairwise_kappa(
    R: Any, *, n_classes: int | None = None, n_boot: int = 1000, seed: int = 0
) -> PairwiseKappa:
    """Cohen's kappa for each pair of annotators (columns of ``R``)."""
    R, k, names = _unpack(R, n_classes)
    a = R.shape[1]
    pairs = {
        (i, j): cohen_kappa(R[:, i], R[:, j], n_classes=k, n_boot=n_boot, seed=seed,
                            names=(str(names[i]), str(names[j])))
        for i in range(a) for j in range(i + 1, a)
    }
    return PairwiseKappa(names, pairs)


_NO_PAIRS = "no item has two or more ratings (agreement needs at least two annotators per item)"


def _one_class_why(counts: np.ndarray) -> str:
    cls = int(np.flatnonzero(counts.sum(0))[0])
    return (f"every rating is the same class ({cls}): expected agreement is 1, so the "
            "coefficient is 0/0 (observed agreement is 1; Gwet's AC1 is defined here)")


def percent_agreement(R: Any, *, n_classes: int | None = None, n_boot: int = 1000,
                      seed: int = 0) -> Estimate:
    """Mean over items with >= 2 ratings of the share of agreeing rating pairs."""
    R, k = check_ratings(R, n_classes)
    counts = vote_counts(R, k)
    r = counts.sum(1)
    c = counts[r >= 2]
    if len(c) == 0:
        return _none(0, _NO_PAIRS)
    rr = c.sum(1)
    pa_i = (c * (c - 1)).sum(1) / (rr * (rr - 1))
    return _estimate(pa_i[:, None], lambda s: s[:, 0] / len(c), n_boot=n_boot, seed=seed,
                     undefined=_NO_PAIRS)


def _fleiss_m(r: np.ndarray) -> int | None:
    """The most common rating count >= 2 (the larger on a tie), None if there is none."""
    sizes = np.bincount(r)[2:] if r.size else np.zeros(0, dtype=np.int64)
    if sizes.sum() == 0:
        return None
    return 2 + int(np.flatnonzero(sizes == sizes.max())[-1])


def fleiss_kappa(R: Any, *, n_classes: int | None = None, n_boot: int = 1000,
                 seed: int = 0) -> Estimate:
    """Fleiss' kappa on the items with exactly ``m`` ratings, ``m`` the most common count
    >= 2 (the larger on a tie)."""
    R, k = check_ratings(R, n_classes)
    counts = vote_counts(R, k)
    r = counts.sum(1)
    m = _fleiss_m(r)
    if m is None:
        return _none(0, _NO_PAIRS)
    c = counts[r == m]
    feats = np.column_stack([c, (c * c).sum(1)]).astype(np.float64)

    def stat(s: np.ndarray) -> np.ndarray:
        n_items = s[:, :k].sum(1) / m
        p_bar = _div(s[:, k] - n_items * m, n_items * m * (m - 1))
        pj = _div(s[:, :k], (n_items * m)[:, None])
        pe = (pj * pj).sum(1)
        return _div(p_bar - pe, 1 - pe)

    return _estimate(feats, stat, n_boot=n_boot, seed=seed, undefined=_one_class_why(c))


def _alpha_features(counts: np.ndarray) -> np.ndarray:
    c = counts[counts.sum(1) >= 2]
    m = c.sum(1)
    return np.column_stack([c, (c * (c - 1)).sum(1) / (m - 1)]).astype(np.float64)


def _alpha_stat(k: int) -> Callable[[np.ndarray], np.ndarray]:
    def stat(s: np.ndarray) -> np.ndarray:
        n = s[:, :k].sum(1)
        return 1 - _div((n - 1) * (n - s[:, k]), n * n - (s[:, :k] ** 2).sum(1))
    return stat


def krippendorff_alpha(R: Any, *, n_classes: int | None = None, n_boot: int = 1000,
                       seed: int = 0) -> Estimate:
    """Krippendorff's alpha for nominal data; items with fewer than 2 ratings drop out."""
    R, k = check_ratings(R, n_classes)
    feats = _alpha_features(vote_counts(R, k))
    if len(feats) == 0:
        return _none(0, _NO_PAIRS)
    return _estimate(feats, _alpha_stat(k), n_boot=n_boot, seed=seed,
                     undefined=_one_class_why(feats[:, :k]))


def gwet_ac1(R: Any, *, n_classes: int | None = None, n_boot: int = 1000,
             seed: int = 0) -> Estimate:
    """Gwet's AC1 for several raters with missing ratings (Gwet 2008; handbook 4th ed.).

    ``p_a`` is the mean agreement over items with >= 2 ratings; ``pi_c`` the mean over items
    with >= 1 rating of the share of its ratings in class c; ``p_e = sum pi_c (1 - pi_c) /
    (k - 1)``; AC1 = (p_a - p_e) / (1 - p_e). ``k`` is ``n_classes``, so pass it.
    """
    R, k = check_ratings(R, n_classes)
    if k < 2:
        return _none(0, f"AC1 needs at least two classes (n_classes={k})")
    counts = vote_counts(R, k)
    c = counts[counts.sum(1) >= 1]
    r = c.sum(1)
    if not np.any(r >= 2):
        return _none(0, _NO_PAIRS)
    two = r >= 2
    pa_i = np.where(two, (c * (c - 1)).sum(1) / np.maximum(r * (r - 1), 1), 0.0)
    feats = np.column_stack([two, pa_i, np.ones(len(c)), c / r[:, None]])

    def stat(s: np.ndarray) -> np.ndarray:
        pa = _div(s[:, 1], s[:, 0])
        pi = s[:, 3:] / s[:, 2:3]
        pe = (pi * (1 - pi)).sum(1) / (k - 1)
        return _div(pa - pe, 1 - pe)

    est = _estimate(feats, stat, n_boot=n_boot, seed=seed, undefined=_NO_PAIRS)
    return Estimate(est.value, est.ci_low, est.ci_high, int(two.sum()), est.reason)


def per_class_agreement(R: Any, *, n_classes: int | None = None, n_boot: int = 1000,
                        seed: int = 0) -> list[Estimate]:
    """For each class c, Krippendorff's alpha of the binary ratings "c or not c"."""
    R, k = check_ratings(R, n_classes)
    out = []
    for cls in range(k):
        binary = np.where(R < 0, MISSING, (R == cls).astype(np.int64))
        feats = _alpha_features(vote_counts(binary, 2))
        if len(feats) == 0:
            out.append(_none(0, _NO_PAIRS))
            continue
        used = int(feats[:, 1].sum())
        why = (f"no rating is class {cls}" if used == 0 else
               f"every rating is class {cls}") + ", so 'class or not' never varies (0/0)"
        out.append(_estimate(feats, _alpha_stat(2), n_boot=n_boot, seed=seed, undefined=why))
    return out


@dataclass(frozen=True)
class AgreementReport:
    """Every agreement figure for one ratings matrix."""

    n_items: int
    n_annotators: int
    n_ratings: int
    classes: list[str]
    percent_agreement: Estimate
    fleiss_kappa: Estimate
    krippendorff_alpha: Estimate
    gwet_ac1: Estimate
    pairwise_kappa: PairwiseKappa
    per_class: dict[str, Estimate]
    fleiss_ratings_per_item: int | None
    n_boot: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (None, never NaN)."""
        out: dict[str, Any] = {
            "n_items": self.n_items, "n_annotators": self.n_annotators,
            "n_ratings": self.n_ratings, "classes": list(self.classes),
            "fleiss_ratings_per_item": self.fleiss_ratings_per_item,
            "n_boot": self.n_boot, "seed": self.seed,
        }
        for name in ("percent_agreement", "fleiss_kappa", "krippendorff_alpha", "gwet_ac1"):
            out[name] = getattr(self, name).to_dict()
        out["pairwise_kappa"] = self.pairwise_kappa.to_dict()
        out["per_class"] = {c: e.to_dict() for c, e in self.per_class.items()}
        return out


def agreement_report(
    R: Any, *, classes: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0
) -> AgreementReport:
    """All agreement figures for ``R`` (ndarray (n_items, n_annotators) or :class:`Ratings`).

    ``classes`` names the classes (it fixes k, which Gwet's AC1 depends on); a
    :class:`Ratings` brings its own.
    """
    if classes is None and isinstance(R, Ratings):
        classes = R.classes
    arr, k, names = _unpack(R, len(classes) if classes is not None else None)
    class_names = list(classes) if classes is not None else [str(c) for c in range(k)]
    opts: dict[str, Any] = {"n_classes": k, "n_boot": n_boot, "seed": seed}
    counts = vote_counts(arr, k)
    r = counts.sum(1)
    m = _fleiss_m(r)
    report = AgreementReport(
        n_items=int(arr.shape[0]), n_annotators=int(arr.shape[1]), n_ratings=int(r.sum()),
        classes=class_names,
        percent_agreement=percent_agreement(arr, **opts),
        fleiss_kappa=fleiss_kappa(arr, **opts),
        krippendorff_alpha=krippendorff_alpha(arr, **opts),
        gwet_ac1=gwet_ac1(arr, **opts),
        pairwise_kappa=pairwise_kappa(Ratings([], names, arr, class_names), **opts),
        per_class=dict(zip(class_names, per_class_agreement(arr, **opts), strict=True)),
        fleiss_ratings_per_item=m, n_boot=n_boot, seed=seed,
    )
    log.info("agreement items=%d annotators=%d ratings=%d alpha=%s", report.n_items,
             report.n_annotators, report.n_ratings, report.krippendorff_alpha.value)
    return report
