"""``alearn ls``: a local Label Studio (development, demo) and the team's accounts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from alearn.cli.common import Context, console, json_option, pass_ctx, print_json, print_table


@click.group("ls")
def ls_group() -> None:
    """Label Studio: a local server (development, demo) and annotator accounts."""


def _ls_data_dir(ctx: Context) -> Path:
    return ctx.project.data_dir / "labelstudio"


@ls_group.command("up")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="Port on 127.0.0.1.")
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
    creds = admin_credentials(data_dir)
    with console.status("Starting Label Studio (30-90 s the first time)..."):
        info = start_server(data_dir, image_root=project.image_root, port=port,
                            username=creds["email"], password=creds["password"],
                            token=creds["token"], allow_hosts=allow_hosts)
    with LSClient(info.url, creds["token"]) as client:
        ls_project = ensure_project(project.store, client, project.config, project.image_root,
                                    document_root=local_document_root(data_dir))
    out = {"url": info.url, "pid": info.pid, "ls_project_id": ls_project,
           "project_url": f"{info.url}/projects/{ls_project}/", "email": creds["email"],
           "credentials_file": str(data_dir / ADMIN_FILE)}
    if as_json:
        print_json(out)
        return
    click.echo(f"Label Studio is up at {info.url} (pid {info.pid}); project: "
               f"{out['project_url']}\nLog in as {creds['email']} with password "
               f"{creds['password']} (kept in {out['credentials_file']}).\n"
               "For alearn commands and workers in this shell:\n"
               f"  export ALEARN_LS_URL={info.url}\n  export ALEARN_LS_TOKEN={creds['token']}")


@ls_group.command("down")
@pass_ctx
def ls_down(ctx: Context) -> None:
    """Stop this project's local Label Studio."""
    from labelstudio.server import stop_server

    stopped = stop_server(_ls_data_dir(ctx))
    click.echo("Label Studio stopped." if stopped else "No local Label Studio was running.")


@ls_group.command("status")
@json_option
@pass_ctx
def ls_status(ctx: Context, as_json: bool) -> None:
    """Is this project's local Label Studio running?"""
    from labelstudio.server import server_status

    info = server_status(_ls_data_dir(ctx))
    out = {"running": info is not None, "url": info and info.url, "pid": info and info.pid}
    if as_json:
        print_json(out)
    else:
        click.echo(f"running at {info.url} (pid {info.pid})" if info else "not running")


@ls_group.group("users")
def ls_users() -> None:
    """The team: Label Studio accounts and the project's roster (only they label)."""


def _admin_token(ctx: Context, url: str) -> str:
    """The admin token for ``url``: ALEARN_LS_TOKEN, else the local server's."""
    token = ctx.settings.label_studio_token()
    if token:
        return token
    from labelstudio.server import server_status
    from labelstudio.server_security import ADMIN_FILE, admin_credentials

    data_dir = _ls_data_dir(ctx)
    local = server_status(data_dir)
    if local is not None and local.url.rstrip("/") == url.rstrip("/") and (
            data_dir / ADMIN_FILE).exists():
        return admin_credentials(data_dir)["token"]
    raise click.UsageError(f"no admin token for {url}: set ALEARN_LS_TOKEN (an admin's "
                           "token), or start the local server with 'alearn ls up'.")


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
        url = local.url if local else ctx.settings.ls_url
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
@pass_ctx
def ls_users_remove(ctx: Context, email: str) -> None:
    """Take EMAIL off the roster; their votes are set aside from the next pull on."""
    from alearn.team import remove_member

    if not remove_member(ctx.project.store, email):
        raise click.BadParameter(f"{email} is not on the roster ('alearn ls users list').",
                                 param_hint="EMAIL")
    click.echo(f"{email} is off the roster; their votes no longer count.")
