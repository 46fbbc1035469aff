"""Consensus that uses the model: Dawid-Skene with the model's probabilities as each
item's prior.

The CROWDLAB idea (cleanlab's multi-annotator work): a classifier's out-of-sample
probabilities are one more opinion on every item, and the votes and the model are
weighted by how accurate each is estimated to be. Here the weighting is a likelihood:

    P(true = c | votes of item i)  ∝  prior_ic  *  prod_j  pi_j[c, l_ij]
    prior_i = (1 - floor) * softmax(w * log p_i) + floor / n_classes

- ``p_i`` is the model's out-of-sample probability vector for item ``i``;
- ``w >= 0`` is the model's weight (a temperature): 0 ignores the model, 1 takes its
  probabilities at face value, more trusts it beyond them;
- ``pi_j[c, l]`` is annotator ``j``'s confusion, P(says l | true c), as in Dawid-Skene.

Both ``w`` and every ``pi_j`` are fitted by EM, which maximises the likelihood of the
votes: each M-step sets the confusions from the posteriors (Dawid-Skene's update) and
``w`` by Newton steps on the expected log prior of the items with two votes or more and
the gold items. Items with one vote cannot tell a good model from good annotators (a
sharp prior and confusions fitted to the model's errors explain them best), so fitted on
them ``w`` grows until the model alone decides; like CROWDLAB's model weight, ``w``
therefore rests on the items where the votes can check the model. Without any such
item ``w`` stays 1. A confusion matrix is
shrunk toward a one-coin matrix (``prior_accuracy`` on the diagonal, the rest spread
evenly) by ``prior_strength`` pseudo-votes per true class, so that an annotator seen on
a handful of items is not taken as perfect (or perfectly biased) from a few votes.
Gold items (known true class) keep their class as their posterior: their votes measure
the annotators directly, and the model's weight is fitted on them too.

Unlike cleanlab's weighted average of probabilities, the result is a posterior: an item
with one vote from a reliable annotator that a confident model agrees with gets a
posterior near 1, so a confidence target (adaptive votes) can be applied to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.special import logsumexp

from alearn.exceptions import ConfigError

log = logging.getLogger(__name__)

#: The largest model weight (temperature) EM may fit.
MAX_MODEL_WEIGHT = 8.0


@dataclass(frozen=True)
class ModelAwareFit:
    """The EM fit. ``posteriors`` (n_items, n_classes); ``confusion`` (n_annotators,
    n_classes, n_classes) with P(says l | true c) at ``[j, c, l]``; ``model_weight`` the
    fitted exponent on the model's probabilities; ``priors`` the mean posterior."""

    posteriors: np.ndarray
    confusion: np.ndarray
    model_weight: float
    priors: np.ndarray
    n_iter: int
    converged: bool


def check_probabilities(pred_probs: Any, n_items: int, k: int) -> np.ndarray:
    """Log of ``pred_probs`` (n_items, k), rows normalised, zeros clipped to 1e-12. A row
    of NaN (an item the model could not score) becomes uniform; a column of zeros (a
    class the head never saw, so it has no opinion on it) gets 1/k before normalising."""
    P = np.asarray(pred_probs, dtype=float)
    if P.shape != (n_items, k):
        raise ConfigError(
            f"pred_probs has shape {P.shape} but the votes need ({n_items}, {k}): one row "
            "per item, one column per class in the project's class order."
        )
    P = np.where(np.isnan(P).any(1, keepdims=True), 1.0, P)
    if (P < 0).any():
        raise ConfigError("pred_probs has negative entries; pass probabilities.")
    if n_items:
        P[:, P.max(0) == 0] = 1.0 / k
    P = P / np.maximum(P.sum(1, keepdims=True), 1e-300)
    return np.log(np.maximum(P, 1e-12))


def check_prior_counts(prior_counts: Any, n_annotators: int, k: int) -> np.ndarray:
    """``prior_counts`` as a float array (n_annotators, k, k); zeros when None."""
    if prior_counts is None:
        return np.zeros((n_annotators, k, k))
    C = np.asarray(prior_counts, dtype=float)
    if C.shape != (n_annotators, k, k) or not np.isfinite(C).all() or (C < 0).any():
        raise ConfigError(f"prior_counts must be finite counts >= 0 of shape "
                          f"({n_annotators}, {k}, {k}); got {C.shape}.")
    return C


def log_prior(logP: np.ndarray, weight: float, floor: float) -> np.ndarray:
    """log((1 - floor) * softmax(weight * logP) + floor / k), row by row."""
    z = weight * logP
    p = np.exp(z - logsumexp(z, axis=1, keepdims=True))
    return np.log((1.0 - floor) * p + floor / logP.shape[1])


def _one_coin(k: int, accuracy: float) -> np.ndarray:
    if k == 1:
        return np.ones((1, 1))
    m = np.full((k, k), (1.0 - accuracy) / (k - 1))
    np.fill_diagonal(m, accuracy)
    return m


