"""A pull reads only the tasks Label Studio changed since the last pull (a real Label
Studio 1.23.2): its cost follows the round's batch, not the project's size."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_labelstudio_live import config, make_store, selections

from alearn.store import Store
from labelstudio import pull_window
from labelstudio.client import LSClient
from labelstudio.label_config import choice_result
from labelstudio.projects import ensure_project
from labelstudio.pull import pull_annotations
from labelstudio.push import push_round

pytestmark = pytest.mark.integration


@pytest.fixture
def pushed(live_ls, tmp_path: Path) -> Iterator[tuple[Store, LSClient, dict[int, int]]]:
    store, images = make_store(tmp_path)
    client = live_ls.client()
    ensure_project(store, client, config(), images, document_root=live_ls.document_root)
    push_round(store, client, 1)
    yield store, client, {s.item_id: s.ls_task_id for s in selections(store)}
    client.close()
    store.dispose()


def test_a_pull_reads_only_the_tasks_changed_since_the_last(
        live_ls, pushed, monkeypatch: pytest.MonkeyPatch) -> None:
    store, client, task_of = pushed
    monkeypatch.setattr(pull_window, "MARGIN", dt.timedelta(0))
    from alearn.team import add_member

    add_member(store, live_ls.admin_email)
    votes = {item: client.create_annotation(task, choice_result("cat"))
             for item, task in task_of.items()}

    first = pull_annotations(store, client)  # no window yet: every task
    assert (first.tasks, first.new) == (6, 6)
    assert pull_annotations(store, client).tasks == 0  # nothing changed: nothing listed

    client.update_annotation(votes[2], result=choice_result("dog"))
    client.delete_annotation(votes[3])
    client.create_annotation(task_of[4], choice_result("bird"))
    third = pull_annotations(store, client)
    assert third.tasks == 3  # the three tasks touched, not the six
    # the admin's second vote on task 4 supersedes the first: both are read, one updated
    assert (third.new, third.updated, third.deleted, third.unchanged) == (1, 2, 1, 0)
    assert third.superseded == 1

    full = pull_annotations(store, client, full=True)
    assert (full.tasks, full.new, full.updated, full.deleted) == (6, 0, 0, 0)


def test_a_full_listing_runs_when_the_window_is_old_or_forgotten(
        live_ls, pushed, monkeypatch: pytest.MonkeyPatch) -> None:
    store, client, _task_of = pushed
    monkeypatch.setattr(pull_window, "MARGIN", dt.timedelta(0))
    assert pull_annotations(store, client).tasks == 6
    assert pull_annotations(store, client).tasks == 0
    pull_window.forget(store)
    assert pull_annotations(store, client).tasks == 6
    monkeypatch.setattr(pull_window, "FULL_EVERY", dt.timedelta(0))
    assert pull_annotations(store, client).tasks == 6  # the safety net: every time here


def test_the_window_belongs_to_one_label_studio_project(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pull_window, "MARGIN", dt.timedelta(seconds=10))
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        assert pull_window.updated_after(store, 7) is None
        pull_window.remember(store, 7, ["2026-01-01T00:00:10.000000Z", None], full=False)
        assert store.get_meta(pull_window.KEY) is None  # only a full listing starts one
        pull_window.remember(store, 7, ["2026-01-01T00:00:10.000000Z"], full=True)
        assert pull_window.updated_after(store, 7) == "2026-01-01T00:00:00.000000Z"  # margin 10 s
        pull_window.remember(store, 7, ["2026-01-01T00:00:05.000000Z"], full=False)
        assert pull_window.updated_after(store, 7) == "2026-01-01T00:00:00.000000Z"  # newest kept
        assert pull_window.updated_after(store, 8) is None  # another project: list all
    finally:
        store.dispose()
