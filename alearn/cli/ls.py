"""``alearn ls``: a local Label Studio (development, demo) and the team's accounts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from alearn import connection
from alearn.cli.common import Context, json_option, pass_ctx, print_json, print_table


@click.group("ls")
def ls_group() -> None:
    """Label Studio: a local server (development, demo) and annotator accounts."""


def _ls_data_dir(ctx: Context) -> Path:
    return ctx.project.data_dir / "labelstudio"


@ls_group.command("up")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              envvar="ALEARN_LS_PORT", show_envvar=True, help="Port on 127.0.0.1.")
@click.option("--allow-webhook-host", "allow_hosts", multiple=True, metavar="HOST",
              help="An address Label Studio may call: the webhook receiver's, best one of "
                   "its own such as 127.0.0.2 (the whole address is allowed); SSRF "
                   "protection keeps every other private or local address out.")
@json_option
@pass_ctx
def ls_up(ctx: Context, port: int, allow_hosts: tuple[str, ...], as_json: bool) -> None:
    """Start a local Label Studio (loopback only) and set this project up in it."""
    from labelstudio.client import LSClient
    from labelstudio.projects import ensure_project
    from labelstudio.server import start_server
    from labelstudio.server_security import ADMIN_FILE, admin_credentials, local_document_root

    project, data_dir = ctx.project, _ls_data_dir(ctx)
    connection.check_outside(project.data_dir, project.image_root)  # before anything starts
    creds = admin_credentials(data_dir)
    # a bar with the time left (from the last start) on a terminal; never with --json
    info = start_server(data_dir, image_root=project.image_root, port=port,
                        username=creds["email"], password=creds["password"],
                        token=creds["token"], allow_hosts=allow_hosts,
                        progress=not as_json and sys.stderr.isatty())
    with LSClient(info.url, creds["token"]) as client:
        ls_project = ensure_project(project.store, client, project.config, project.image_root,
                                    document_root=local_document_root(data_dir))
    stored = connection.save(project.data_dir, info.url, creds["token"],
                             image_root=project.image_root)
    out = {"url": info.url, "pid": info.pid, "ls_project_id": ls_project,
           "project_url": f"{info.url}/projects/{ls_project}/", "email": creds["email"],
           "credentials_file": str(data_dir / ADMIN_FILE),
           "connection_dir": str(stored.token_file.parent)}
    if as_json:
        print_json(out)
        return
    click.echo(f"Label Studio is up at {info.url} (pid {info.pid}); project: "
               f"{out['project_url']}\nLog in as {creds['email']} with password "
               f"{creds['password']} (kept in {out['credentials_file']}).")
    _say_stored(stored.token_file.parent)


def _say_stored(where: Path) -> None:
    """Where the connection is kept, and what overrides it."""
    from alearn.config import Settings

    click.echo(f"The URL and the API token are stored for this project in {where} (mode "
               "0600): every alearn command and worker started in this project uses them, "
               "no exports needed. ALEARN_LS_URL and ALEARN_LS_TOKEN (or ALEARN_LS_TOKEN_FILE) "
               "override them.")
    overridden = [name for name, field in (("ALEARN_LS_URL", "ls_url"),
                                           ("ALEARN_LS_TOKEN", "ls_token"),
                                           ("ALEARN_LS_TOKEN_FILE", "ls_token_file"))
                  if field in Settings.load().model_fields_set]  # the environment's
    if overridden:
        click.echo(f"Note: {' and '.join(overridden)} set in this environment override the "
                   "stored connection here; unset them to use it.")


@ls_group.command("connect")
@click.argument("url")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A file holding the API token ('-' reads it from stdin). Without it, the "
                   "token is asked for (hidden), or read from stdin when that is not a "
                   "terminal. The token is never taken on the command line.")
@json_option
@pass_ctx
def ls_connect(ctx: Context, url: str, token_file: Path | None, as_json: bool) -> None:
    """Use an existing Label Studio at URL: checks that it accepts the token (an admin's
    API token), then stores the URL and the token for this project (mode 0600)."""
    from alearn.config import check_ls_url
    from labelstudio.client import LSClient

    try:
        url = check_ls_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from None
    token = _read_token(token_file)
    with LSClient(url, token) as client:
        me = client.whoami()
    stored = connection.save(ctx.project.data_dir, url, token,
                             image_root=ctx.project.image_root)
    out = {"url": url, "user": me["email"], "connection_dir": str(stored.token_file.parent)}
    if as_json:
        print_json(out)
        return
    click.echo(f"Label Studio at {url} accepts the token (user {me['email']}).")
    _say_stored(stored.token_file.parent)


def _read_token(token_file: Path | None) -> str:
    """The token from ``--token-file`` (or stdin with '-'), else a hidden prompt on a
    terminal, else stdin."""
    from alearn.files import read_regular_file

    if token_file is not None and str(token_file) != "-":
        try:
            raw = read_regular_file(token_file, 64 * 1024, limit="64 KiB for a token file")
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise click.BadParameter(f"{token_file}: {why}.", param_hint="--token-file") \
                from None
        text, where = raw.decode("utf-8", "replace"), f"--token-file {token_file}"
    elif token_file is None and sys.stdin.isatty():
        text, where = click.prompt("Label Studio API token", hide_input=True), "the prompt"
    else:
        text, where = sys.stdin.read(64 * 1024), "stdin"
    token = text.strip()
    if not token or "\n" in token:
        raise click.UsageError(f"no token in {where}: give one line, an admin's API token "
                               "(Label Studio: Account & Settings > Access Token).")
    return token


@ls_group.command("disconnect")
@json_option
@pass_ctx
def ls_disconnect(ctx: Context, as_json: bool) -> None:
    """Forget this project's stored Label Studio URL and token."""
    where = connection.folder(ctx.project.data_dir)
    forgot = connection.forget(ctx.project.data_dir)
    if as_json:
        print_json({"forgotten": forgot, "connection_dir": str(where)})
    elif forgot:
        click.echo(f"Forgot the stored Label Studio connection ({where}). Store one with "
                   "'alearn ls up' or 'alearn ls connect URL', or set ALEARN_LS_URL and "
                   "ALEARN_LS_TOKEN.")
    else:
        click.echo("No Label Studio connection is stored for this project.")


