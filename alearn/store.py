"""The store: the source of truth for items, rounds, annotations and labels.

SQLAlchemy 2: a SQLite file in the project directory, or any SQLAlchemy URL (PostgreSQL
in production) through ``ALEARN_DATABASE_URL``. One database holds one project. The
tables are declared in :mod:`alearn.tables` and importable from here too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from alearn.exceptions import StoreError
from alearn.tables import (  # noqa: F401  (re-exported: the store's tables)
    Annotation,
    Base,
    FileRecord,
    Item,
    Label,
    Meta,
    ModelRecord,
    QuarantinedAnnotation,
    Round,
    RoundEvent,
    Selection,
    TeamMember,
    utcnow,
)

__all__ = [
    "Annotation",
    "Base",
    "FileRecord",
    "Item",
    "Label",
    "Meta",
    "ModelRecord",
    "QuarantinedAnnotation",
    "Round",
    "RoundEvent",
    "Selection",
    "Store",
    "TeamMember",
    "utcnow",
]


class Store:
    """Engine plus session factory for one project's database."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if create:
            self.create_all()

    def create_all(self) -> None:
        try:
            Base.metadata.create_all(self.engine)
            self._add_missing_columns()
        except OperationalError as exc:
            raise StoreError(
                f"cannot open the database at {self.safe_url}: {str(exc.orig).strip()}. "
                "Check ALEARN_DATABASE_URL and that the server is running."
            ) from None

    def _add_missing_columns(self) -> None:
        """Additive schema changes: a nullable column a newer alearn declares and an older
        store lacks is added (ALTER TABLE ... ADD COLUMN), so old stores keep working."""
        from sqlalchemy import inspect, text

        insp = inspect(self.engine)
        with self.engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                have = {c["name"] for c in insp.get_columns(table.name)}
                for col in table.columns:
                    if col.name in have or not col.nullable:
                        continue
                    kind = col.type.compile(dialect=self.engine.dialect)
                    conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{col.name}" {kind}'))

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self._sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self.session() as s:
            row = s.get(Meta, key)
            return default if row is None else row.value

    def set_meta(self, key: str, value: Any) -> None:
        with self.session() as s:
            s.merge(Meta(key=key, value=value))

    def trusted_labels(self) -> dict[int, str]:
        """item id -> trusted label."""
        with self.session() as s:
            return dict(s.execute(select(Label.item_id, Label.label)).all())

    def item_ids(self) -> list[int]:
        with self.session() as s:
            return list(s.scalars(select(Item.id).order_by(Item.id)))

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=30000"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()
