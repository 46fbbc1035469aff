"""Out-of-sample class probabilities: what the head thinks of an item it was not fitted on.

The model-aware consensus and the label-error ranking need the head's opinion of every
item, and that opinion must not have seen the item's own label:

- an item with a trusted label gets the probabilities of a head fitted on the other
  folds (k-fold cross-validation over the trusted labels, stratified when every class
  has two labels, k = min(5, labels of the smallest class), at least 2);
- any other item (one being voted on now) gets those of the head fitted on all of them
  (the project's current head, saved once per training set, when no item asked about
  has a trusted label).

Columns follow the project's class order: a class the head never saw gets probability 0
there (the consensus mixes a little of the uniform in).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from alearn.exceptions import AlearnError
from alearn.model import training
from alearn.model.head import EmbeddingClassifier
from alearn.project import Project

log = logging.getLogger(__name__)

HeadFactory = Callable[[], EmbeddingClassifier]


def aligned_proba(head: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``head.predict_proba(X)`` with one column per class index 0..n_classes-1 (the
    head's ``classes_`` are class indices); classes it never saw get 0."""
    out = np.zeros((len(X), n_classes))
    if len(X):
        out[:, np.asarray(head.classes_, dtype=int)] = head.predict_proba(X)
    return out


def _splits(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    _, counts = np.unique(y, return_counts=True)
    k = max(2, min(folds, len(y)))
    if counts.min() >= 2:
        k = max(2, min(folds, int(counts.min())))
        return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(y, y))
    return list(KFold(k, shuffle=True, random_state=seed).split(y))


def out_of_sample_proba(
    new_head: HeadFactory, X_labeled: np.ndarray, y_labeled: np.ndarray, n_classes: int, *,
    X_other: np.ndarray | None = None, folds: int = training.CV_FOLDS, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Cross-validated probabilities of the labeled items, and the full head's of others.

    Parameters
    ----------
    new_head : callable returning an unfitted EmbeddingClassifier
    X_labeled : ndarray of shape (n_labeled, dim)
    y_labeled : ndarray of int, shape (n_labeled,)
        Class indices (0..n_classes-1) of the trusted labels.
    X_other : ndarray of shape (n_other, dim), optional
        Items without a trusted label.

    Returns
    -------
    (P_labeled, P_other) of shapes (n_labeled, n_classes) and (n_other, n_classes), or
    None while the labels cover fewer than two classes (there is no head yet). A fold
    whose training part has a single class predicts that class with certainty.
    """
    y = np.asarray(y_labeled, dtype=int)
    if len(np.unique(y)) < 2 or len(y) < 3:
        return None
    P_lab = np.zeros((len(y), n_classes))
    for train, test in _splits(y, folds, seed):
        if len(np.unique(y[train])) < 2:
            P_lab[test, y[train][0]] = 1.0
            continue
        P_lab[test] = aligned_proba(new_head().fit(X_labeled[train], y[train]),
                                    X_labeled[test], n_classes)
    if X_other is None or not len(X_other):
        return P_lab, np.zeros((0, n_classes))
    full = new_head().fit(X_labeled, y)
    return P_lab, aligned_proba(full, X_other, n_classes)


def project_proba(project: Project, item_ids: Iterable[int]) -> np.ndarray | None:
    """Out-of-sample probabilities (len(item_ids), n_classes) for a project's items, in the
    given order: cross-validated for items with a trusted label, the head on all trusted
    labels for the others; a row of NaN for an item without features. None while there
    is no head (fewer than two classes labeled) or no features."""
    wanted = [int(i) for i in item_ids]
    classes = project.config.classes
    index = {c: i for i, c in enumerate(classes)}
    try:
        labeled = project.store.trusted_labels()
        if not any(i in labeled for i in wanted):
            # none of them is labeled (a round being voted on): the current head's view,
            # fitted once per training set and saved, instead of k folds and a fit per call
            try:
                return _current_head_proba(project, wanted)
            except OSError as exc:  # the head could not be saved: fit it here instead
                log.warning("current head unavailable (%s); fitting one for the "
                            "probabilities", exc)
        ids, X = training.labeled_features(project)
        ids, X, y_names = training.training_set(project, ids, X)
        other_ids, X_other = training.features_for(project, set(wanted) - set(ids.tolist()))
    except AlearnError as exc:  # no features yet
        log.info("no out-of-sample probabilities: %s", exc)
        return None
    y = np.asarray([index[str(c)] for c in y_names], dtype=int)
    got = out_of_sample_proba(lambda: training.make_head(project), X, y, len(classes),
                              X_other=X_other)
    if got is None:
        return None
    rows = {int(i): r for i, r in zip(ids.tolist(), got[0], strict=True)}
    rows.update({int(i): r for i, r in zip(other_ids.tolist(), got[1], strict=True)})
    return _in_order(rows, wanted, len(classes))


def _current_head_proba(project: Project, wanted: list[int]) -> np.ndarray | None:
    """The current head's probabilities of ``wanted`` (items it was not fitted on), in the
    project's class order; None while there is no head."""
    from alearn.model.current import current_head

    head = current_head(project)
    if head is None:
        return None
    index = {c: i for i, c in enumerate(project.config.classes)}
    ids, X = training.features_for(project, set(wanted))
    P = np.zeros((len(X), len(index)))
    if len(X):  # the saved head's classes_ are class names
        known = [(c, index[str(name)]) for c, name in enumerate(head.head.classes_)
                 if str(name) in index]
        P[:, [i for _, i in known]] = head.head.predict_proba(X)[:, [c for c, _ in known]]
    return _in_order(dict(zip(ids.tolist(), P, strict=True)), wanted, len(index))


def _in_order(rows: dict[int, np.ndarray], wanted: list[int], k: int) -> np.ndarray:
    """(len(wanted), k): each wanted item's row, NaN for one without."""
    out = np.full((len(wanted), k), np.nan)
    for r, item in enumerate(wanted):
        if item in rows:
            out[r] = rows[item]
    return out


__all__ = ["aligned_proba", "out_of_sample_proba", "project_proba"]