@ls_group.command("down")
@json_option
@pass_ctx
def ls_down(ctx: Context, as_json: bool) -> None:
    """Stop this project's local Label Studio (its stored connection is kept)."""
    from labelstudio.server import stop_server

    stopped = stop_server(_ls_data_dir(ctx))
    if as_json:
        print_json({"stopped": stopped,
                    "connection_kept": connection.read(ctx.project.data_dir) is not None})
        return
    click.echo("Label Studio stopped." if stopped else "No local Label Studio was running.")
    if connection.read(ctx.project.data_dir) is not None:
        click.echo("The stored connection is kept: 'alearn ls up' starts the server again "
                   "('alearn ls disconnect' forgets it).")


@ls_group.command("status")
@json_option
@pass_ctx
def ls_status(ctx: Context, as_json: bool) -> None:
    """Is this project's local Label Studio running?"""
    from labelstudio.server import server_status

    info = server_status(_ls_data_dir(ctx))
    stored = connection.read(ctx.project.data_dir)
    out = {"running": info is not None, "url": info and info.url, "pid": info and info.pid,
           "stored_url": stored and stored.url}
    if as_json:
        print_json(out)
        return
    click.echo(f"running at {info.url} (pid {info.pid})" if info else "not running")
    if stored is not None:
        click.echo(f"stored connection: {stored.url} (in {stored.token_file.parent})")


@ls_group.group("users")
def ls_users() -> None:
    """The team: Label Studio accounts and the project's roster (only they label)."""


