"""Progress on stderr for long steps: done/total, the rate and an estimate of the time left.

Every long step (ingest, embed, push, export, waiting for Label Studio) shows the same
bar through :func:`progress` (a context manager yielding ``advance(n)``) or
:func:`track` (wrap an iterable). Disabled, both cost nothing and print nothing, so
library calls and ``--json`` output stay clean; the CLI enables them only when stderr is
a terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def _columns(unit: str) -> tuple[Any, ...]:
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

    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), RateColumn(), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn())


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


def track(items: Iterable[T], total: int | None, description: str, enabled: bool,
          unit: str = "items") -> Iterator[T]:
    """Iterate ``items``, advancing the bar by one per item."""
    with progress(enabled, total, description, unit) as advance:
        for item in items:
            yield item
            advance(1)
