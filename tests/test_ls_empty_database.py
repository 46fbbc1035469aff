"""The empty Label Studio database that new data directories start from
(labelstudio/empty_database.py)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from labelstudio.empty_database import DATABASE_FILE, make_template, seed, template_path

# a stand-in for `label-studio version --data-dir D`: writes a database, as migrate does
FAKE = """#!{python}
import sqlite3, sys
d = sys.argv[sys.argv.index("--data-dir") + 1]
c = sqlite3.connect(d + "/{db}")
c.execute("create table django_migrations (name text)")
c.execute("insert into django_migrations values ('0001_initial')")
c.commit()
"""


def fake_ls(tmp_path: Path) -> Path:
    exe = tmp_path / "venv" / "bin" / "label-studio"
    exe.parent.mkdir(parents=True)
    exe.write_text(FAKE.format(python=sys.executable, db=DATABASE_FILE))
    exe.chmod(0o755)
    return exe


def test_seed_copies_the_template_only_into_a_directory_without_a_database(
        tmp_path: Path) -> None:
    exe = fake_ls(tmp_path)
    data = tmp_path / "ls"
    data.mkdir()
    assert not seed(data, exe)  # no template made yet: Label Studio migrates on its own
    made = make_template(exe)
    assert made == template_path(exe) == tmp_path / "venv/share/alearn" / f"empty-{DATABASE_FILE}"
    assert seed(data, exe)
    rows = sqlite3.connect(data / DATABASE_FILE).execute(
        "select name from django_migrations").fetchall()
    assert rows == [("0001_initial",)]
    (data / DATABASE_FILE).write_bytes(b"a project's own database")
    assert not seed(data, exe)  # never over a database that exists
    assert (data / DATABASE_FILE).read_bytes() == b"a project's own database"


def test_a_failed_migration_keeps_no_template(tmp_path: Path) -> None:
    exe = tmp_path / "venv" / "bin" / "label-studio"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\necho 'django.db.utils.OperationalError: disk full' >&2\nexit 1\n")
    exe.chmod(0o755)
    with pytest.raises(RuntimeError, match=r"exited 1 without a database:\n.*disk full"):
        make_template(exe)
    assert not template_path(exe).exists()


@pytest.mark.services
def test_setup_made_the_template_and_it_holds_no_account(tmp_path: Path) -> None:
    """scripts/setup migrated an empty database for the installed Label Studio (so each
    test server and `alearn ls up` starts from it), and it holds no person or token."""
    from labelstudio.server import find_ls_bin

    template = template_path(find_ls_bin())
    assert template.is_file(), "run ./scripts/setup"
    db = sqlite3.connect(f"file:{template}?mode=ro", uri=True)
    assert db.execute("select count(*) from django_migrations").fetchone()[0] > 300
    for table in ("htx_user", "organization", "authtoken_token"):
        assert db.execute(f"select count(*) from {table}").fetchone()[0] == 0, table
