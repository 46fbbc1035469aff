from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from alearn.exceptions import RoundError
from alearn.rounds.lifecycle import (
    CLOSED,
    COLLECTING,
    FAILED,
    PLANNED,
    PUSHED,
    active_round,
    create_round,
    get_round,
    round_progress,
    transition,
)
from alearn.rounds.plan_record import record_plan, unpushed_key
from alearn.store import Annotation, Item, Selection, Store


@dataclass
class _Planned:
    item_id: int
    rank: int
    score: float
    predicted: str | None = None


@dataclass
class _Plan:
    items: list[_Planned]
    strategy: str = "margin"
    model_version: str | None = "m-test"
    n_pool: int = 10
    n_train: int = 4
    extra: dict = field(default_factory=dict)


def _items(store: Store, n: int) -> list[int]:
    with store.session() as s:
        rows = [Item(sha256=f"{i:064x}", path=f"{i}.png", width=1, height=1) for i in range(n)]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def test_only_one_active_round(store: Store) -> None:
    r1 = create_round(store, strategy="auto", batch_size=5, overlap=3)
    assert r1.number == 1 and r1.status == PLANNED
    with pytest.raises(RoundError, match="round 1 is still planned; only one round"):
        create_round(store, strategy="auto", batch_size=5, overlap=3)
    transition(store, r1.id, PUSHED)
    transition(store, r1.id, COLLECTING)
    transition(store, r1.id, CLOSED)
    assert active_round(store) is None
    r2 = create_round(store, strategy="margin", batch_size=5, overlap=3)
    assert r2.number == 2
    assert get_round(store).id == r2.id


def test_transitions_are_checked_and_idempotent(store: Store) -> None:
    r = create_round(store, strategy="auto", batch_size=5, overlap=3)
    with pytest.raises(RoundError, match="cannot go from planned to closed"):
        transition(store, r.id, CLOSED)
    assert transition(store, r.id, PUSHED) is True
    assert transition(store, r.id, PUSHED) is False  # a retried push changes nothing
    with pytest.raises(RoundError, match="cannot go from pushed to planned"):
        transition(store, r.id, PLANNED)
    transition(store, r.id, FAILED, error="boom")
    assert get_round(store, r.id).error == "boom"
    assert active_round(store) is None


def test_record_plan_is_idempotent(store: Store) -> None:
    ids = _items(store, 3)
    r = create_round(store, strategy="auto", batch_size=3, overlap=2)
    plan = _Plan([_Planned(i, k, 0.1 * k, "cat") for k, i in enumerate(ids)])
    assert record_plan(store, r.id, plan) == 3
    assert store.get_meta(unpushed_key(r.id)) is True  # with the selections, none pushed
    store.set_meta(unpushed_key(r.id), None)  # as a push's first step takes it
    assert record_plan(store, r.id, _Plan([_Planned(ids[0], 0, 0.0)])) == 3
    assert store.get_meta(unpushed_key(r.id)) is None  # a retried select never sets it again
    with store.session() as s:
        assert s.query(Selection).filter_by(round_id=r.id).count() == 3
    got = get_round(store, r.id)
    assert got.model_version == "m-test" and got.strategy == "margin"


def test_progress_counts_tasks_that_reached_overlap(store: Store) -> None:
    ids = _items(store, 2)
    r = create_round(store, strategy="auto", batch_size=2, overlap=2)
    record_plan(store, r.id, _Plan([_Planned(i, k, 0.0) for k, i in enumerate(ids)]))
    with store.session() as s:
        for n, (item, who) in enumerate([(ids[0], "a"), (ids[0], "b"), (ids[1], "a")]):
            s.add(Annotation(ls_annotation_id=n + 1, ls_task_id=100 + item, item_id=item,
                             round_id=r.id, annotator=who, label="cat"))
    p = round_progress(store, r.id)
    assert (p.tasks, p.tasks_done, p.annotations) == (2, 1, 3)
    assert p.by_annotator == {"a": 2, "b": 1}
    assert not p.complete
