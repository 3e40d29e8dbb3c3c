"""Serving an ASGI application with uvicorn inside an anyio task group: the dashboard and a
worker's metrics endpoint. durable parses no HTTP itself.

:func:`serve_asgi` binds the socket first (a port in use is an ``OSError`` at once, and port 0
picks a free one, handed to ``task_status.started``), serves until cancelled, then shuts the
server down gracefully: open responses (a live event stream included) get ``grace_s`` seconds.
It never touches the process's signal handlers (uvicorn's own would take SIGTERM from a worker's
drain and Ctrl-C from the CLI), and it configures no logging: uvicorn's loggers are the
application's to set up.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    ASGIApp = Callable[
        [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
        Awaitable[None],
    ]

#: How long open responses get to finish once the server is told to stop.
GRACE_S = 1.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when the host is); ``OSError`` if it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host.strip("[]"), port), family=family, backlog=128)


async def serve_asgi(
    app: ASGIApp,
    sock: socket.socket,
    *,
    grace_s: float = GRACE_S,
    root_path: str = "",
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the bound ``sock`` until cancelled; ``task_status`` gets the port."""
    import uvicorn  # the extras' dependency: imported only when serving

    listening = anyio.Event()

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the process's signals stay with the worker and the CLI

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            listening.set()

    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        ws="none",
        root_path=root_path,
        timeout_graceful_shutdown=max(1, math.ceil(grace_s)),
    )
    server = _Server(config)
    port: int = sock.getsockname()[1]
    done = anyio.Event()

    async def run() -> None:
        try:
            with anyio.CancelScope(shield=True):  # stopped by should_exit, gracefully
                await server.serve(sockets=[sock])
        finally:
            done.set()
            listening.set()

    with sock:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await listening.wait()
            task_status.started(port)
            try:
                await done.wait()
            finally:
                server.should_exit = True
                with anyio.CancelScope(shield=True):
                    await done.wait()
