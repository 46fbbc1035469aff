from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from alearn.exceptions import StoreError
from alearn.store import Item, Label, Store


def _item(sha: str, path: str) -> Item:
    return Item(sha256=sha, path=path, width=4, height=3, extra={"k": "v"})


def test_items_and_labels_round_trip(store: Store) -> None:
    with store.session() as s:
        a, b = _item("a" * 64, "x/a.png"), _item("b" * 64, "x/b.png")
        s.add_all([a, b])
        s.flush()
        s.add(Label(item_id=a.id, label="cat", origin="manifest", is_gold=True))
    assert store.item_ids() == [a.id, b.id]
    assert store.trusted_labels() == {a.id: "cat"}
    with store.session() as s:
        got = s.scalars(select(Item).where(Item.sha256 == "a" * 64)).one()
        assert got.extra == {"k": "v"}


def test_sha256_is_unique(store: Store) -> None:
    with pytest.raises(IntegrityError):
        with store.session() as s:
            s.add_all([_item("c" * 64, "1.png"), _item("c" * 64, "2.png")])
    # the failed transaction left nothing behind
    assert store.item_ids() == []


def test_meta_is_upserted(store: Store) -> None:
    assert store.get_meta("ls_project_id") is None
    store.set_meta("ls_project_id", 7)
    store.set_meta("ls_project_id", 8)
    assert store.get_meta("ls_project_id") == 8


def test_unreachable_database_gives_clear_error() -> None:
    with pytest.raises(StoreError, match=r"(?s)cannot open the database.*ALEARN_DATABASE_URL"):
        Store("postgresql+psycopg://nobody:pw@127.0.0.1:1/nothing")


def test_safe_url_hides_password() -> None:
    s = Store("postgresql+psycopg://u:hunter2@127.0.0.1:1/x", create=False)
    assert "hunter2" not in s.safe_url
