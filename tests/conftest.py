"""Shared fixtures: projects, stores on SQLite and PostgreSQL, images."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from redis import Redis

from alearn.config import Settings
from alearn.project import Project
from alearn.store import Store

pytest_plugins = ["ls_server"]  # tests/ls_server.py: a live Label Studio per session

PG_ADMIN_URL = os.environ.get(
    "ALEARN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_TEST_URL = os.environ.get("ALEARN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


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


@pytest.fixture(params=["sqlite", "postgresql"])
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


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (32, 24), mode: str = "RGB",
                fmt: str | None = None) -> Path:
    """Write a small random image (distinct per seed)."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr.squeeze() if channels == 1 else arr, mode=mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Six distinct small PNG/JPEG images in nested folders."""
    root = tmp_path / "images"
    for i in range(3):
        write_image(root / "a" / f"img{i}.png", seed=i)
    for i in range(3, 6):
        write_image(root / "b" / f"img{i}.jpg", seed=i)
    return root


@pytest.fixture
def project(tmp_path: Path, image_dir: Path) -> Project:
    """An initialised project on SQLite over ``image_dir``."""
    return Project.init(
        tmp_path / "proj", classes=["cat", "dog", "bird"], images=image_dir, settings=Settings()
    )
