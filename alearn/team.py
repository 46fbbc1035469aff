"""The roster: only the team labels.

Votes count only from the project's annotators, and adjudication decisions only from
its reviewers (the roster's reviewers and ``agreement.reviewers`` in alearn.toml).
People are named by their Label Studio email, the identity pull records. Anyone else
who labels in Label Studio is set aside with a reason, never counted and never lost.
"""

from __future__ import annotations

import logging
import re
from typing import Any, cast

from sqlalchemy import delete, select
from sqlalchemy.engine import CursorResult

from alearn.exceptions import ConfigError
from alearn.store import Store, TeamMember

log = logging.getLogger(__name__)

ROLES = ("annotator", "reviewer")


def _email(email: str) -> str:
    email = email.strip().lower()
    if not re.fullmatch(r"[^@\s]+@[^@\s]+", email) or len(email) > 256:
        raise ConfigError(f"{email!r} is not an email; the roster names people by their "
                          "Label Studio email.")
    return email


def add_member(store: Store, email: str, role: str = "annotator") -> bool:
    """Put someone on the roster (or change their role); True if it changed anything."""
    if role not in ROLES:
        raise ConfigError(f"role {role!r}: use one of {', '.join(ROLES)}.")
    email = _email(email)
    with store.session() as s:
        row = s.scalar(select(TeamMember).where(TeamMember.email == email))
        if row is not None and row.role == role:
            return False
        if row is None:
            s.add(TeamMember(email=email, role=role))
        else:
            row.role = role
    log.info("team_event=added email=%s role=%s", email, role)
    return True


def remove_member(store: Store, email: str) -> bool:
    """Take someone off the roster; their votes are set aside from the next pull on."""
    email = _email(email)
    with store.session() as s:
        result = s.execute(delete(TeamMember).where(TeamMember.email == email))
        gone = cast(CursorResult[Any], result).rowcount  # a DELETE returns a cursor result
    return bool(gone)


def roster(store: Store) -> dict[str, str]:
    """email -> role."""
    with store.session() as s:
        return {m.email: m.role for m in s.scalars(select(TeamMember).order_by(TeamMember.email))}


def voters(store: Store) -> set[str]:
    """Whose votes count in the main project: everyone on the roster."""
    return set(roster(store))


def reviewers(store: Store, configured: list[str] | tuple[str, ...] = ()) -> set[str]:
    """Whose adjudication decisions count."""
    return {e for e, r in roster(store).items() if r == "reviewer"} | {
        c.strip().lower() for c in configured}
