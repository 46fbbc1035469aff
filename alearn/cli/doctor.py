"""``alearn doctor``: one line per check (ok, warn or fail), what was found and the fix.

The Redis side (workers, schedulers, the tick, queues, failed jobs, rounds' jobs) is
:mod:`workers.health`; Label Studio, the database schema, disk space and versions are
checked here. Nothing is changed: the store is opened without creating tables, and the
tick is not re-armed. The exit status is 1 when a check fails (warnings do not fail).
"""

from __future__ import annotations

import platform
import re
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from alearn.cli.common import Context, json_option, pass_ctx, print_json
from alearn.config import Settings
from alearn.exceptions import AlearnError, ProjectNotFound
from alearn.project import Project

if TYPE_CHECKING:
    from alearn.store import Store
    from workers.health import Check

#: Free space under which the feature cache's disk is a warning, and a failure.
DISK_WARN_BYTES = 1 << 30
DISK_FAIL_BYTES = 100 << 20
_COLORS = {"ok": "green", "warn": "yellow", "fail": "red"}


@click.command("doctor")
@json_option
@pass_ctx
def doctor(ctx: Context, as_json: bool) -> None:
    """Check Redis, Label Studio, workers, the tick, queues, rounds, the database, disk
    space and versions: one line each, with the fix. Exits 1 when a check fails."""
    checks = [_scrub(c, _secrets(ctx.settings)) for c in run_checks(ctx)]
    if as_json:
        print_json([c.to_dict() for c in checks])
    else:
        width = max(len(c.name) for c in checks) + 2
        for c in checks:
            line = f"{click.style(f'{c.status:<5}', fg=_COLORS[c.status])} {c.name:<{width}}"
            click.echo(line + c.found + (f". Fix: {c.fix}" if c.fix else ""))
    if any(c.status == "fail" for c in checks):
        sys.exit(1)


def run_checks(ctx: Context) -> list[Check]:
    """Every check, in the order they are printed."""
    from workers import health

    checks: list[Check] = []
    project = _project(ctx, checks)
    conn, redis_check = health.connect(ctx.settings)
    checks += [redis_check, label_studio_check(ctx.settings)]
    store = None
    try:
        if conn is not None:
            checks += health.redis_checks(conn, ctx.settings, project)
        if project is not None:
            schema, store = database_check(project)
            checks.append(schema)
            if store is not None:
                checks.append(health.rounds_check(store, project, conn))
            checks.append(disk_check(project))
        checks.append(versions_check(conn))
    finally:
        if store is not None:
            store.dispose()
        if conn is not None:
            conn.close()
    return checks


def _project(ctx: Context, checks: list[Check]) -> Project | None:
    from workers.health import Check

    try:
        project = ctx.project
    except ProjectNotFound:
        checks.append(Check("project", "warn", "not in an alearn project (no alearn.toml "
                            "here or above): project checks skipped",
                            "run it in the project folder, or 'alearn --project DIR doctor'"))
        return None
    except AlearnError as exc:
        checks.append(Check("project", "fail", str(exc).split("\n")[0],
                            "correct alearn.toml (the message names the key)"))
        return None
    checks.append(Check("project", "ok", f"{project.config.name} at {project.root}"))
    return project


def label_studio_check(settings: Settings) -> Check:
    """Label Studio answers at ALEARN_LS_URL, and it accepts the API token."""
    import httpx

    from alearn.exceptions import LabelStudioError
    from labelstudio.client import connect_label_studio
    from workers.health import Check

    url = settings.ls_url
    try:
        token = settings.label_studio_token()
    except AlearnError as exc:
        return Check("label-studio", "fail", str(exc).split(". ")[0].rstrip("."),
                     "set ALEARN_LS_TOKEN_FILE to a readable file, or ALEARN_LS_TOKEN")
    try:
        httpx.get(f"{url}/health", timeout=5.0)
    except httpx.HTTPError as exc:
        return Check("label-studio", "fail", f"cannot reach Label Studio at {url} "
                     f"({type(exc).__name__})", "start a local one with 'alearn ls up', or "
                     "set ALEARN_LS_URL to your server's address")
    token_fix = ("store an admin's API token with 'alearn ls connect URL' ('alearn ls up' "
                 "stores the local one), or set ALEARN_LS_TOKEN (or ALEARN_LS_TOKEN_FILE)")
    if not token:
        return Check("label-studio", "fail",
                     f"Label Studio answers at {url}, but no API token is set", token_fix)
    try:
        with connect_label_studio(settings, check=False) as client:
            me = client.whoami()
    except LabelStudioError as exc:
        text = str(exc)
        fix = token_fix if "refused the API token" in text else (
            "check that ALEARN_LS_URL is Label Studio's address, and its log "
            "('alearn ls status' for a local one)")
        return Check("label-studio", "fail", text.split(". ")[0], fix)
    return Check("label-studio", "ok", f"reachable at {url}; the token is valid "
                 f"({me.get('email') or 'user ' + str(me.get('id'))})")


