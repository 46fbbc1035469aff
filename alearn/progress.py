"""Progress on stderr for long steps: done/total, the rate and an estimate of the time left.

Every long step (ingest, embed, push, export) shows the same bar through
:func:`progress` (a context manager yielding ``advance(n)``) or :func:`track` (wrap an
iterable); a wait with nothing to count (Label Studio starting) shows the seconds
waited against an estimate, and the time left, through :func:`waiting`. Disabled, they
cost nothing and print nothing, so library calls and ``--json`` output stay clean; the
CLI enables them only when stderr is a terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def _columns(unit: str, *, counted: bool = True) -> tuple[Any, ...]:
    """The bar's columns; ``counted=False`` (a wait) leaves out done/total and the rate."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class RateColumn(TextColumn):
        """Items per second, from Rich's own speed estimate."""

        def __init__(self) -> None:
            super().__init__("")

        def render(self, task: Any) -> Any:
            from rich.text import Text

            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.1f} {unit}/s", style="cyan")

    counts = (MofNCompleteColumn(), TaskProgressColumn(), RateColumn()) if counted else ()
    return (TextColumn("{task.description}"), BarColumn(), *counts, TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn())


@contextmanager
def progress(enabled: bool, total: int | None, description: str,
             unit: str = "items") -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a bar with the rate (``unit``/s) and the time left."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(*_columns(unit), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def waiting(enabled: bool, expected_seconds: float,
            description: str) -> Iterator[Callable[[float], None]]:
    """Yield ``update(elapsed)`` for a wait with no items to count (a server starting):
    a bar of the seconds waited against ``expected_seconds`` (e.g. how long the last start
    took), with the time left. A wait that outlasts the estimate stretches it."""
    if not enabled:
        yield lambda elapsed: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(*_columns("s", counted=False), console=Console(stderr=True),
                  transient=True) as bar:
        task = bar.add_task(description, total=max(expected_seconds, 1.0))

        def update(elapsed: float) -> None:
            total = bar.tasks[task].total or 1.0
            if elapsed >= 0.95 * total:  # later than estimated: say it, do not sit at 100%
                total = elapsed * 1.25
            bar.update(task, completed=elapsed, total=total)

        yield update


def track(items: Iterable[T], total: int | None, description: str, enabled: bool,
          unit: str = "items") -> Iterator[T]:
    """Iterate ``items``, advancing the bar by one per item."""
    with progress(enabled, total, description, unit) as advance:
        for item in items:
            yield item
            advance(1)
