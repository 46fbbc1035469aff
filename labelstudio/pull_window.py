"""Which of a Label Studio project's tasks a pull reads: those changed since the last pull.

Listing a task with its annotations costs Label Studio about 10 ms, so a pull that lists
every task of the project grows with every round (300 tasks: about 3 s). Label Studio
sets a task's ``updated_at`` whenever an annotation on it is created, edited or deleted
(checked against Label Studio 1.23.2), and a new task starts with its own. So a pull
lists only the tasks updated after the newest ``updated_at`` the earlier pulls saw, less
:data:`MARGIN` for a write that Label Studio committed after a later one was listed;
that is the round's batch, whatever the project's size. Reading a task twice changes
nothing (the mirror is idempotent), and a task left out is simply unchanged.

A full listing still runs when the window is unknown (the first pull, a new Label
Studio project), at least every :data:`FULL_EVERY` as a safety net, and after
:func:`forget` ('alearn round sync --full'). The window is kept in the store's meta
table, next to the project id it belongs to: Label Studio's clock for ``newest``,
alearn's for ``full_at``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from alearn.store import Store

KEY = "ls_pull_window"
#: Tasks updated this long before the newest one seen are listed again.
MARGIN = dt.timedelta(seconds=15)
#: A full listing at least this often.
FULL_EVERY = dt.timedelta(hours=1)


def _parse(when: str) -> dt.datetime:
    got = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    return got if got.tzinfo else got.replace(tzinfo=dt.UTC)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def updated_after(store: Store, project_id: int) -> str | None:
    """The Label Studio time after which a pull must list tasks; None: list them all."""
    window = store.get_meta(KEY) or {}
    if window.get("project") != project_id or not window.get("newest"):
        return None
    try:
        full_at, newest = _parse(window["full_at"]), _parse(window["newest"])
    except (KeyError, TypeError, ValueError):
        return None
    if _now() - full_at >= FULL_EVERY:
        return None
    return _iso(newest - MARGIN)


def remember(store: Store, project_id: int, seen: Iterable[str | None], *,
             full: bool) -> None:
    """After a pull that completed: keep the newest ``updated_at`` among the tasks it
    listed (and the earlier newest), and when a full listing last ran."""
    window = store.get_meta(KEY) or {}
    if window.get("project") != project_id:
        if not full:
            return  # a window is only started by a full listing
        window = {}
    times = [_parse(t) for t in seen if t]
    if window.get("newest"):
        times.append(_parse(window["newest"]))
    store.set_meta(KEY, {
        "project": project_id,
        "newest": _iso(max(times)) if times else None,
        "full_at": _iso(_now()) if full else window.get("full_at"),
    })


def forget(store: Store) -> None:
    """Make the next pull list every task."""
    store.set_meta(KEY, None)
