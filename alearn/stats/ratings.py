"""The ratings matrix: who gave which class to which item.

A ratings matrix ``R`` has shape (n_items, n_annotators): ``R[i, j]`` is the class index
(0..k-1) annotator ``j`` gave item ``i``, or -1 (:data:`MISSING`) if ``j`` did not rate
it. :func:`ratings_matrix` builds one, as a :class:`Ratings` that keeps the ids of its
rows, columns and classes, from ``(item, annotator, label)`` triples;
:func:`check_ratings` validates one given as a plain array, and :func:`vote_counts` turns
it into votes per class. Every statistic in :mod:`alearn.stats` takes one of these.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alearn.exceptions import ConfigError

MISSING = -1

__all__ = ["MISSING", "Ratings", "check_ratings", "named_ratings", "ratings_matrix",
           "vote_counts"]

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

def named_ratings(R: Any, n_classes: int | None) -> tuple[np.ndarray, int, list[Hashable]]:
    """:func:`check_ratings`, plus the annotators' names (column indices for a plain array)."""
    names = list(R.annotators) if isinstance(R, Ratings) else None
    arr, k = check_ratings(R, n_classes)
    return arr, k, names if names is not None else list(range(arr.shape[1]))