def database_check(project: Project) -> tuple[Check, Store | None]:
    """Every table and column this alearn declares is in the store (the schema version).
    Returns the store, opened without creating anything, when it can be queried."""
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from alearn.store import Base, Store
    from workers.health import Check

    url = make_url(project.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        if not Path(str(url.database)).exists():
            return Check("database", "warn", f"no store yet at {url.database}",
                         "'alearn ingest' creates it"), None
    store = Store(project.database_url, create=False)
    try:
        insp = inspect(store.engine)
        tables = set(insp.get_table_names())
        have = {t: {c["name"] for c in insp.get_columns(t)} for t in tables}
    except SQLAlchemyError as exc:
        store.dispose()
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
        return Check("database", "fail", f"cannot open the database at {store.safe_url}: "
                     f"{reason}", "check ALEARN_DATABASE_URL and that the database server "
                     "is running"), None
    declared = Base.metadata.sorted_tables
    missing_tables = [t.name for t in declared if t.name not in tables]
    missing = [(f"{t.name}.{c.name}", c.nullable) for t in declared if t.name in tables
               for c in t.columns if c.name not in have[t.name]]
    n_cols = sum(len(t.columns) for t in declared)
    if not missing_tables and not missing:
        return Check("database", "ok", f"{store.safe_url}: schema current (all "
                     f"{len(declared)} tables and {n_cols} columns present)"), store
    gaps = ", ".join([f"table {t}" for t in missing_tables]
                     + [f"column {name}" for name, _ in missing])
    if any(not nullable for _, nullable in missing):
        store.dispose()
        return Check("database", "fail", f"{store.safe_url}: made by another alearn; "
                     f"missing {gaps}", "export it with the alearn that made it ('alearn "
                     "export'), then point ALEARN_DATABASE_URL at a new database"), None
    store.dispose()  # the rounds are read once the schema is current
    return Check("database", "warn", f"{store.safe_url}: older schema, missing {gaps}",
                 "'alearn status' adds them (any command that opens the store does)"), None


def disk_check(project: Project) -> Check:
    """Free space on the disk of the feature cache (data/features)."""
    from workers.health import Check

    where = project.features_dir
    probe = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
    try:
        free = shutil.disk_usage(probe).free
    except OSError as exc:
        return Check("disk", "warn", f"cannot measure free space at {probe} ({exc.strerror})",
                     f"check that {probe} is readable")
    text = f"{free / (1 << 30):.1f} GiB free for the feature cache ({where})"
    if free >= DISK_WARN_BYTES:
        return Check("disk", "ok", text)
    return Check("disk", "fail" if free < DISK_FAIL_BYTES else "warn", text,
                 f"free space on the disk holding {probe}, or move the project folder "
                 "to a bigger disk (the cache is data/features)")


def versions_check(conn: Any) -> Check:
    """alearn, Python, torch, label-studio-sdk, rq, redis-py and the Redis server."""
    from workers.health import Check

    parts, missing = [f"Python {platform.python_version()}"], []
    for dist in ("alearn", "torch", "label-studio-sdk", "rq", "redis"):
        try:
            parts.append(f"{'redis-py' if dist == 'redis' else dist} {version(dist)}")
        except PackageNotFoundError:
            missing.append(dist)
    if conn is not None:
        try:
            parts.append(f"Redis server {conn.info('server').get('redis_version', '?')}")
        except Exception:  # noqa: BLE001 - a version is never worth a failure
            pass
    found = ", ".join(parts)
    if missing:
        return Check("versions", "warn", f"{found}; not installed: {', '.join(missing)}",
                     "install alearn with its dependencies ('pip install alearn', or "
                     "'./scripts/setup' in a checkout)")
    return Check("versions", "ok", found)


def _secrets(settings: Settings) -> list[str]:
    """What must never be printed: the token, the webhook secret, URL passwords."""
    from urllib.parse import urlsplit

    out = []
    try:
        out.append(settings.label_studio_token() or "")
    except AlearnError:
        pass
    if settings.webhook_secret is not None:
        out.append(settings.webhook_secret.get_secret_value())
    for url in (settings.redis_url, settings.database_url or ""):
        try:
            out.append(urlsplit(url).password or "")
        except ValueError:
            pass
    return sorted({s for s in out if len(s) >= 4}, key=len, reverse=True)


def _scrub(check: Check, secrets: list[str]) -> Check:
    def clean(text: str) -> str:
        text = re.sub(r"://[^/\s@]+@", "://***@", text)
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    check.found = clean(check.found)
    check.fix = clean(check.fix) if check.fix else check.fix
    return check
