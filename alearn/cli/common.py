"""What the command modules share: the context, output helpers and repeated options.

Only light imports here (click and alearn's base modules): ``alearn --help`` loads
this module, so anything heavy (workers, sqlalchemy queries, torch) is imported inside
the helper that needs it. Rich too: ``console`` and ``err_console`` are made on their
first use (:mod:`alearn.cli.output`), so a command that prints only JSON never loads it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from alearn.config import Settings
from alearn.project import Project


class LazyConsole:
    """An :class:`~alearn.cli.output.OutputConsole` made on first use, with these
    arguments: importing rich costs a command that prints only JSON about 40 ms."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from alearn.cli.output import OutputConsole

            self._console = OutputConsole(**self._kwargs)
        return getattr(self._console, name)


console: Any = LazyConsole()
err_console: Any = LazyConsole(stderr=True)


def __getattr__(name: str) -> Any:
    """``OutputConsole`` and ``PIPE_WIDTH``, from :mod:`alearn.cli.output` on first use."""
    if name in ("OutputConsole", "PIPE_WIDTH"):
        from alearn.cli import output

        return getattr(output, name)
    raise AttributeError(f"module 'alearn.cli.common' has no attribute {name!r}")


F = TypeVar("F", bound=Callable[..., Any])


class Context:
    """What every command needs: settings and (lazily) the project."""

    def __init__(self, project_dir: Path | None) -> None:
        self.project_dir = project_dir
        self.settings = Settings.load()
        self._project: Project | None = None

    @property
    def project(self) -> Project:
        if self._project is None:
            self._project = Project.open(self.project_dir, self.settings)
            self.settings = self._project.settings  # with its stored Label Studio connection
        return self._project

    def close(self) -> None:
        """Close the store's database connections once the command is done (a command run
        in-process, as the tests do, must not leave them to the garbage collector)."""
        if self._project is not None and "store" in vars(self._project):
            self._project.store.dispose()


pass_ctx = click.make_pass_decorator(Context)


# --- output ---


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def print_table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None,
                headers: dict[str, str] | None = None) -> None:
    """Rows as a table; ``headers`` gives a column (a row's key) a human name. A cell that
    does not fit the terminal is folded onto more lines, never cut."""
    from rich.table import Table

    columns = columns or (list(rows[0]) if rows else [])
    headers = headers or {}
    table = Table(title=title)
    for col in columns:
        table.add_column(headers.get(col, col), overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)


def fmt(value: Any) -> str:
    """A figure for a sentence: floats to three places, None as '-'."""
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


# --- options used by more than one command ---


def json_option(func: F) -> F:
    """``--json``: print JSON for scripts instead of tables (passed as ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def batch_size_option(func: F) -> F:
    return click.option("--batch-size", type=click.IntRange(min=1), default=None,
                        help="Items in the batch (default: rounds.batch_size).")(func)


def strategy_option(func: F) -> F:
    """``--strategy``; the command checks the name with :func:`check_strategy`."""
    return click.option("--strategy", default=None,
                        help="Strategy name or 'auto' (default: rounds.strategy).")(func)


def check_strategy(strategy: str | None) -> None:
    """A usage error (exit 2, naming --strategy) for an unknown strategy name."""
    from alearn.exceptions import UnknownNameError
    from alearn.query.strategies import check_strategy_name

    if strategy is not None:
        try:
            check_strategy_name(strategy)
        except UnknownNameError as exc:
            raise click.BadParameter(str(exc), param_hint="--strategy") from None


def round_number_option(default_help: str) -> Callable[[F], F]:
    """``--round N`` (passed as ``number``); ``default_help`` says what omitting it means."""
    def decorate(func: F) -> F:
        return click.option("--round", "number", type=int, default=None,
                            help=f"Round number (default: {default_help}).")(func)
    return decorate


# --- things commands open ---


def redis_connection(ctx: Context):  # noqa: ANN201 - redis.Redis, imported lazily
    from workers.queues import connect

    return connect(ctx.settings)


def round_by_number(ctx: Context, number: int | None) -> Any:
    """Round ``number``, or the active (else latest) round when None."""
    from sqlalchemy import select

    from alearn.rounds.lifecycle import get_round
    from alearn.store import Round

    store = ctx.project.store
    if number is None:
        return get_round(store)
    with store.session() as s:
        rnd = s.scalar(select(Round).where(Round.number == number))
    if rnd is None:
        raise click.BadParameter(f"there is no round {number}", param_hint="--round")
    return rnd
