"""The ``alearn`` command line: one module per command group, over library calls.

``app`` holds the root group and ``main`` (the console script); ``common`` the context,
output helpers and shared options; ``project`` (init, ingest, embed), ``round``, ``ls``,
``report`` (status, agreement, report), ``export``, ``worker`` and ``webhook`` one
command group each. Each command builds the settings once, opens the project and calls
one library function. Results are tables, or JSON with ``--json``.
"""

from alearn.cli.app import cli, main

__all__ = ["cli", "main"]