def _admin_token(ctx: Context, url: str) -> str:
    """The admin token for ``url``: ALEARN_LS_TOKEN, else the stored one (only for its own
    URL), else the local server's."""
    settings = ctx.project.settings
    if (settings.ls_token is not None or settings.ls_token_file is not None
            or settings.ls_url == url.rstrip("/")):
        token = settings.label_studio_token()
        if token:
            return token
    from labelstudio.server import server_status
    from labelstudio.server_security import ADMIN_FILE, admin_credentials

    data_dir = _ls_data_dir(ctx)
    local = server_status(data_dir)
    if local is not None and local.url.rstrip("/") == url.rstrip("/") and (
            data_dir / ADMIN_FILE).exists():
        return admin_credentials(data_dir)["token"]
    raise click.UsageError(f"no admin token for {url}: store one with 'alearn ls connect "
                           f"{url}', set ALEARN_LS_TOKEN (an admin's token), or start the "
                           "local server with 'alearn ls up'.")


@ls_users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(("annotator", "reviewer")), default="annotator",
              show_default=True, help="Annotators' votes count; reviewers decide adjudication.")
@click.option("--existing", is_flag=True,
              help="Only put an existing Label Studio account (NAME is its email) on the roster.")
@click.option("--password", default=None, help="At least 8 characters; generated if omitted.")
@click.option("--url", default=None,
              help="Label Studio URL (default: this project's local server, else ALEARN_LS_URL).")
@json_option
@pass_ctx
def ls_users_add(ctx: Context, name: str, role: str, existing: bool, password: str | None,
                 url: str | None, as_json: bool) -> None:
    """Add NAME (a name or an email) to the team: a Label Studio account made through a
    one-time invite (sign-up is closed), and a place on the project's roster. Prints how
    to log in, once."""
    from alearn.team import add_member
    from labelstudio.annotators import annotator_email, invite_annotator, new_password
    from labelstudio.server import server_status

    email = annotator_email(name)
    if existing:
        add_member(ctx.project.store, email, role)
        out: dict[str, Any] = {"email": email, "role": role}
        print_json(out) if as_json else click.echo(f"{email} is on the roster as {role}.")
        return
    if url is None:
        local = server_status(_ls_data_dir(ctx))
        url = local.url if local else ctx.project.settings.ls_url
    if password is not None and len(password) < 8:
        raise click.BadParameter("must have at least 8 characters.", param_hint="--password")
    password = password or new_password()
    who = invite_annotator(url, _admin_token(ctx, url), email, password)
    add_member(ctx.project.store, who.email, role)
    out = {"login_url": f"{url.rstrip('/')}/user/login/", "email": who.email,
           "password": password, "user_id": who.user_id, "role": role}
    if as_json:
        print_json(out)
    else:
        click.echo(f"{role.capitalize()} account ready and on the roster. Log in at "
                   f"{out['login_url']}\n  email:    {who.email}\n  password: {password}\n"
                   "(shown once: alearn keeps no copy of it)")


@ls_users.command("list")
@json_option
@pass_ctx
def ls_users_list(ctx: Context, as_json: bool) -> None:
    """The project's roster: whose votes and decisions count."""
    from alearn.team import roster

    rows = [{"email": e, "role": r} for e, r in roster(ctx.project.store).items()]
    if as_json:
        print_json(rows)
    elif rows:
        print_table("Roster", rows, ["email", "role"])
    else:
        click.echo("The roster is empty: no vote counts. Add people with 'alearn ls users "
                   "add NAME'.")


@ls_users.command("remove")
@click.argument("email")
@json_option
@pass_ctx
def ls_users_remove(ctx: Context, email: str, as_json: bool) -> None:
    """Take EMAIL off the roster; their votes are set aside from the next pull on."""
    from alearn.team import remove_member

    if not remove_member(ctx.project.store, email):
        raise click.BadParameter(f"{email} is not on the roster ('alearn ls users list').",
                                 param_hint="EMAIL")
    if as_json:
        print_json({"email": email, "removed": True})
        return
    click.echo(f"{email} is off the roster; their votes no longer count.")
