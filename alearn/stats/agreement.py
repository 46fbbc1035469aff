"""Inter-annotator agreement on a ratings matrix, each figure with a bootstrap interval.

Every figure is an :class:`~alearn.stats.bootstrap.Estimate` on a ratings matrix (see
:mod:`alearn.stats.ratings`); Cohen's kappa of two raters and of every pair is in
:mod:`alearn.stats.pairwise`, and :func:`agreement_report` gathers them all.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alearn.stats.bootstrap import Estimate, bootstrap_estimate, not_computable, safe_div
from alearn.stats.pairwise import PairwiseKappa, pairwise_kappa
from alearn.stats.ratings import MISSING, Ratings, check_ratings, named_ratings, vote_counts

log = logging.getLogger(__name__)

__all__ = [
    "AgreementReport", "agreement_report", "fleiss_kappa", "gwet_ac1", "krippendorff_alpha",
    "per_class_agreement", "percent_agreement",
]


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
        return not_computable(0, _NO_PAIRS)
    rr = c.sum(1)
    pa_i = (c * (c - 1)).sum(1) / (rr * (rr - 1))
    return bootstrap_estimate(pa_i[:, None], lambda s: s[:, 0] / len(c), n_boot=n_boot,
                              seed=seed, undefined=_NO_PAIRS)


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
        return not_computable(0, _NO_PAIRS)
    c = counts[r == m]
    feats = np.column_stack([c, (c * c).sum(1)]).astype(np.float64)

    def stat(s: np.ndarray) -> np.ndarray:
        n_items = s[:, :k].sum(1) / m
        p_bar = safe_div(s[:, k] - n_items * m, n_items * m * (m - 1))
        pj = safe_div(s[:, :k], (n_items * m)[:, None])
        pe = (pj * pj).sum(1)
        return safe_div(p_bar - pe, 1 - pe)

    return bootstrap_estimate(feats, stat, n_boot=n_boot, seed=seed,
                              undefined=_one_class_why(c))


def _alpha_features(counts: np.ndarray) -> np.ndarray:
    c = counts[counts.sum(1) >= 2]
    m = c.sum(1)
    return np.column_stack([c, (c * (c - 1)).sum(1) / (m - 1)]).astype(np.float64)


def _alpha_stat(k: int) -> Callable[[np.ndarray], np.ndarray]:
    def stat(s: np.ndarray) -> np.ndarray:
        n = s[:, :k].sum(1)
        return 1 - safe_div((n - 1) * (n - s[:, k]), n * n - (s[:, :k] ** 2).sum(1))
    return stat


def krippendorff_alpha(R: Any, *, n_classes: int | None = None, n_boot: int = 1000,
                       seed: int = 0) -> Estimate:
    """Krippendorff's alpha for nominal data; items with fewer than 2 ratings drop out."""
    R, k = check_ratings(R, n_classes)
    feats = _alpha_features(vote_counts(R, k))
    if len(feats) == 0:
        return not_computable(0, _NO_PAIRS)
    return bootstrap_estimate(feats, _alpha_stat(k), n_boot=n_boot, seed=seed,
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
        return not_computable(0, f"AC1 needs at least two classes (n_classes={k})")
    counts = vote_counts(R, k)
    c = counts[counts.sum(1) >= 1]
    r = c.sum(1)
    if not np.any(r >= 2):
        return not_computable(0, _NO_PAIRS)
    two = r >= 2
    pa_i = np.where(two, (c * (c - 1)).sum(1) / np.maximum(r * (r - 1), 1), 0.0)
    feats = np.column_stack([two, pa_i, np.ones(len(c)), c / r[:, None]])

    def stat(s: np.ndarray) -> np.ndarray:
        pa = safe_div(s[:, 1], s[:, 0])
        pi = s[:, 3:] / s[:, 2:3]
        pe = (pi * (1 - pi)).sum(1) / (k - 1)
        return safe_div(pa - pe, 1 - pe)

    est = bootstrap_estimate(feats, stat, n_boot=n_boot, seed=seed, undefined=_NO_PAIRS)
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
            out.append(not_computable(0, _NO_PAIRS))
            continue
        used = int(feats[:, 1].sum())
        why = (f"no rating is class {cls}" if used == 0 else
               f"every rating is class {cls}") + ", so 'class or not' never varies (0/0)"
        out.append(bootstrap_estimate(feats, _alpha_stat(2), n_boot=n_boot, seed=seed,
                                      undefined=why))
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
    arr, k, names = named_ratings(R, len(classes) if classes is not None else None)
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
