"""Adaptive votes: how many votes each item should have, given how settled its label is.

An item starts with ``min_votes`` votes. It gets one more only while its label is
unsettled (the consensus posterior of its label is below ``target``), up to
``max_votes``. Items in ``always_max`` (gold items and the random audit slice, which keep
the agreement figures measured on an unbiased sample) always get ``max_votes``.

The rule is a pure function of arrays so that the live round (which raises a task's
overlap in Label Studio) and the offline benchmark (``scripts/bench_annotations.py``)
apply exactly the same policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alearn.exceptions import ConfigError


def check_vote_limits(min_votes: int, max_votes: int, target: float) -> None:
    """Raise :class:`ConfigError` unless 1 <= min_votes <= max_votes and 0 < target <= 1."""
    if not 1 <= min_votes <= max_votes:
        raise ConfigError(
            f"votes per item must satisfy 1 <= min_votes ({min_votes}) <= max_votes "
            f"({max_votes}); fix rounds.min_votes / rounds.max_votes in alearn.toml."
        )
    if not 0.0 < target <= 1.0:
        raise ConfigError(
            f"agreement.confidence_target must be in (0, 1], got {target}; e.g. 0.95."
        )


def votes_wanted(confidence: Any, n_votes: Any, *, min_votes: int, max_votes: int,
                 target: float, always_max: Any = None) -> np.ndarray:
    """The number of votes each item should have now.

    Parameters
    ----------
    confidence : array-like of shape (n_items,)
        Posterior probability of each item's current consensus label (0 for an item
        with no votes yet).
    n_votes : array-like of int, shape (n_items,)
        Votes each item has.
    min_votes, max_votes : int
        Votes every item gets, and the most any item gets.
    target : float
        A label whose posterior reaches ``target`` is settled.
    always_max : array-like of bool, shape (n_items,), optional
        Items that always get ``max_votes`` (gold items, the audit slice).

    Returns
    -------
    ndarray of int, shape (n_items,)
        Votes wanted: ``n_votes`` for a settled item (or one at ``max_votes``),
        ``n_votes + 1`` for an unsettled one, at least ``min_votes`` and never more than
        ``max_votes`` (an item already over it keeps what it has).
    """
    check_vote_limits(min_votes, max_votes, target)
    conf = np.asarray(confidence, dtype=float).ravel()
    n = np.asarray(n_votes, dtype=int).ravel()
    if conf.shape != n.shape:
        raise ValueError(f"confidence has {conf.size} items but n_votes has {n.size}")
    unsettled = (n >= min_votes) & (conf < target) & (n < max_votes)
    wanted = np.maximum(n, min_votes) + unsettled.astype(int)
    if always_max is not None:
        forced = np.asarray(always_max, dtype=bool).ravel()
        if forced.shape != n.shape:
            raise ValueError(f"always_max has {forced.size} items but n_votes has {n.size}")
        wanted = np.where(forced, max_votes, wanted)
    return np.maximum(np.minimum(wanted, max_votes), n).astype(int)
