"""The one place where Label Studio JSON becomes store records.

:func:`annotation_to_record` turns one Label Studio annotation (as found in a task's
``annotations`` list) into the fields of :class:`alearn.store.Annotation`. It never
raises for a bad label: such an annotation is kept with ``status='set_aside'`` and a
``reason`` so that people can see it, and consensus only uses ``status='ok'``.

Annotator identity: Label Studio's user id is the stable key, shown as the user's
email when known (``users`` map, or the ``created_username`` Label Studio adds), else
as ``user:<id>``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

from labelstudio.label_config import CHOICES_NAME

OK = "ok"
SET_ASIDE = "set_aside"

_EMAIL_IN_USERNAME = re.compile(r"^\s*(\S+@\S+?),\s*(\d+)\s*$")


def parse_time(value: Any) -> dt.datetime | None:
    """An ISO-8601 time (or datetime) as a naive UTC datetime, like the store keeps."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        t = value
    else:
        text = str(value).strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        t = dt.datetime.fromisoformat(text)
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC).replace(tzinfo=None)
    return t


def annotator_of(ls_annotation: Mapping[str, Any], users: Mapping[int, str] | None = None) -> str:
    """A stable, readable name for the annotation's author."""
    who = ls_annotation.get("completed_by")
    email = None
    if isinstance(who, Mapping):
        email, who = who.get("email"), who.get("id")
    if who is None:
        raise ValueError("the annotation has no 'completed_by' user")
    uid = int(who)
    if users and users.get(uid):
        return str(users[uid])
    if email:
        return str(email)
    m = _EMAIL_IN_USERNAME.match(str(ls_annotation.get("created_username") or ""))
    if m and int(m.group(2)) == uid:
        return m.group(1)
    return f"user:{uid}"


def chosen_labels(result: Any) -> list[str]:
    """Every choice in an annotation ``result`` (for the project's choices control)."""
    if not isinstance(result, list):
        raise ValueError(f"'result' should be a list, got {type(result).__name__}")
    labels: list[str] = []
    for region in result:
        if not isinstance(region, Mapping) or region.get("type") != "choices":
            continue
        if region.get("from_name", CHOICES_NAME) != CHOICES_NAME:
            continue
        value = region.get("value") or {}
        if not isinstance(value, Mapping):
            raise ValueError(f"a choices region's 'value' should be an object, got "
                             f"{type(value).__name__}")
        choices = value.get("choices") or []
        if not isinstance(choices, list):
            raise ValueError(f"'choices' should be a list, got {type(choices).__name__}")
        labels.extend(str(c) for c in choices)
    return labels


def judge(labels: Sequence[str], classes: Sequence[str]) -> tuple[str | None, str, str | None]:
    """``(label, status, reason)`` for the choices made in one annotation."""
    distinct = list(dict.fromkeys(labels))
    if not distinct:
        return None, SET_ASIDE, "no choice made"
    if len(distinct) > 1:
        return None, SET_ASIDE, f"several choices {distinct}; a single class is expected"
    label = distinct[0]
    if label not in classes:
        return label, SET_ASIDE, f"label {label!r} is not one of the classes {list(classes)}"
    return label, OK, None


def annotation_to_record(
    ls_annotation: Mapping[str, Any],
    task: Mapping[str, Any],
    classes: Sequence[str],
    *,
    users: Mapping[int, str] | None = None,
    item_id: int | None = None,
    round_id: int | None = None,
) -> dict[str, Any]:
    """The :class:`alearn.store.Annotation` fields of one Label Studio annotation.

    Parameters
    ----------
    ls_annotation
        One element of a task's ``annotations``.
    task
        The task (``id`` and ``data``; ``data.item_id`` and ``data.round`` locate the
        item and round unless ``item_id`` / ``round_id`` are given).
    classes
        The project's classes; any other label is set aside.
    users
        Label Studio user id -> email.

    Raises
    ------
    ValueError
        The annotation cannot be attributed (no id, task, item or author). A bad or
        missing label does not raise: it is set aside with a reason.
    """
    data = task.get("data") or {}
    if ls_annotation.get("id") is None or task.get("id") is None:
        raise ValueError("the annotation or its task has no id")
    item = item_id if item_id is not None else data.get("item_id")
    if item is None:
        raise ValueError(f"task {task.get('id')} has no data.item_id; it is not alearn's")
    rnd = round_id if round_id is not None else data.get("round")
    cancelled = bool(ls_annotation.get("was_cancelled"))
    try:
        label, status, reason = judge(chosen_labels(ls_annotation.get("result")), classes)
    except ValueError as exc:
        label, status, reason = None, SET_ASIDE, f"unreadable result: {exc}"
    if cancelled:
        status, reason = SET_ASIDE, "skipped by the annotator"
    lead = ls_annotation.get("lead_time")
    return {
        "ls_annotation_id": int(ls_annotation["id"]),
        "ls_task_id": int(task["id"]),
        "item_id": int(item),
        "round_id": None if rnd is None else int(rnd),
        "annotator": annotator_of(ls_annotation, users),
        "label": label,
        "lead_time": None if lead is None else float(lead),
        "was_cancelled": cancelled,
        "status": status,
        "reason": reason,
        "created_at": parse_time(ls_annotation.get("created_at")),
        "updated_at": parse_time(ls_annotation.get("updated_at")),
    }
