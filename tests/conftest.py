"""Shared fixtures (built by tests/factories.py) and the markers of tests that need a service.

A test that needs Redis or PostgreSQL is marked ``services``; one that needs Label Studio,
``integration``. Tests get these marks from the fixtures they use (see
``SERVICE_FIXTURES``), the PostgreSQL side of ``db_url``, or by hand for a test that
reaches a service on its own. ``pytest -m "not integration and not services"`` runs
on a machine with none of them.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import image_tree, make_project
from redis import Redis

from alearn.project import Project
from alearn.store import Store

pytest_plugins = ["ls_server"]  # tests/ls_server.py: a live Label Studio per session

PG_ADMIN_URL = os.environ.get(
    "ALEARN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_TEST_URL = os.environ.get("ALEARN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# (module, fixture) that reaches a service -> the mark of every test that uses it
SERVICE_FIXTURES = {
    ("conftest", "redis_conn"): "services",
    ("conftest", "pg_url"): "services",
    ("ls_server", "live_ls"): "integration",  # ``env`` uses it
    ("ls_server", "env"): "services",
}


# Resources the Label Studio side of alearn leaves to the garbage collector (ours, not yet
# fixed), tolerated in integration tests only; everywhere else every warning is an error.
INTEGRATION_LEAKS = [
    # start_server launches Label Studio detached; it outlives its Popen object on purpose
    "ignore:Exception ignored in. <function Popen.__del__:pytest.PytestUnraisableExceptionWarning",
    # the tests make LSClients freely (alearn's own code closes each one it opens)
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        _mark_by_fixtures(item)
        if item.get_closest_marker("integration") is not None:
            for spec in INTEGRATION_LEAKS:
                item.add_marker(pytest.mark.filterwarnings(spec))
    # ``run_last`` (the fault suite, which scripts/test starts beside the other tests) goes
    # last, so the others run while it does; sort is stable, the rest keep their order
    items.sort(key=lambda item: item.get_closest_marker("run_last") is not None)


def _mark_by_fixtures(item: pytest.Item) -> None:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return
    # the fixtures the test really uses, not a parameter that happens to share a name
    for name, defs in info.name2fixturedefs.items():
        mark = SERVICE_FIXTURES.get((getattr(defs[-1].func, "__module__", ""), name))
        if mark is not None and item.get_closest_marker(mark) is None:
            item.add_marker(mark)


@pytest.fixture(autouse=True)
def _collect_integration_garbage(request: pytest.FixtureRequest) -> Iterator[None]:
    """An integration test's leaks (INTEGRATION_LEAKS) are collected under its own
    filters, not at the end of the session, where every warning is an error."""
    yield
    if request.node.get_closest_marker("integration") is not None:
        gc.collect()


@pytest.fixture(autouse=True)
def _clean_alearn_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never inherit a user's ALEARN_* environment."""
    for key in list(os.environ):
        if key.startswith("ALEARN_") and not key.startswith("ALEARN_TEST_"):
            monkeypatch.delenv(key)


@pytest.fixture
def redis_conn(monkeypatch: pytest.MonkeyPatch) -> Iterator[Redis]:
    """The test Redis database, flushed before and after; workers in the test use it."""
    monkeypatch.setenv("ALEARN_REDIS_URL", REDIS_TEST_URL)
    conn = Redis.from_url(REDIS_TEST_URL)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()  # its pool's sockets, which a garbage collection would report as unclosed


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"alearn_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Parametrised over both supported databases."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'alearn.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    yield s
    s.dispose()


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Six distinct small PNG/JPEG images in nested folders."""
    return image_tree(tmp_path / "images")


@pytest.fixture
def project(tmp_path: Path, image_dir: Path) -> Iterator[Project]:
    """An initialised project on SQLite over ``image_dir`` (classes cat, dog, bird)."""
    made = make_project(tmp_path / "proj", image_dir)
    yield made
    made.store.dispose()  # its connections close now, not whenever they are collected


@pytest.fixture
def proj(tmp_path: Path, image_dir: Path, db_url: str) -> Iterator[Project]:
    """An initialised project over ``image_dir`` (classes cat, dog, bird), on each supported
    database in turn."""
    made = make_project(tmp_path / "p", image_dir, database_url=db_url)
    yield made
    made.store.dispose()
