"""The webhook receiver: Label Studio says "something changed", we enqueue a pull.

Nothing slow runs inside the request: ``on_event`` (given by the composition root)
only enqueues a debounced pull and the receiver answers 202 at once. Webhooks are hints:
Label Studio has no "task completed" event and ANNOTATIONS_DELETED does not name its
task, so the pull reconciles everything anyway.

Label Studio sends the shared secret as a custom header set at registration,
``Authorization: Bearer <secret>``; ``X-Alearn-Secret: <secret>`` is accepted too.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, Request, jsonify, request

from alearn.exceptions import ConfigError
from labelstudio.client import LSClient

logger = logging.getLogger(__name__)

#: The events that can change a task's annotations.
EVENTS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")


def _presented_secret(req: Request) -> str:
    auth = req.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer "):].strip()
    return req.headers.get("X-Alearn-Secret", "").strip()


#: Label Studio's annotation events are a few kB; anything past this is refused (413).
MAX_BODY_BYTES = 1 << 20


def serve(app: Flask, host: str = "127.0.0.1", port: int = 8800) -> None:
    """Serve the receiver with waitress, a production WSGI server (bounded bodies, no
    debugger), on loopback unless told otherwise."""
    from waitress import serve as waitress_serve

    waitress_serve(app, host=host, port=port, max_request_body_size=MAX_BODY_BYTES,
                   threads=4, ident="alearn-webhook")


def create_app(secret: str, on_event: Callable[[dict[str, Any]], None]) -> Flask:
    """A Flask app with ``POST /webhook`` (secret-checked) and ``GET /health``."""
    if not secret:
        raise ConfigError(
            "the webhook secret is empty. Set ALEARN_WEBHOOK_SECRET to a long random string."
        )
    expected = secret.encode("utf-8")
    app = Flask("alearn_webhook")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES  # larger bodies get 413

    @app.post("/webhook")
    def webhook() -> Any:
        given = _presented_secret(request).encode("utf-8")
        if not given or not hmac.compare_digest(given, expected):
            logger.warning("webhook refused: bad or missing secret from %s", request.remote_addr)
            return jsonify(error="bad or missing secret"), 401
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict):
            return jsonify(error="expected a JSON object"), 400
        try:
            on_event(payload)
        except Exception:  # answer, do not crash the receiver; the periodic pull catches up
            logger.exception("webhook handler failed action=%s", payload.get("action"))
            return jsonify(error="could not enqueue the event; it will be caught up"), 503
        logger.info("webhook accepted action=%s", payload.get("action"))
        return jsonify(accepted=True), 202

    @app.get("/health")
    def health() -> Any:
        return jsonify(status="ok")

    return app


def register_webhook(client: LSClient, ls_project_id: int, url: str, secret: str) -> int:
    """Register (or repair) the project's webhook to ``url``; return its id. Idempotent."""
    if not secret:
        raise ConfigError("the webhook secret is empty. Set ALEARN_WEBHOOK_SECRET.")
    wanted = {
        "headers": {"Authorization": f"Bearer {secret}"},
        "actions": list(EVENTS),
        "is_active": True,
        "send_payload": True,
        "send_for_all_actions": False,
    }
    for hook in client.webhooks(ls_project_id):
        if hook["url"] == url and hook["project"] == ls_project_id:
            if (
                hook["headers"] != wanted["headers"]
                or sorted(hook["actions"]) != sorted(EVENTS)
                or not hook["is_active"]
            ):
                client.update_webhook(hook["id"], url=url, **wanted)
                logger.info("webhook updated id=%s ls_project_id=%s", hook["id"], ls_project_id)
            return int(hook["id"])
    hook_id = client.create_webhook(ls_project_id, url, **wanted)
    logger.info("webhook registered id=%s ls_project_id=%s url=%s", hook_id, ls_project_id, url)
    return hook_id
