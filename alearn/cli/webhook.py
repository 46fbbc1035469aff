"""``alearn webhook``: the receiver that turns Label Studio's hints into debounced pulls,
and the live status page it serves (``status-url`` prints its address with the token)."""

from __future__ import annotations

from typing import Any

import click

from alearn.cli.common import Context, console, json_option, pass_ctx, print_json, redis_connection


@click.group("webhook")
def webhook() -> None:
    """The webhook receiver (Label Studio's hints become debounced pulls) and the live
    status page, /status, on the same server: 'alearn webhook status-url' prints its
    address with the read token."""


def _webhook_secret(ctx: Context) -> str:
    secret = ctx.settings.webhook_secret
    if secret is None or not secret.get_secret_value():
        raise click.UsageError("set ALEARN_WEBHOOK_SECRET to a long random string first.")
    return secret.get_secret_value()


def _status_token(ctx: Context, *, rotate: bool = False) -> str:
    from alearn.connection import status_token

    project = ctx.project
    return status_token(project.data_dir, rotate=rotate, image_root=project.image_root)


def _base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    return f"http://{shown}:{port}"


@webhook.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8800, show_default=True)
@pass_ctx
def webhook_serve(ctx: Context, host: str, port: int) -> None:
    """Serve POST /webhook (an accepted call enqueues a pull at once, unless one is
    already waiting to start) and the live
    status page GET /status: the running round's figures, refreshed as votes arrive,
    read-only, behind the project's read token. Open the page with the address that
    'alearn webhook status-url' prints (it holds the token)."""
    from alearn.connection import STATUS_TOKEN_FILE, folder, read_token
    from labelstudio.status_page import add_status_page
    from labelstudio.webhook import create_app, serve
    from workers.enqueue import enqueue_pull

    project, conn = ctx.project, redis_connection(ctx)

    def on_event(_event: dict[str, Any]) -> None:
        enqueue_pull(project, conn)

    app = create_app(_webhook_secret(ctx), on_event)
    _status_token(ctx)  # made now if there is none, so that status-url can print it
    token_file = folder(project.data_dir) / STATUS_TOKEN_FILE
    add_status_page(app, project, lambda: read_token(token_file))
    base = _base_url(host, port)
    console.print(f"Webhook receiver on {base}/webhook; live status page on {base}/status "
                  "(open the address 'alearn webhook status-url' prints: it holds the "
                  "read token).")
    serve(app, host=host, port=port)


@webhook.command("status-url")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Where a browser reaches the receiver.")
@click.option("--port", type=click.IntRange(1, 65535), default=8800, show_default=True)
@click.option("--rotate", is_flag=True, help="Make a new read token first (the old address "
              "stops working at once).")
@json_option
@pass_ctx
def webhook_status_url(ctx: Context, host: str, port: int, rotate: bool,
                       as_json: bool) -> None:
    """Print the address of the live status page, with the project's read token (made on
    first use, kept 0600 in data/connection/). Anyone with it can read the figures."""
    from urllib.parse import quote

    token = _status_token(ctx, rotate=rotate)
    address = f"{_base_url(host, port)}/status?token={quote(token, safe='')}"
    print_json({"status_url": address}) if as_json else click.echo(address)


@webhook.command("register")
@click.option("--url", required=True, help="Where Label Studio reaches the receiver, "
              "e.g. http://127.0.0.1:8800/webhook.")
@json_option
@pass_ctx
def webhook_register(ctx: Context, url: str, as_json: bool) -> None:
    """Register the receiver in the project's Label Studio project (idempotent)."""
    from labelstudio.client import connect_label_studio
    from labelstudio.webhook import register_webhook

    ls_project = ctx.project.store.get_meta("ls_project_id")
    if ls_project is None:
        raise click.UsageError("no Label Studio project yet: start a round first.")
    with connect_label_studio(ctx.settings) as client:
        hook = register_webhook(client, int(ls_project), url, _webhook_secret(ctx))
    if as_json:
        print_json({"webhook_id": hook, "url": url})
        return
    console.print(f"Webhook {hook} sends annotation events to {url}.")
