"""``alearn webhook``: the receiver that turns Label Studio's hints into debounced pulls."""

from __future__ import annotations

from typing import Any

import click

from alearn.cli.common import Context, console, pass_ctx, redis_connection


@click.group("webhook")
def webhook() -> None:
    """The webhook receiver: Label Studio's hints become debounced pulls."""


def _webhook_secret(ctx: Context) -> str:
    secret = ctx.settings.webhook_secret
    if secret is None or not secret.get_secret_value():
        raise click.UsageError("set ALEARN_WEBHOOK_SECRET to a long random string first.")
    return secret.get_secret_value()


@webhook.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8800, show_default=True)
@pass_ctx
def webhook_serve(ctx: Context, host: str, port: int) -> None:
    """Serve POST /webhook; each accepted call enqueues a debounced pull."""
    from labelstudio.webhook import create_app, serve
    from workers.enqueue import enqueue_pull

    project, conn = ctx.project, redis_connection(ctx)

    def on_event(_event: dict[str, Any]) -> None:
        enqueue_pull(project, conn)

    app = create_app(_webhook_secret(ctx), on_event)
    console.print(f"Webhook receiver on http://{host}:{port}/webhook")
    serve(app, host=host, port=port)


@webhook.command("register")
@click.option("--url", required=True, help="Where Label Studio reaches the receiver, "
              "e.g. http://127.0.0.1:8800/webhook.")
@pass_ctx
def webhook_register(ctx: Context, url: str) -> None:
    """Register the receiver in the project's Label Studio project (idempotent)."""
    from labelstudio.client import connect_label_studio
    from labelstudio.webhook import register_webhook

    ls_project = ctx.project.store.get_meta("ls_project_id")
    if ls_project is None:
        raise click.UsageError("no Label Studio project yet: start a round first.")
    with connect_label_studio(ctx.settings) as client:
        hook = register_webhook(client, int(ls_project), url, _webhook_secret(ctx))
    console.print(f"Webhook {hook} sends annotation events to {url}.")
