"""The console over HTTP in tests: a dashboard on a free port, raw requests over real sockets
(so that malformed HTTP can be sent too), the page's CSRF token, an event stream's events."""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from durable import Client
from durable.dashboard import serve


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json", self
        return json.loads(self.body)


@contextlib.asynccontextmanager
async def dashboard(client: Client, *, read_only: bool = False) -> AsyncIterator[int]:
    """The dashboard on a free port of 127.0.0.1; yields the port."""
    async with anyio.create_task_group() as tg:
        port: int = await tg.start(functools.partial(serve, client, port=0, read_only=read_only))
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


async def send_raw(port: int, raw: bytes, *, head_only: bool = False) -> Answer:
    """Send ``raw`` bytes and read one response: its head, then ``Content-Length`` bytes (or
    until the server closes); the answer to a HEAD (``head_only``) has no body."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(raw)
        data = b""
        with anyio.fail_after(10):
            while True:
                head, found, body = data.partition(b"\r\n\r\n")
                if found:
                    length = _headers(head).get("content-length")
                    if head_only or (length is not None and len(body) >= int(length)):
                        break
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.decode("latin-1").split("\r\n")[0]
    headers = _headers(head)
    if "content-length" in headers and not head_only:
        assert int(headers["content-length"]) == len(body)
    return Answer(int(status_line.split(" ")[1]), headers, body)


def _headers(head: bytes) -> dict[str, str]:
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return headers


async def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> Answer:
    all_headers = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    if body:
        all_headers["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in all_headers.items()
    )
    return await send_raw(port, head.encode() + b"\r\n" + body, head_only=method == "HEAD")


async def csrf_token(port: int) -> str:
    page = await request(port, "GET", "/")
    match = re.search(rb'<meta name="csrf-token" content="([^"]*)">', page.body)
    assert match is not None
    return match[1].decode()


class EventStream:
    """An open ``GET /api/events``: :meth:`next_event` returns the next ``change`` event."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def read_head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += await self._stream.receive()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        status_line = head.decode("latin-1").split("\r\n")[0]
        return int(status_line.split(" ")[1]), _headers(head)

    async def next_event(self, *, timeout: float = 10.0) -> dict[str, Any]:
        """The data of the next ``event: change`` (comments and keep-alives skipped)."""
        with anyio.fail_after(timeout):
            while True:
                while b"\n\n" not in self._buffer:
                    self._buffer += await self._stream.receive()
                block, _, self._buffer = self._buffer.partition(b"\n\n")
                lines = [line for line in block.decode().splitlines() if ":" in line]
                # chunked transfer: a chunk size line may precede the event
                fields = dict(line.split(": ", 1) for line in lines if ": " in line)
                if fields.get("event") == "change":
                    data: dict[str, Any] = json.loads(fields["data"])
                    return data


@contextlib.asynccontextmanager
async def event_stream(port: int, path: str = "/api/events") -> AsyncIterator[EventStream]:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        yield EventStream(stream)
