"""The adaptive-votes rule (alearn.stats.adaptive)."""

from __future__ import annotations

import numpy as np
import pytest

from alearn.exceptions import ConfigError
from alearn.stats.adaptive import votes_wanted


def test_settled_items_keep_their_votes_and_unsettled_ones_get_one_more() -> None:
    conf = [0.0, 0.99, 0.6, 0.6, 0.99]
    n = [0, 1, 1, 3, 3]
    got = votes_wanted(conf, n, min_votes=1, max_votes=3, target=0.95)
    # no votes -> min_votes; settled -> as is; unsettled -> +1; at max -> stays
    assert got.tolist() == [1, 1, 2, 3, 3]


def test_min_votes_comes_first_even_for_a_confident_item() -> None:
    got = votes_wanted([0.999, 0.5], [1, 1], min_votes=2, max_votes=4, target=0.95)
    assert got.tolist() == [2, 2]


def test_gold_and_audit_items_always_get_max_votes() -> None:
    got = votes_wanted([0.99, 0.99], [1, 1], min_votes=1, max_votes=3, target=0.9,
                       always_max=[True, False])
    assert got.tolist() == [3, 1]


def test_an_item_over_max_keeps_what_it_has() -> None:
    got = votes_wanted([0.3], [5], min_votes=1, max_votes=3, target=0.9)
    assert got.tolist() == [5]


@pytest.mark.parametrize("lo,hi,t", [(0, 3, 0.9), (3, 2, 0.9), (1, 3, 0.0), (1, 3, 1.5)])
def test_bad_limits_are_a_config_error(lo: int, hi: int, t: float) -> None:
    with pytest.raises(ConfigError, match="alearn.toml|confidence_target"):
        votes_wanted([0.5], [1], min_votes=lo, max_votes=hi, target=t)


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="items"):
        votes_wanted(np.zeros(2), np.zeros(3), min_votes=1, max_votes=3, target=0.9)
