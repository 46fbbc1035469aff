"""Pull, one annotation at a time, against a stubbed Label Studio (the boundary only; the
store is real). Live Label Studio versions of these cases run in the fault suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from alearn.rounds.lifecycle import CLOSED, is_stale, transition
from alearn.store import Annotation, Item, QuarantinedAnnotation, Round, Selection, Store
from alearn.team import add_member, remove_member
from labelstudio.convert import chosen_labels
from labelstudio.label_config import choice_result
from labelstudio.pull import pull_annotations


class StubLS:
    """What pull asks of Label Studio: a project, its users, its tasks."""

    url = "http://stub"

    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        self.tasks = tasks

    def get_project(self, project_id: int) -> dict[str, Any]:
        return {"id": project_id}

    def user_emails(self) -> dict[int, str]:
        return {1: "ann@x", 2: "bob@x", 3: "eve@x"}

    def iter_tasks(self, project_id: int, *, annotations: bool = False, **_kw: Any) -> Any:
        yield from self.tasks


def ann(aid: int, who: int | None, label: Any, at: str = "2026-01-01T00:00:00Z") -> dict:
    result = choice_result(label) if isinstance(label, str) else label
    return {"id": aid, "completed_by": who, "result": result, "created_at": at,
            "updated_at": at, "lead_time": 1.0}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'a.db'}")
    with s.session() as ses:
        for i in (1, 2):
            ses.add(Item(id=i, sha256=f"{i:064d}", path=f"{i}.png", width=4, height=4))
        ses.add(Round(id=1, number=1, status="pushed", strategy="margin", batch_size=2,
                      overlap=2, metrics={}))
        ses.flush()
        ses.add(Selection(round_id=1, item_id=1, rank=0, score=0.1, ls_task_id=10))
        ses.add(Selection(round_id=1, item_id=2, rank=1, score=0.2, ls_task_id=11))
    s.set_meta("ls_project_id", 5)
    add_member(s, "ann@x")
    add_member(s, "bob@x")
    return s


def task(tid: int, item: Any, rnd: Any, anns: list[Any]) -> dict[str, Any]:
    return {"id": tid, "data": {"item_id": item, "round": rnd}, "annotations": anns}


def rows(store: Store) -> dict[int, Annotation]:
    with store.session() as s:
        return {a.ls_annotation_id: a for a in s.scalars(select(Annotation))}


def quarantine(store: Store) -> list[QuarantinedAnnotation]:
    with store.session() as s:
        return list(s.scalars(select(QuarantinedAnnotation)))


def test_one_bad_record_never_stops_a_pull(store: Store) -> None:
    bad_value = [{"type": "choices", "from_name": "label", "to_name": "image",
                  "value": ["cat"]}]
    ls = StubLS([
        task(10, 1, 1, [ann(100, 1, "cat"), ann(101, 2, bad_value), "not a record",
                        ann(102, None, "cat")]),
        task(11, 2, 1, [ann(103, 1, "dog")]),
    ])
    summary = pull_annotations(store, ls, classes=["cat", "dog"])
    got = rows(store)
    assert got[100].status == "ok" and got[103].status == "ok"
    assert got[101].status == "set_aside" and "unreadable result" in got[101].reason
    q = {(x.kind, x.ls_annotation_id) for x in quarantine(store)}
    assert q == {("unreadable", 102), ("unreadable", None)}  # no author; not a record
    assert summary.quarantined == 2 and summary.new == 3
    again = pull_annotations(store, ls, classes=["cat", "dog"])
    assert (again.new, again.updated, again.unchanged) == (0, 0, 3)
    assert len(quarantine(store)) == 2  # kept once, not duplicated


def test_only_tasks_alearn_recorded_count(store: Store) -> None:
    ls = StubLS([
        task(10, 1, 1, [ann(100, 1, "cat")]),
        task(99, 1, 1, [ann(200, 1, "dog")]),      # injected: same item and round
        task(11, 2, 7, [ann(201, 1, "dog")]),      # alearn's task, but data edited
        task(12, 2, "x", [ann(202, 2, "dog")]),    # unknown round: no foreign-key error
    ])
    pull_annotations(store, ls, classes=["cat", "dog"])
    assert set(rows(store)) == {100}
    kinds = {x.ls_annotation_id: (x.kind, x.reason) for x in quarantine(store)}
    assert {k: v[0] for k, v in kinds.items()} == {200: "foreign", 201: "foreign",
                                                    202: "foreign"}
    assert "not created by alearn" in kinds[200][1]
    assert "round id 1" in kinds[201][1]


def test_the_latest_vote_of_one_person_on_one_task_counts(store: Store) -> None:
    ls = StubLS([task(10, 1, 1, [ann(100, 1, "dog", "2026-01-01T00:00:00Z"),
                                 ann(101, 1, "cat", "2026-01-01T00:05:00Z"),
                                 ann(102, 2, "cat")])])
    summary = pull_annotations(store, ls, classes=["cat", "dog"])
    got = rows(store)
    assert got[100].status == "set_aside" and got[100].reason.startswith("superseded")
    assert got[101].status == "ok" and got[102].status == "ok"
    assert summary.superseded == 1


def test_a_null_author_later_is_set_aside_not_deleted(store: Store) -> None:
    pull_annotations(store, StubLS([task(10, 1, 1, [ann(100, 1, "cat")])]), classes=["cat"])
    pull_annotations(store, StubLS([task(10, 1, 1, [ann(100, None, "cat")])]), classes=["cat"])
    got = rows(store)
    assert got[100].status == "set_aside" and "completed_by" in got[100].reason


def test_changes_after_close_mark_the_round_stale(store: Store) -> None:
    ls = StubLS([task(10, 1, 1, [ann(100, 1, "cat"), ann(101, 2, "cat")])])
    pull_annotations(store, ls, classes=["cat", "dog"])
    transition(store, 1, CLOSED)
    assert is_stale(store, 1) == []
    ls.tasks = [task(10, 1, 1, [ann(100, 1, "dog", "2026-02-01T00:00:00Z")])]
    summary = pull_annotations(store, ls, classes=["cat", "dog"])
    assert summary.stale_rounds == 1
    (event,) = is_stale(store, 1)
    changes = {c["change"] for c in event["changes"]}
    assert changes == {"edited", "deleted"}
    got = rows(store)
    assert got[100].label == "dog"
    assert got[101].status == "set_aside" and "deleted in Label Studio" in got[101].reason
    again = pull_annotations(store, ls, classes=["cat", "dog"])
    assert again.stale_rounds == 0 and len(is_stale(store, 1)) == 1


@pytest.mark.parametrize("value", [["cat"], "cat", 3])
def test_chosen_labels_refuses_a_malformed_value_with_a_reason(value: Any) -> None:
    with pytest.raises(ValueError, match="should be"):
        chosen_labels([{"type": "choices", "from_name": "label", "value": value}])


def test_only_the_roster_votes(store: Store) -> None:
    ls = StubLS([task(10, 1, 1, [ann(100, 1, "cat"), ann(101, 3, "dog")])])
    pull_annotations(store, ls, classes=["cat", "dog"])
    got = rows(store)
    assert got[100].status == "ok"
    assert got[101].status == "set_aside" and "eve@x is not on the project's roster" in \
        got[101].reason
    remove_member(store, "ann@x")  # off the roster: from the next pull on, not counted
    pull_annotations(store, ls, classes=["cat", "dog"])
    assert rows(store)[100].status == "set_aside"