def _fit_weight(post: np.ndarray, logP: np.ndarray, start: float) -> float:
    """Newton steps from ``start`` toward the w that maximises
    sum_i sum_c post_ic * log softmax(w * logP_i)_c (concave in w; the floor is left out
    of this M-step, which only has to improve the likelihood)."""
    if logP.shape[1] < 2 or not len(post):
        return start
    target = float((post * logP).sum())
    w = start
    for _ in range(4):
        z = w * logP
        q = np.exp(z - logsumexp(z, axis=1, keepdims=True))
        mean = (q * logP).sum(1)
        grad = target - float(mean.sum())
        curv = float(((q * logP * logP).sum(1) - mean * mean).sum())
        if curv <= 1e-12:
            break
        w_new = min(max(w + grad / curv, 0.0), MAX_MODEL_WEIGHT)
        if abs(w_new - w) < 1e-4:
            w = w_new
            break
        w = w_new
    return w


def fit_model_aware(
    R: np.ndarray, k: int, pred_probs: Any, *, gold: Any = None, max_iter: int = 100,
    tol: float = 1e-7, prior_strength: float = 2.0, prior_accuracy: float = 0.7,
    floor: float = 1e-3, prior_counts: Any = None,
) -> ModelAwareFit:
    """Fit the model-aware Dawid-Skene by EM (see the module docstring).

    Parameters
    ----------
    R : ndarray of shape (n_items, n_annotators)
        Checked ratings (class index, -1 where not rated).
    k : int
        Number of classes.
    pred_probs : array-like of shape (n_items, k)
        The model's out-of-sample probabilities, columns in class order; a NaN row means
        no model opinion on that item.
    gold : array-like of int, shape (n_items,), optional
        Known true class, -1 for items that are not gold.
    prior_strength, prior_accuracy : float
        Pseudo-votes per true class pulling each confusion row toward a one-coin
        annotator of that accuracy.
    floor : float
        Share of the uniform mixed into the prior after the weight is applied (a class
        the model calls impossible can still win on the votes).
    prior_counts : array-like of shape (n_annotators, k, k), optional
        Each annotator's track record: (soft) counts of saying ``l`` on true class ``c``
        at ``[j, c, l]`` from earlier work, added to the pseudo-votes, so that a round's
        few votes are read with what earlier rounds learnt of each annotator.
    """
    if max_iter < 1 or tol < 0 or prior_strength < 0 or not 0 < prior_accuracy < 1:
        raise ConfigError(
            f"need max_iter >= 1, tol >= 0, prior_strength >= 0 and 0 < prior_accuracy < 1; "
            f"got {max_iter}, {tol}, {prior_strength}, {prior_accuracy}."
        )
    n, a = R.shape
    logP = check_probabilities(pred_probs, n, k)
    g = np.full(n, -1) if gold is None else np.asarray(gold, dtype=int).ravel()
    if g.shape != (n,) or (g >= k).any():
        raise ConfigError(f"gold must be {n} class indices below {k} (or -1); got {g.shape}.")
    is_gold = g >= 0
    # the model's weight is identified only where the votes say something on their own:
    # items with two votes or more, and gold items (see the module docstring)
    n_votes = (R >= 0).sum(1)
    fit_rows = (n_votes >= 2) | is_gold
    items, annot = np.nonzero(R >= 0)
    incidence = sparse.csr_matrix(
        (np.ones(items.size), (items, annot * k + R[items, annot])), shape=(n, a * k))
    incidence_t = incidence.T.tocsr()
    pseudo = check_prior_counts(prior_counts, a, k) + (
        prior_strength * _one_coin(k, prior_accuracy) + 1e-6)  # [j, c, l]
    conf = pseudo / pseudo.sum(2, keepdims=True)
    weight, ll_prev, converged, n_iter = 1.0, -np.inf, False, 0
    post = np.zeros((n, k))
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (n_iter is reported)
        # E-step: log P(true = c, votes) per item, with the model's prior at weight w.
        log_conf_by_code = np.log(conf).transpose(0, 2, 1).reshape(a * k, k)
        logp = log_prior(logP, weight, floor) + incidence @ log_conf_by_code
        lse = logsumexp(logp, axis=1)
        post = np.exp(logp - lse[:, None])
        post[is_gold] = np.eye(k)[g[is_gold]]
        ll = float(lse.sum())
        if abs(ll - ll_prev) <= tol * abs(ll):
            converged = True
            break
        ll_prev = ll
        # M-step: confusions from the posteriors (plus the one-coin pseudo-votes), then w.
        counts = (incidence_t @ post).reshape(a, k, k).transpose(0, 2, 1)  # [j, c, l]
        conf = counts + pseudo
        conf /= conf.sum(2, keepdims=True)
        if fit_rows.any():
            weight = _fit_weight(post[fit_rows], logP[fit_rows], weight)
    if not converged:
        log.warning("model-aware consensus did not converge in max_iter=%d iterations",
                    max_iter)
    return ModelAwareFit(posteriors=post, confusion=conf, model_weight=weight,
                         priors=post.mean(0) if n else np.full(k, 1.0 / max(k, 1)),
                         n_iter=n_iter, converged=converged)


__all__ = ["MAX_MODEL_WEIGHT", "ModelAwareFit", "check_prior_counts", "check_probabilities",
           "fit_model_aware", "log_prior"]
