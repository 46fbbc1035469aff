"""Consensus labels from several annotators' votes: majority vote, Dawid-Skene, and
Dawid-Skene with the model's probabilities as each item's prior (``model_aware``).

All take a ratings matrix ``R`` of shape (n_items, n_annotators) (class index, or
-1 for "not rated"; see :mod:`alearn.stats.ratings`) and return a :class:`Consensus` of
arrays; ``Consensus.records()`` gives one :class:`ConsensusResult` per item. Methods are
found by name in :data:`CONSENSUS_METHODS` through :func:`get_consensus`.

Status of an item, first match wins:

- ``'no_votes'``: nobody rated it; label None, confidence 0.
- ``'tie'``: two or more classes share the top vote count (majority vote) or the top
  posterior (Dawid-Skene, within 1e-9). ``tie_policy`` sets the label: ``'adjudicate'``
  and ``'more_votes'`` give None (send it to an adjudicator, or ask for more votes);
  ``'first'`` gives the lowest tied class index. The status stays ``'tie'`` either way.
- ``'low_confidence'``: confidence below ``min_confidence``; the label is still the best
  guess, but should not be trusted.
- ``'agreed'``: otherwise.

Confidence is the winning vote share (majority vote) or the posterior probability of the
label (Dawid-Skene).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import sparse

from alearn.exceptions import ConfigError, UnknownNameError
from alearn.stats.model_consensus import check_prior_counts, fit_model_aware
from alearn.stats.ratings import check_ratings, vote_counts

log = logging.getLogger(__name__)

TIE_POLICIES = ("adjudicate", "more_votes", "first")
_TIE_TOL = 1e-9


@dataclass(frozen=True)
class ConsensusResult:
    """The consensus on one item."""

    item: Hashable
    label: int | None
    confidence: float
    votes: tuple[int, ...]
    status: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Consensus:
    """Consensus for every item, as arrays.

    Attributes
    ----------
    labels : ndarray of shape (n_items,)
        Class index, -1 where the label is None.
    confidence : ndarray of shape (n_items,)
    votes : ndarray of shape (n_items, n_classes)
        Votes per class.
    status : ndarray of shape (n_items,)
        'agreed', 'tie', 'low_confidence' or 'no_votes'.
    posteriors : ndarray of shape (n_items, n_classes)
        Vote shares (majority) or posterior class probabilities (Dawid-Skene).
    confusion : ndarray of shape (n_annotators, n_classes, n_classes) or None
        Dawid-Skene's estimate of P(annotator says l | true class c) at ``[j, c, l]``.
    priors : ndarray of shape (n_classes,) or None
        Dawid-Skene's class priors.
    """

    method: str
    labels: np.ndarray
    confidence: np.ndarray
    votes: np.ndarray
    status: np.ndarray
    posteriors: np.ndarray
    confusion: np.ndarray | None = None
    priors: np.ndarray | None = None
    n_iter: int = 0
    converged: bool = True
    #: model_aware only: the fitted weight of the model's probabilities (0 ignores them)
    model_weight: float | None = None
    #: why the method fell back to another one ('' when it did not)
    note: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def record(self, i: int, item: Hashable | None = None) -> ConsensusResult:
        """The :class:`ConsensusResult` of row ``i`` (``item`` defaults to ``i``)."""
        label = int(self.labels[i])
        return ConsensusResult(
            item=i if item is None else item, label=None if label < 0 else label,
            confidence=float(self.confidence[i]),
            votes=tuple(int(v) for v in self.votes[i]), status=str(self.status[i]),
        )

    def records(self, items: Sequence[Hashable] | None = None) -> list[ConsensusResult]:
        """One :class:`ConsensusResult` per item; ``items`` names the rows."""
        if items is not None and len(items) != len(self):
            raise ConfigError(f"got {len(items)} item ids for {len(self)} consensus rows.")
        return [self.record(i, None if items is None else items[i]) for i in range(len(self))]

    def status_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.status, return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts, strict=True)}


def _finish(
    method: str, votes: np.ndarray, post: np.ndarray, *, tie_policy: str,
    min_confidence: float, **extra: Any,
) -> Consensus:
    total = votes.sum(1)
    top = post.max(1) if post.size else np.zeros(len(post))
    tie = (total > 0) & ((post >= top[:, None] - _TIE_TOL).sum(1) > 1)
    labels = post.argmax(1) if post.size else np.zeros(len(post), dtype=np.int64)
    confidence = np.where(total > 0, top, 0.0)
    status = np.full(len(votes), "agreed", dtype="<U14")
    status[confidence < min_confidence] = "low_confidence"
    status[tie] = "tie"
    status[total == 0] = "no_votes"
    labels = np.where(total == 0, -1, labels)
    if tie_policy != "first":
        labels = np.where(tie, -1, labels)
    return Consensus(method, labels.astype(np.int64), confidence, votes, status, post, **extra)


def _check_options(tie_policy: str, min_confidence: float) -> None:
    if tie_policy not in TIE_POLICIES:
        raise UnknownNameError("tie policy", tie_policy, TIE_POLICIES)
    if not 0.0 <= min_confidence <= 1.0:
        raise ConfigError(f"min_confidence must be within [0, 1]; got {min_confidence}.")


def majority_vote(
    R: Any, *, n_classes: int | None = None, tie_policy: str = "adjudicate",
    min_confidence: float = 0.0,
) -> Consensus:
    """Majority vote; confidence is the winning class's share of the item's votes.

    Parameters
    ----------
    R : ndarray of shape (n_items, n_annotators) or Ratings
        Class indices, -1 where not rated.
    tie_policy : {'adjudicate', 'more_votes', 'first'}
        What a tied item's label becomes (see the module docstring).
    min_confidence : float
        Items whose vote share is below this get status 'low_confidence'.
    """
    _check_options(tie_policy, min_confidence)
    R, k = check_ratings(R, n_classes)
    votes = vote_counts(R, k)
    total = votes.sum(1, keepdims=True)
    shares = votes / np.maximum(total, 1)
    return _finish("majority", votes, shares, tie_policy=tie_policy,
                   min_confidence=min_confidence)


def dawid_skene(
    R: Any, *, n_classes: int | None = None, tie_policy: str = "adjudicate",
    min_confidence: float = 0.0, max_iter: int = 100, tol: float = 1e-7,
    smoothing: float = 0.01, prior_counts: Any = None,
) -> Consensus:
    """Dawid-Skene (1979) consensus by EM: a full confusion matrix per annotator and class
    priors, initialised from the (soft) majority vote.

    Each iteration is an M-step (confusion matrices and priors from the current
    posteriors, with ``smoothing`` added to every count so that no probability is 0) and
    an E-step (posteriors in log space). It stops when the log-likelihood changes by less
    than ``tol`` relative to its size, or after ``max_iter`` iterations. Votes are held
    as a sparse (item x (annotator, label)) incidence matrix, so each step is one sparse
    product over the observed votes: no Python loop over items.

    Parameters
    ----------
    R : ndarray of shape (n_items, n_annotators) or Ratings
        Class indices, -1 where not rated.
    smoothing : float
        Pseudo-count added to every confusion-matrix cell and every class prior.
    prior_counts : array-like of shape (n_annotators, k, k), optional
        Each annotator's track record from earlier work ([j, c, l]: soft counts of saying
        l on true class c), added to the confusion counts of every M-step.
    """
    _check_options(tie_policy, min_confidence)
    if max_iter < 1 or tol < 0 or smoothing <= 0:
        raise ConfigError(
            f"need max_iter >= 1, tol >= 0 and smoothing > 0; got max_iter={max_iter}, "
            f"tol={tol}, smoothing={smoothing}."
        )
    R, k = check_ratings(R, n_classes)
    votes = vote_counts(R, k)
    n, a = R.shape
    carried = check_prior_counts(prior_counts, a, k)
    items, annot = np.nonzero(R >= 0)  # row-major, so sorted by item
    if k == 0 or items.size == 0:
        return _finish("dawid_skene", votes, np.zeros((n, k)), tie_policy=tie_policy,
                       min_confidence=min_confidence, n_iter=0)
    rated = np.flatnonzero(votes.sum(1) > 0)
    # incidence[i, j * k + l] = 1 when annotator j said l on the i-th rated item.
    row = np.searchsorted(rated, items)
    code = annot * k + R[items, annot]
    incidence = sparse.csr_matrix(
        (np.ones(items.size), (row, code)), shape=(len(rated), a * k)
    )
    incidence_t = incidence.T.tocsr()

    post = votes[rated] / votes[rated].sum(1, keepdims=True)
    ll_prev, converged, n_iter = -np.inf, False, 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (n_iter is reported)
        # M-step: counts[j * k + l, c] = sum of P(true = c) over items where j said l.
        counts = incidence_t @ post
        conf = counts.reshape(a, k, k).transpose(0, 2, 1) + smoothing + carried  # [j, c, l]
        conf /= conf.sum(2, keepdims=True)
        priors = (post.sum(0) + smoothing) / (len(rated) + k * smoothing)
        # E-step: log P(true = c | votes) up to a constant, per rated item.
        log_conf_by_code = np.log(conf).transpose(0, 2, 1).reshape(a * k, k)
        logp = np.log(priors) + incidence @ log_conf_by_code
        top = logp.max(1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logp - top).sum(1))
        post = np.exp(logp - lse[:, None])
        ll = float(lse.sum())
        if abs(ll - ll_prev) <= tol * abs(ll):
            converged = True
            break
        ll_prev = ll
    if not converged:
        log.warning("dawid_skene did not converge in max_iter=%d iterations", max_iter)
    full = np.tile(priors, (n, 1))
    full[rated] = post
    return _finish("dawid_skene", votes, full, tie_policy=tie_policy,
                   min_confidence=min_confidence, confusion=conf, priors=priors,
                   n_iter=n_iter, converged=converged)


def model_aware(
    R: Any, *, n_classes: int | None = None, tie_policy: str = "adjudicate",
    min_confidence: float = 0.0, pred_probs: Any = None, gold: Any = None, **fit: Any,
) -> Consensus:
    """Dawid-Skene with the model's out-of-sample probabilities ``pred_probs`` (n_items,
    n_classes) as each item's prior, the model weighted by how well it predicts the votes
    (see :mod:`alearn.stats.model_consensus`); ``gold`` (n_items,) is the known class, -1
    elsewhere. Without ``pred_probs`` (no model yet) it is :func:`dawid_skene`, and the
    result's ``note`` says so."""
    _check_options(tie_policy, min_confidence)
    R, k = check_ratings(R, n_classes)
    if pred_probs is None:
        ds = dawid_skene(R, n_classes=k, tie_policy=tie_policy, min_confidence=min_confidence,
                         prior_counts=fit.get("prior_counts"))
        reason = "no model probabilities yet (fewer than two classes labeled): Dawid-Skene"
        log.info("model_aware consensus falls back: %s", reason)
        return replace(ds, note=reason)
    f = fit_model_aware(R, k, pred_probs, gold=gold, **fit)
    return _finish("model_aware", vote_counts(R, k), f.posteriors, tie_policy=tie_policy,
                   min_confidence=min_confidence, confusion=f.confusion, priors=f.priors,
                   n_iter=f.n_iter, converged=f.converged, model_weight=f.model_weight)


ConsensusMethod = Callable[..., Consensus]

CONSENSUS_METHODS: dict[str, ConsensusMethod] = {
    "majority": majority_vote,
    "dawid_skene": dawid_skene,
    "model_aware": model_aware,
}


def get_consensus(name: str) -> ConsensusMethod:
    """The consensus function registered as ``name``.

    Each takes ``(R, *, n_classes=None, tie_policy='adjudicate', min_confidence=0.0)``
    and returns a :class:`Consensus`.
    """
    try:
        return CONSENSUS_METHODS[name]
    except KeyError:
        raise UnknownNameError("consensus method", name, list(CONSENSUS_METHODS)) from None


__all__ = [
    "CONSENSUS_METHODS", "TIE_POLICIES", "Consensus", "ConsensusResult",
    "dawid_skene", "get_consensus", "majority_vote", "model_aware",
]
