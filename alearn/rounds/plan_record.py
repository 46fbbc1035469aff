"""A round's selection, as the select step records it.

:func:`record_plan` stores a plan's items as the round's selections, with the mark that
none of them has been handed to Label Studio yet (:func:`unpushed_key`), in one
transaction; the push takes the mark away before its first import
(:mod:`labelstudio.push`).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select

from alearn.exceptions import RoundError
from alearn.rounds import metrics as round_metrics
from alearn.store import Meta, Round, Selection, Store

log = logging.getLogger(__name__)


def unpushed_key(round_id: int) -> str:
    """The meta key :func:`record_plan` sets with the round's selections, in their
    transaction: none of them has been handed to Label Studio yet. The push takes it away
    before its first import, so only a push that finds it may skip looking for tasks an
    earlier push left behind."""
    return f"round_unpushed:{round_id}"


def record_plan(store: Store, round_id: int, plan: Any) -> int:
    """Store a plan's items as the round's selections. Idempotent: a retried select
    step finds the selections already there and changes nothing.

    ``plan`` is an :class:`alearn.query.selection.Plan`.
    """
    with store.session() as s:
        existing = s.scalar(select(func.count()).where(Selection.round_id == round_id)) or 0
        if existing:
            return existing
        rnd = s.get(Round, round_id)
        if rnd is None:
            raise RoundError(f"no round {round_id}")
        for item in plan.items:
            s.add(Selection(round_id=round_id, item_id=item.item_id, rank=item.rank,
                            score=float(item.score), predicted=item.predicted,
                            is_gold=bool(getattr(item, "is_gold", False))))
        rnd.strategy = plan.strategy
        rnd.model_version = plan.model_version or f"cold-start-r{rnd.number}"
        metrics = round_metrics.of(rnd)
        metrics.pool_size, metrics.n_train = plan.n_pool, plan.n_train
        metrics.gold_items = sum(bool(getattr(i, "is_gold", False)) for i in plan.items)
        round_metrics.put(rnd, metrics)
        s.merge(Meta(key=unpushed_key(round_id), value=True))
    log.info("round_event=selected round=%s items=%s strategy=%s model_version=%s",
             round_id, len(plan.items), plan.strategy, plan.model_version)
    return len(plan.items)
