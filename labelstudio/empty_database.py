"""A migrated, empty Label Studio database, made once, that a new data directory starts from.

Label Studio's first start in a new data directory spends about a minute applying its
~400 Django migrations to a fresh SQLite database: on a 2-core machine a first start took
67 s, the next start in the same directory 7 s. ``scripts/setup`` runs those migrations once,
with no account in the database (``label-studio version`` migrates, then exits), and keeps
the file beside that Label Studio install. :func:`seed` copies it into a data directory
that has no database yet, so every new server (``alearn ls up`` for a new project, the
demo, each test server) starts in seconds.

The copy holds only Django's schema and migration records: no user, organization, token
or secret (the secret key lives in the data directory's ``.env``, which Label Studio
writes on its own). It sits inside the install it was made by, so another install or
version never uses it; were it older than its install, Label Studio would apply the
missing migrations on start, as it does for any database.

    python -m labelstudio.empty_database .lsvenv/bin/label-studio   # what setup runs
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# both import only the standard library: setup runs this with Label Studio's python
from alearn.atomic import write_with
from labelstudio.server_security import PASS_ENV

#: Label Studio's database file in its data directory
DATABASE_FILE = "label_studio.sqlite3"


def template_path(ls_bin: Path) -> Path:
    """Where the empty database of the Label Studio at ``ls_bin`` is kept: inside its
    install (``<venv>/share/alearn/``)."""
    return Path(ls_bin).resolve().parent.parent / "share" / "alearn" / f"empty-{DATABASE_FILE}"


def seed(data_dir: Path, ls_bin: Path) -> bool:
    """Copy the empty database into ``data_dir`` if it has no database and one was made
    for this install. True if it copied."""
    db, template = Path(data_dir) / DATABASE_FILE, template_path(ls_bin)
    if db.exists() or not template.is_file():
        return False
    _copy_atomically(template, db)
    return True


def make_template(ls_bin: Path, timeout: float = 900.0) -> Path:
    """Apply Label Studio's migrations to a new database and keep it as the template."""
    target = template_path(ls_bin)
    with tempfile.TemporaryDirectory(prefix="alearn-ls-migrate-") as tmp:
        # a server's environment, no more (no account is given, so none is made)
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.update(LABEL_STUDIO_LATEST_VERSION_CHECK="false",
                   LABEL_STUDIO_COLLECT_ANALYTICS="false")
        cmd = [str(Path(ls_bin).absolute()), "version", "--data-dir", tmp]
        run = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True,
                             timeout=timeout)
        made = Path(tmp) / DATABASE_FILE
        if run.returncode != 0 or not made.is_file():
            tail = "\n".join((run.stdout + run.stderr).splitlines()[-15:])
            raise RuntimeError(f"label-studio version exited {run.returncode} without a "
                               f"database:\n{tail}")
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_atomically(made, target)
    return target


def _copy_atomically(src: Path, dst: Path) -> None:
    with src.open("rb") as source:
        write_with(dst, lambda out: shutil.copyfileobj(source, out))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m labelstudio.empty_database PATH/TO/label-studio", file=sys.stderr)
        return 2
    print(make_template(Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
