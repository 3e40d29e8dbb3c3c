"""The dashboard's HTTP server: routes, the CSRF guard, security headers, and :func:`serve`.

Routes::

    GET  /                              the overview page (queues, failed work)
    GET  /tasks/<uuid>                  a task's page
    GET  /static/<file>                 app.js, app.css, favicon.svg
    GET  /api/overview                  the overview's JSON
    GET  /api/tasks/<uuid>              a task's JSON
    POST /api/tasks/<uuid>/retry        retry a failed or cancelled task (and revive the
                                        dependents its end cancelled)
    POST /api/tasks/<uuid>/cancel       cancel a task that has not finished

The pages are a small HTML shell; ``app.js`` polls the JSON every second and renders it with
``textContent`` (never ``innerHTML``). A POST must carry the server's random token in
``X-CSRF-Token`` and, when the browser sends ``Origin``, come from the page's own origin. With
``read_only`` every POST is refused and no button is drawn. When the server listens on a loopback
address it also refuses a ``Host`` that is not a loopback name, so a DNS-rebinding page cannot
talk to it.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import re
import secrets
import time
import urllib.parse
import uuid
from collections.abc import Awaitable
from http import HTTPStatus
from importlib import resources

import anyio
import anyio.abc

from durable.client import Client
from durable.dashboard import views
from durable.dashboard.http import (
    ConnectionClosed,
    HttpError,
    Request,
    Response,
    encode_response,
    read_request,
)
from durable.protocol.errors import (
    DatabaseUnavailable,
    DurableError,
    InvalidArgument,
    InvalidState,
    TaskNotFound,
)
from durable.protocol.log import get_logger

__all__ = ["Dashboard", "serve"]

log = get_logger()

#: How long a client may take to send its request, and to take the response.
READ_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
#: Connections handled at once; more wait for a free slot.
MAX_CONNECTIONS = 64

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    # not no-referrer: under it a same-origin fetch POST sends "Origin: null"
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_STATIC_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

_TASK_PAGE_RE = re.compile(r"^/tasks/([^/]+)$")
_API_TASK_RE = re.compile(r"^/api/tasks/([^/]+)$")
_API_ACTION_RE = re.compile(r"^/api/tasks/([^/]+)/([^/]+)$")
_ACTIONS = ("retry", "cancel")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{csrf}">
<meta name="durable-read-only" content="{read_only}">
<title>{title} · durable</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body data-page="{page}" data-task-id="{task_id}">
<header class="bar">
<a class="brand" href="/">durable</a>
<nav><a href="/">Overview</a></nav>
<span class="spacer"></span>
{read_only_badge}<span id="live" class="live" title="updates every second">connecting…</span>
</header>
<main id="main"><noscript>The dashboard needs JavaScript.</noscript></main>
</body>
</html>
"""


class Dashboard:
    """Answers requests (many at once, up to :data:`MAX_CONNECTIONS`); :func:`serve` feeds it
    connections."""

    def __init__(self, client: Client, *, host: str = "127.0.0.1", read_only: bool = False) -> None:
        self.client = client
        self.read_only = read_only
        self.csrf_token = secrets.token_urlsafe(32)
        self._loopback_only = _is_loopback(host)
        static = resources.files("durable.dashboard") / "static"
        self._static = {name: (static / name).read_bytes() for name in _STATIC_TYPES}
        self._limiter = anyio.CapacityLimiter(MAX_CONNECTIONS)

    # --- connections ----------------------------------------------------------------------------

    async def serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        """One request, one response, then close. Never raises (but for cancellation)."""
        async with self._limiter, stream:
            try:
                await self._serve_connection(stream)
            except Exception as exc:
                log.exception("dashboard.request_failed", error=str(exc), peer=_peer(stream))

    async def _serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        started = time.monotonic()
        request: Request | None = None
        try:
            with anyio.fail_after(READ_TIMEOUT_S):
                request = await read_request(stream)
        except (ConnectionClosed, TimeoutError, anyio.BrokenResourceError, OSError):
            return  # nothing (or not all) was sent: there is no one to answer
        except HttpError as exc:
            response = _error(exc.status, exc.message, json=False, allow=exc.allow)
        else:
            response = await self.respond(request)
        try:
            with anyio.fail_after(WRITE_TIMEOUT_S):
                await stream.send(encode_response(response, SECURITY_HEADERS))
        except (TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return  # the client went away
        log.debug(
            "dashboard.request",
            method=request.method if request else None,
            path=request.path if request else None,
            status=response.status.value,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    # --- requests -------------------------------------------------------------------------------

    async def respond(self, request: Request) -> Response:
        """The response to ``request``; an unexpected error becomes a 500 (and a log line)."""
        is_api = request.path.startswith("/api/")
        try:
            self._check_host(request)
            return await self._route(request)
        except HttpError as exc:
            return _error(exc.status, exc.message, json=is_api, allow=exc.allow)
        except Exception as exc:
            log.exception(
                "dashboard.request_failed",
                method=request.method,
                path=request.path,
                error=str(exc),
            )
            return _error(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                f"{type(exc).__name__}: the server failed (see its log)",
                json=is_api,
            )

    async def _route(self, request: Request) -> Response:
        path = request.path
        if path == "/":
            _allow(request, "GET")
            return self._page("overview", "Overview")
        if match := _TASK_PAGE_RE.match(path):
            _allow(request, "GET")
            task_id = _task_id(match[1])
            return self._page("task", f"Task {task_id}", task_id=task_id)
        if path.startswith("/static/"):
            _allow(request, "GET")
            return self._static_file(path.removeprefix("/static/"))
        if path == "/api/overview":
            _allow(request, "GET")
            return await _api(views.overview(self.client))
        if match := _API_TASK_RE.match(path):
            _allow(request, "GET")
            return await _api(views.task_detail(self.client, _task_id(match[1])))
        if (match := _API_ACTION_RE.match(path)) and match[2] in _ACTIONS:
            _allow(request, "POST")
            self._check_post(request)
            task_id = _task_id(match[1])
            action = self._retry if match[2] == "retry" else self._cancel
            return await _api(action(task_id))
        raise HttpError(HTTPStatus.NOT_FOUND, f"no page at {path[:200]!r}")

    def _page(self, page: str, title: str, *, task_id: uuid.UUID | None = None) -> Response:
        body = _PAGE.format(
            csrf="" if self.read_only else html.escape(self.csrf_token),
            read_only="1" if self.read_only else "0",
            title=html.escape(title),
            page=page,
            task_id=task_id or "",
            read_only_badge=(
                '<span class="badge read-only" id="read-only">read-only</span>'
                if self.read_only
                else ""
            ),
        )
        return Response(HTTPStatus.OK, body.encode(), "text/html; charset=utf-8")

    def _static_file(self, name: str) -> Response:
        if name not in self._static:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no static file {name[:100]!r}")
        return Response(HTTPStatus.OK, self._static[name], _STATIC_TYPES[name])

    # --- guards ---------------------------------------------------------------------------------

    def _check_host(self, request: Request) -> None:
        """On a loopback address, only loopback names: a rebound DNS name is not let in."""
        if not self._loopback_only:
            return
        host = request.header("host")
        if host is None:  # HTTP/1.0 without Host
            return
        if not _is_loopback(urllib.parse.urlsplit(f"//{host}").hostname or ""):
            raise HttpError(
                HTTPStatus.FORBIDDEN,
                f"host {host[:100]!r} refused: the dashboard listens on loopback only — "
                "open it as localhost or 127.0.0.1",
            )

    def _check_post(self, request: Request) -> None:
        if self.read_only:
            raise HttpError(HTTPStatus.FORBIDDEN, "read-only: this dashboard does not change tasks")
        token = request.header("x-csrf-token") or ""
        if not hmac.compare_digest(token.encode(), self.csrf_token.encode()):
            raise HttpError(
                HTTPStatus.FORBIDDEN,
                "missing or wrong X-CSRF-Token — reload the page and try again",
            )
        origin = request.header("origin")
        if origin is not None:
            parts = urllib.parse.urlsplit(origin)
            if parts.scheme not in ("http", "https") or parts.netloc != request.header("host"):
                raise HttpError(
                    HTTPStatus.FORBIDDEN,
                    f"cross-origin request refused (Origin {origin[:100]!r} is not this server)",
                )

    # --- actions --------------------------------------------------------------------------------

    async def _retry(self, task_id: uuid.UUID) -> views.Doc:
        before = await self.client.get_task(None, task_id)
        info = await self.client.retry(before.queue, task_id)
        after = await self.client.get_task(before.queue, task_id)
        log.info(
            "dashboard.task_retried",
            task_id=str(task_id),
            queue=before.queue,
            task_name=before.task_name,
            run_id=str(info.run_id),
            before=str(before.state),
            revived=[str(d.task_id) for d in info.revived],
        )
        return {
            "task_id": task_id,
            "action": "retry",
            "before": before.state,
            "after": after.state,
            "run_id": info.run_id,
            "attempt": info.attempt,
            "revived": [d.task_id for d in info.revived],
        }

    async def _cancel(self, task_id: uuid.UUID) -> views.Doc:
        before = await self.client.get_task(None, task_id)
        await self.client.cancel(before.queue, task_id)
        after = await self.client.get_task(before.queue, task_id)
        run_id = before.runs[-1].run_id if before.runs else None
        log.info(
            "dashboard.task_cancelled",
            task_id=str(task_id),
            queue=before.queue,
            task_name=before.task_name,
            run_id=str(run_id),
            before=str(before.state),
        )
        return {
            "task_id": task_id,
            "action": "cancel",
            "before": before.state,
            "after": after.state,
            "run_id": run_id,
        }


async def serve(
    client: Client,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    read_only: bool = False,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard on ``host:port`` until cancelled (``port=0`` picks a free port).

    ``task_status.started`` receives the port it listens on. Every database call goes through
    ``client``.
    """
    dashboard = Dashboard(client, host=host, read_only=read_only)
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        actual_port = listener.extra(anyio.abc.SocketAttribute.local_port)
        log.info("dashboard.started", host=host, port=actual_port, read_only=read_only)
        task_status.started(actual_port)
        try:
            await listener.serve(dashboard.serve_connection)
        finally:
            log.info("dashboard.stopped", host=host, port=actual_port)


# --- helpers --------------------------------------------------------------------------------------


async def _api(work: Awaitable[object]) -> Response:
    """A JSON answer; a durable error becomes ``{"error": "<Class>: <message>"}``."""
    try:
        doc = await work
    except DurableError as exc:
        return _error(_error_status(exc), f"{type(exc).__name__}: {exc}", json=True)
    return Response(HTTPStatus.OK, views.to_json(doc), "application/json")


def _error_status(exc: DurableError) -> HTTPStatus:
    if isinstance(exc, TaskNotFound):
        return HTTPStatus.NOT_FOUND
    if isinstance(exc, InvalidArgument):
        return HTTPStatus.BAD_REQUEST
    if isinstance(exc, DatabaseUnavailable):
        return HTTPStatus.SERVICE_UNAVAILABLE
    if isinstance(exc, InvalidState):
        return HTTPStatus.CONFLICT
    return HTTPStatus.CONFLICT


def _error(status: HTTPStatus, message: str, *, json: bool, allow: str | None = None) -> Response:
    headers = {"Allow": allow} if allow else {}
    if json:
        return Response(status, views.to_json({"error": message}), "application/json", headers)
    body = f"{status.value} {status.phrase}: {message}\n".encode()
    return Response(status, body, "text/plain; charset=utf-8", headers)


def _allow(request: Request, method: str) -> None:
    if request.method != method:
        raise HttpError(
            HTTPStatus.METHOD_NOT_ALLOWED,
            f"{request.method} {request.path[:200]} — only {method} is allowed here",
            allow=method,
        )


def _task_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(urllib.parse.unquote(text))
    except ValueError:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"not a task id (a UUID): {text[:100]!r}") from None


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _peer(stream: anyio.abc.SocketStream) -> str | None:
    try:
        address = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except anyio.TypedAttributeLookupError:
        return None
    return str(address)
