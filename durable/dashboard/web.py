"""The console as an ASGI application on Starlette: :func:`app` builds it, for ``durable
dashboard`` (:func:`durable.dashboard.serve`) or to mount inside your own application.

Routes (relative to where it is mounted)::

    GET  /  /tasks  /flow  /workers      the pages: overview, task browser, flow, workers
    GET  /tasks/<uuid>                    a task's page
    GET  /static/<file>                   app.js, app.css, favicon.svg, vendor/uPlot.*
    GET  /api/overview  /api/flow?window=hour|day  /api/workers
    GET  /api/tasks?filters               a page of the task browser
    GET  /api/tasks/<uuid>                a task, its runs, checkpoints and timeline
    GET  /api/events                      server-sent events: work arrived, tasks ended
    POST /api/tasks/<uuid>/<action>       retry, cancel, discard or replay one task
    POST /api/bulk                        the same in bulk: a dry-run preview, then the action
    POST /api/queues/<queue>/<pause|resume>   pause or resume claiming from a queue

The pages are small HTML shells; ``app.js`` renders the JSON with ``textContent`` (never
``innerHTML``) and refreshes when the event stream says something changed. Every response
carries the security headers (a CSP that allows no inline script). A POST must carry the app's
random token in ``X-CSRF-Token`` and, when the browser sends ``Origin``, come from the page's
own origin; with ``read_only`` every POST is refused and no button is drawn. ``authorize(request,
access)`` (``access`` is ``"read"`` or ``"act"``), when given, decides every request: False
answers 403, and it may raise Starlette's ``HTTPException`` itself (a 401, a redirect to your
login).
"""

from __future__ import annotations

import hmac
import html
import inspect
import secrets
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Literal

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from durable.client import Client
from durable.dashboard import bulk, events, views
from durable.protocol.errors import (
    DatabaseUnavailable,
    DurableError,
    InvalidArgument,
    InvalidQueueName,
    InvalidState,
    TaskNotFound,
)
from durable.protocol.log import get_logger

__all__ = ["Access", "Authorize", "app"]

log = get_logger()

Access = Literal["read", "act"]
#: ``authorize(request, access) -> bool`` (or an awaitable of it): may this request read, or act?
Authorize = Callable[[Request, Access], bool | Awaitable[bool]]

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
#: A POST's body (the bulk action's JSON) may be at most this long.
MAX_BODY_BYTES = 64 * 1024

