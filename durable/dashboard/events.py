"""Live pages without polling: server-sent events fed by LISTEN.

``GET /api/events`` holds a LISTEN connection on ``durable_work`` (a run became claimable on a
queue) and ``durable_done`` (tasks ended) for as long as the page is open, and sends one
``change`` event per burst — at most every :data:`COALESCE_S` seconds — naming the queues that
got work and how many tasks ended; the page then re-reads what it shows. Nothing is read on a
timer: a quiet database costs a keep-alive comment every :data:`KEEPALIVE_S` seconds. At most
``limit`` streams are open at once (each holds a connection); more are answered 503, and the
page falls back to a slow refresh.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from durable.client import CHANNEL_DONE, CHANNEL_WORK, Client
from durable.protocol.errors import DurableError
from durable.protocol.log import get_logger

log = get_logger()

#: Notifications within this many seconds make one event.
COALESCE_S = 0.25
#: A quiet stream sends a comment this often (proxies close idle connections).
KEEPALIVE_S = 15.0
#: Event streams open at once (each holds a database connection for LISTEN).
MAX_STREAMS = 16


class _Changes:
    """What the notifications said since the last event."""

    def __init__(self) -> None:
        self.queues: set[str] = set()
        self.done = 0
        self.arrived = anyio.Event()

    def work(self, queue: str) -> None:
        self.queues.add(queue)
        self.arrived.set()

    def ended(self, task_ids: str) -> None:
        self.done += task_ids.count(",") + 1
        self.arrived.set()

    def take(self) -> bytes:
        event = {"queues": sorted(self.queues), "done": self.done}
        self.queues, self.done = set(), 0
        self.arrived = anyio.Event()
        return b"event: change\ndata: " + orjson.dumps(event) + b"\n\n"


class EventStreams:
    """The event streams of one console, at most ``limit`` at once."""

    def __init__(self, client: Client, *, limit: int = MAX_STREAMS) -> None:
        self.client = client
        self.limit = limit
        self.open = 0

    async def respond(self, request: Request) -> Response:
        if self.open >= self.limit:
            return JSONResponse(
                {"error": f"{self.limit} event streams are open: refresh by hand"}, 503
            )
        changes = _Changes()
        try:
            listener = await self.client.listen(
                {CHANNEL_WORK: changes.work, CHANNEL_DONE: changes.ended}
            )
        except DurableError as exc:
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, 503)
        self.open += 1

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n: connected\n\n"
                while not listener.closed:
                    with anyio.move_on_after(KEEPALIVE_S):
                        await changes.arrived.wait()
                    if not changes.arrived.is_set():
                        yield b": keep-alive\n\n"
                        continue
                    await anyio.sleep(COALESCE_S)  # a burst of notifications: one event
                    yield changes.take()
                log.info("dashboard.events_lost", reason="the LISTEN connection closed")
            finally:
                self.open -= 1
                with anyio.CancelScope(shield=True):
                    await listener.close()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )
