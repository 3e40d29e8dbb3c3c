"""``durable dashboard``: the console (:func:`durable.dashboard.app`) served by uvicorn.

On a loopback address the server also refuses a ``Host`` that is not a loopback name, so a
DNS-rebinding page cannot talk to it; mounted in your own application, your server's host
checks apply instead.
"""

from __future__ import annotations

import ipaddress

import anyio
import anyio.abc
from starlette.types import ASGIApp, Receive, Scope, Send

from durable.asgi import bind, serve_asgi
from durable.client import Client
from durable.dashboard.web import Authorize, app
from durable.protocol.log import get_logger

__all__ = ["serve"]

log = get_logger()

_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


async def serve(
    client: Client,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    read_only: bool = False,
    authorize: Authorize | None = None,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the console on ``host:port`` until cancelled (``port=0`` picks a free port;
    ``task_status.started`` receives the port). Every database call goes through ``client``.
    A port that cannot be bound raises ``OSError`` before anything is served."""
    web: ASGIApp = app(client, read_only=read_only, authorize=authorize)
    if is_loopback(host):
        web = LoopbackHosts(web)
    sock = bind(host, port)
    actual_port = sock.getsockname()[1]
    log.info("dashboard.started", host=host, port=actual_port, read_only=read_only)
    try:
        await serve_asgi(web, sock, task_status=task_status)
    finally:
        log.info("dashboard.stopped", host=host, port=actual_port)


class LoopbackHosts:
    """Answers 403 to a request whose ``Host`` is not a loopback name or address."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if host and not is_loopback(name):
                body = (
                    f"403: host {host[:100]!r} refused: the dashboard listens on loopback only — "
                    "open it as localhost or 127.0.0.1\n"
                ).encode()
                is_api = scope["path"].removeprefix(scope.get("root_path", "")).startswith("/api/")
                if is_api:
                    import orjson

                    body = orjson.dumps({"error": body.decode()[5:].strip()})
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (
                                b"content-type",
                                b"application/json" if is_api else b"text/plain; charset=utf-8",
                            ),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