_STATIC_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    "vendor/uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "vendor/uPlot.min.css": "text/css; charset=utf-8",
}
_ACTIONS = ("retry", "cancel", "discard", "replay")
_PAGES = {"overview": "Overview", "tasks": "Tasks", "flow": "Flow", "workers": "Workers"}

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{csrf}">
<meta name="durable-read-only" content="{read_only}">
<meta name="durable-root" content="{root}">
<title>{title} · durable</title>
<link rel="icon" href="{root}/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{root}/static/vendor/uPlot.min.css">
<link rel="stylesheet" href="{root}/static/app.css">
<script src="{root}/static/vendor/uPlot.iife.min.js" defer></script>
<script src="{root}/static/app.js" defer></script>
</head>
<body data-page="{page}" data-task-id="{task_id}">
<header class="bar">
<a class="brand" href="{root}/">durable</a>
<nav>{nav}</nav>
<span class="spacer"></span>
{read_only_badge}<span id="live" class="live" title="updated as work arrives and ends">\
connecting…</span>
</header>
<main id="main"><noscript>The console needs JavaScript.</noscript></main>
</body>
</html>
"""


def app(
    client: Client,
    *,
    authorize: Authorize | None = None,
    read_only: bool = False,
    max_event_streams: int = events.MAX_STREAMS,
) -> Starlette:
    """The console of the database ``client`` is connected to, as an ASGI application.

    Mount it anywhere (``Mount("/durable", app=durable.dashboard.app(client, authorize=...))``):
    its links follow the mount's path. Every database call goes through ``client``, which the
    caller opens and closes."""
    console = _Console(client, authorize=authorize, read_only=read_only)
    streams = events.EventStreams(client, limit=max_event_streams)
    routes = [
        Route("/", console.page("overview"), methods=["GET"]),
        Route("/tasks", console.page("tasks"), methods=["GET"]),
        Route("/flow", console.page("flow"), methods=["GET"]),
        Route("/workers", console.page("workers"), methods=["GET"]),
        Route("/tasks/{task_id}", console.task_page, methods=["GET"]),
        Route("/static/{name:path}", console.static, methods=["GET"]),
        Route("/api/overview", console.api_overview, methods=["GET"]),
        Route("/api/flow", console.api_flow, methods=["GET"]),
        Route("/api/workers", console.api_workers, methods=["GET"]),
        Route("/api/tasks", console.api_tasks, methods=["GET"]),
        Route("/api/tasks/{task_id}", console.api_task, methods=["GET"]),
        Route("/api/events", console.guarded("read", streams.respond), methods=["GET"]),
        Route("/api/tasks/{task_id}/{action}", console.api_action, methods=["POST"]),
        Route("/api/bulk", console.api_bulk, methods=["POST"]),
        Route("/api/queues/{queue}/{action}", console.api_queue, methods=["POST"]),
    ]
    web = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: _http_error,
            bulk.BadRequest: _bad_request,
            Exception: _server_error,
        },
    )
    web.state.console = console
    web.add_middleware(_SecurityHeaders)
    return web


class _Console:
    """The handlers, the guards and the token of one console."""

    def __init__(self, client: Client, *, authorize: Authorize | None, read_only: bool) -> None:
        self.client = client
        self.read_only = read_only
        self.csrf_token = secrets.token_urlsafe(32)
        self._authorize = authorize
        static = resources.files("durable.dashboard") / "static"
        self._static = {name: (static / name).read_bytes() for name in _STATIC_TYPES}

    # --- guards ---------------------------------------------------------------------------------

    async def check(self, request: Request, access: Access) -> None:
        """The authorization hook (if any), and for an action the CSRF token and the Origin."""
        if self._authorize is not None:
            allowed = self._authorize(request, access)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                raise HTTPException(403, f"not authorized to {access} here")
        if access == "act":
            self._check_post(request)

    def _check_post(self, request: Request) -> None:
        if self.read_only:
            raise HTTPException(403, "read-only: this dashboard does not change tasks")
        token = request.headers.get("x-csrf-token") or ""
        if not hmac.compare_digest(token.encode(), self.csrf_token.encode()):
            raise HTTPException(
                403, "missing or wrong X-CSRF-Token — reload the page and try again"
            )
        origin = request.headers.get("origin")
        if origin is not None:
            parts = urllib.parse.urlsplit(origin)
            if parts.scheme not in ("http", "https") or parts.netloc != request.headers.get("host"):
                raise HTTPException(
                    403,
                    f"cross-origin request refused (Origin {origin[:100]!r} is not this server)",
                )

    def guarded(
        self, access: Access, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            await self.check(request, access)
            return await handler(request)

        return endpoint

    # --- pages ----------------------------------------------------------------------------------

    def page(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            await self.check(request, "read")
            return self._page(request, name, _PAGES[name])

        return endpoint

    async def task_page(self, request: Request) -> Response:
        await self.check(request, "read")
        task_id = _task_id(request.path_params["task_id"])
        return self._page(request, "task", f"Task {task_id}", task_id=task_id)

    def _page(
        self, request: Request, page: str, title: str, *, task_id: uuid.UUID | None = None
    ) -> Response:
        root = html.escape(request.scope.get("root_path", "").rstrip("/"))
        nav = "".join(
            f'<a href="{root}/{"" if name == "overview" else name}"'
            f"{' class=current' if name == page else ''}>{label}</a>"
            for name, label in _PAGES.items()
        )
        body = _PAGE.format(
            csrf="" if self.read_only else html.escape(self.csrf_token),
            read_only="1" if self.read_only else "0",
            root=root,
            nav=nav,
            title=html.escape(title),
            page=page,
            task_id=task_id or "",
            read_only_badge=(
                '<span class="badge read-only" id="read-only">read-only</span>'
                if self.read_only
                else ""
            ),
        )
        return Response(body, media_type="text/html; charset=utf-8")

    async def static(self, request: Request) -> Response:
        await self.check(request, "read")
        name = request.path_params["name"]
        if name not in self._static:
            raise HTTPException(404, f"no static file {name[:100]!r}")
        return Response(self._static[name], media_type=_STATIC_TYPES[name])

    # --- reads ----------------------------------------------------------------------------------

    async def api_overview(self, request: Request) -> Response:
        await self.check(request, "read")
        return await _api(views.overview(self.client, paused=await self._paused()))

    async def api_flow(self, request: Request) -> Response:
        await self.check(request, "read")
        window = request.query_params.get("window", "hour")
        if window not in views.FLOW_WINDOWS:
            raise HTTPException(400, f"window must be one of: {', '.join(views.FLOW_WINDOWS)}")
        return await _api(views.flow(self.client, window))

    async def api_workers(self, request: Request) -> Response:
        await self.check(request, "read")
        return await _api(views.workers(self.client))

    async def api_tasks(self, request: Request) -> Response:
        await self.check(request, "read")
        filters = bulk.filters_from_query(request.query_params)
        return await _api(views.task_list(self.client, filters))

    async def api_task(self, request: Request) -> Response:
        await self.check(request, "read")
        return await _api(views.task_detail(self.client, _task_id(request.path_params["task_id"])))

    # --- actions --------------------------------------------------------------------------------

    async def api_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in _ACTIONS:
            raise HTTPException(404, f"no page at {request.url.path[:200]!r}")
        await self.check(request, "act")
        task_id = _task_id(request.path_params["task_id"])
        return await _api(bulk.act_on_one(self.client, task_id, bulk.Action(action)))

    async def api_bulk(self, request: Request) -> Response:
        await self.check(request, "act")
        body = await _body(request)
        return await _api(bulk.act_in_bulk(self.client, body))

    async def api_queue(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("pause", "resume"):
            raise HTTPException(404, f"no page at {request.url.path[:200]!r}")
        await self.check(request, "act")
        queue = request.path_params["queue"]

        async def act() -> views.Doc:
            if action == "pause":
                changed = await self.client.pause_queue(queue)
            else:
                changed = await self.client.resume_queue(queue)
            log.info("dashboard.queue_changed", queue=queue, action=action, changed=changed)
            return {"queue": queue, "action": action, "changed": changed}

        return await _api(act())

    async def _paused(self) -> frozenset[str]:
        """The paused queues."""
        return frozenset(paused.queue for paused in await self.client.list_paused_queues())


# --- responses ------------------------------------------------------------------------------------


def to_json(doc: Any) -> bytes:
    """Datetimes, enums and UUIDs as JSON (asyncpg's UUIDs are a subclass orjson does not know)."""
    return orjson.dumps(doc, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        to_json(doc), status_code=status, media_type="application/json", headers=headers
    )


async def _api(work: Awaitable[Any]) -> Response:
    """A JSON answer; a durable error becomes ``{"error": "<Class>: <message>"}``."""
    try:
        doc = await work
    except DurableError as exc:
        return _json({"error": f"{type(exc).__name__}: {exc}"}, _error_status(exc))
    except bulk.BadRequest as exc:
        return _json({"error": str(exc)}, 400)
    return _json(doc)


def _error_status(exc: DurableError) -> int:
    if isinstance(exc, TaskNotFound):
        return 404
    if isinstance(exc, InvalidArgument | InvalidQueueName):
        return 400
    if isinstance(exc, DatabaseUnavailable):
        return 503
    if isinstance(exc, InvalidState):
        return 409
    return 409


async def _http_error(request: Request, exc: Exception) -> Response:
    """Errors as JSON under /api/, as text elsewhere; a 404 and a 405 say what would work."""
    assert isinstance(exc, HTTPException)
    status, message = exc.status_code, exc.detail
    headers = dict(exc.headers or {})
    path = request.url.path
    if status == 404 and message == "Not Found":
        message = f"no page at {path[:200]!r}"
    if status == 405:
        allowed = headers.get("Allow", "")
        only = "POST" if "POST" in allowed else "GET"
        headers["Allow"] = only
        message = f"{request.method} {path[:200]} — only {only} is allowed here"
    if _is_api(request):
        return _json({"error": message}, status, headers)
    return PlainTextResponse(f"{status}: {message}\n", status_code=status, headers=headers)


async def _bad_request(request: Request, exc: Exception) -> Response:
    return await _http_error(request, HTTPException(400, str(exc)))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error(
        "dashboard.request_failed",
        method=request.method,
        path=request.url.path,
        error=str(exc),
        exc_info=exc,
    )
    message = f"{type(exc).__name__}: the server failed (see its log)"
    if _is_api(request):
        return _json({"error": message}, 500)
    return PlainTextResponse(f"500: {message}\n", status_code=500)


def _is_api(request: Request) -> bool:
    root = request.scope.get("root_path", "")
    return request.url.path.removeprefix(root).startswith("/api/")


async def _body(request: Request) -> Any:
    """The POST's JSON body, at most :data:`MAX_BODY_BYTES`."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise HTTPException(413, f"the body is over {MAX_BODY_BYTES} bytes")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            raise HTTPException(413, f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        return orjson.loads(data or b"{}")
    except orjson.JSONDecodeError:
        raise HTTPException(400, "the body is not JSON") from None


def _task_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(urllib.parse.unquote(text))
    except ValueError:
        raise HTTPException(400, f"not a task id (a UUID): {text[:100]!r}") from None


class _SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.decode("latin-1").lower() not in _SECURITY_HEADER_NAMES
                ]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_SECURITY_HEADER_NAMES = {name.lower() for name in SECURITY_HEADERS}
