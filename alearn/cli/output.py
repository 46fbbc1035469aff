"""The consoles the commands print through (rich): :class:`OutputConsole`.

:mod:`alearn.cli.common` makes its ``console`` and ``err_console`` from this module on
their first use, so a command that prints only JSON (``alearn status --json``) never
imports rich.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleDimensions

# the width of output that goes to a pipe, a file or CI: wide enough that no table is cut
PIPE_WIDTH = 10_000


class OutputConsole(Console):
    """A console that uses the terminal's width on a terminal and never cuts anything
    when its stream is not one (``alearn status | less``, a log file, CI): there it is
    :data:`PIPE_WIDTH` wide, whatever ``COLUMNS``, ``FORCE_COLOR`` or stdin say.

    The stream is looked at on every print, so a command run in-process with its output
    captured (click's CliRunner) gets the pipe's width too.
    """

    def __init__(self, *args: Any, width: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, width=width, **kwargs)
        self._width_given = width is not None  # else Rich may have taken COLUMNS

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if not self._width_given and not _writes_to_terminal(self):
            return ConsoleDimensions(PIPE_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size
        self._width_given = True

    @property
    def width(self) -> int:
        return self.size.width

    @width.setter
    def width(self, width: int) -> None:
        self._width, self._width_given = width, True


def _writes_to_terminal(con: Console) -> bool:
    isatty = getattr(con.file, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
