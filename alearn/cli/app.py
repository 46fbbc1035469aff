"""The root ``alearn`` group, its global options, and ``main``: one line per failure.

The command groups live in their own modules and are registered here with
``add_command``. The CLI is the composition root: the only part of ``alearn/`` that may
import ``workers`` or ``labelstudio``, and it does so inside the commands, so that
``alearn --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from alearn.cli.common import Context, err_console
from alearn.cli.doctor import doctor
from alearn.cli.export import export_cmd
from alearn.cli.ls import ls_group
from alearn.cli.project import embed_cmd, ingest_cmd, init
from alearn.cli.report import agreement_cmd, report_cmd, status
from alearn.cli.round import round_group
from alearn.cli.webhook import webhook
from alearn.cli.worker import worker
from alearn.exceptions import AlearnError

VERBOSE = 0


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--project",
    "project_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="ALEARN_PROJECT",
    help="Project directory (default: this folder or the nearest parent with alearn.toml).",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(click_ctx: click.Context, project_dir: Path | None, verbose: int) -> None:
    """alearn: active learning with people in the loop, for image classification."""
    global VERBOSE
    VERBOSE = verbose
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    click_ctx.obj = Context(project_dir)
    click_ctx.call_on_close(click_ctx.obj.close)


for _command in (init, ingest_cmd, embed_cmd, round_group, ls_group, status, agreement_cmd,
                 report_cmd, export_cmd, worker, webhook, doctor):
    cli.add_command(_command)


def _one_line(text: str) -> str:
    """The first line of a message (the rest, e.g. a log tail, only with -v)."""
    first, _, rest = str(text).strip().partition("\n")
    return first + (" (run with -v for details)" if rest.strip() and not VERBOSE else "")


def _explain(exc: BaseException) -> str | None:
    """One line for a failure outside alearn's own errors, or None if unexpected."""
    from redis.exceptions import RedisError
    from sqlalchemy.exc import SQLAlchemyError

    from alearn.config import safe_url

    if isinstance(exc, UnicodeDecodeError):
        return (f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}). Save it as "
                "UTF-8 and retry.")
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return (f"cannot use{where}: {exc.strerror or exc}. Check the path and its "
                "permissions, or choose another.")
    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None)
        return (f"the database failed: {_one_line(str(orig or exc))[:300]}. Check "
                "ALEARN_DATABASE_URL and that the database is running, then retry.")
    if isinstance(exc, RedisError):
        return (f"Redis failed: {safe_url(str(exc))[:300]}. Check ALEARN_REDIS_URL and that "
                "Redis is running, then retry.")
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure is one line on stderr (what was wrong, what to do) and
    a non-zero exit; the traceback only with -v."""
    try:
        cli.main(args=argv, prog_name="alearn", standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("Aborted.")
        sys.exit(130)
    except click.UsageError as exc:  # one line, and where to read more
        where = exc.ctx.command_path if exc.ctx is not None else "alearn"
        _print_error(f"{_one_line(exc.format_message())} (see '{where} --help')")
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _print_error(_one_line(exc.format_message()))
        sys.exit(exc.exit_code)
    except AlearnError as exc:
        if VERBOSE:
            raise
        _print_error(_one_line(str(exc)))
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("Interrupted.")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no trace
        if VERBOSE:
            raise
        text = _explain(exc)
        if text is None:
            text = (f"unexpected {type(exc).__name__}: {_one_line(str(exc))[:300]}. Run the "
                    "command again with -v for the traceback, and report it.")
        _print_error(text)
        sys.exit(1)


def _print_error(text: str) -> None:
    from rich.markup import escape

    err_console.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
