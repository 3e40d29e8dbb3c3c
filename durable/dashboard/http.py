"""Just enough HTTP/1.1 for the dashboard: one request per connection, then ``Connection: close``.

:func:`read_request` reads the request line, the headers and a ``Content-Length`` body, within
size bounds, and raises :class:`HttpError` (a status and a message for the client) on anything it
does not accept: a malformed head, a chunked body, a body or head over the limit.
:func:`encode_response` renders a :class:`Response` with its ``Content-Length``.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from http import HTTPStatus

import anyio
import anyio.abc

#: The request line and headers together.
MAX_HEAD_BYTES = 16 * 1024
#: The dashboard's POSTs carry no body; anything over this is refused with 413.
MAX_BODY_BYTES = 64 * 1024
#: Headers per request.
MAX_HEADERS = 100

_METHOD_RE = re.compile(r"^[A-Z]{1,16}$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class HttpError(Exception):
    """A request the server answers with ``status`` and ``message`` and does not process."""

    def __init__(self, status: HTTPStatus, message: str, *, allow: str | None = None) -> None:
        self.status = status
        self.message = message
        self.allow = allow  # the Allow header of a 405
        super().__init__(f"{status.value} {status.phrase}: {message}")


class ConnectionClosed(Exception):
    """The peer closed the connection before sending a whole request head (nothing to answer)."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # the target's path, still percent-encoded
    query: dict[str, list[str]]
    headers: dict[str, str]  # lowercase names; a repeated header's values joined by ", "
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True)
class Response:
    status: HTTPStatus
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


async def read_request(stream: anyio.abc.ByteStream) -> Request:
    """One request from ``stream``; the caller bounds the time it may take."""
    buffer = bytearray()
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise HttpError(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"the request head is over {MAX_HEAD_BYTES} bytes",
            )
        try:
            chunk = await stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            if buffer:
                raise HttpError(HTTPStatus.BAD_REQUEST, "the request head is incomplete") from None
            raise ConnectionClosed from None
        buffer += chunk
    if end > MAX_HEAD_BYTES:
        raise HttpError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            f"the request head is over {MAX_HEAD_BYTES} bytes",
        )
    method, target, headers = _parse_head(bytes(buffer[:end]))
    body = bytes(buffer[end + 4 :])
    length = _content_length(headers)
    if len(body) > length:
        raise HttpError(HTTPStatus.BAD_REQUEST, "more bytes than Content-Length says")
    while len(body) < length:
        try:
            body += await stream.receive(min(65536, length - len(body)))
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            raise HttpError(HTTPStatus.BAD_REQUEST, "the body is shorter than its length") from None
    path, _, query = target.partition("?")
    return Request(
        method=method,
        path=path,
        query=urllib.parse.parse_qs(query, keep_blank_values=True),
        headers=headers,
        body=body,
    )


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "the request head is not ASCII") from None
    request_line, *lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not _METHOD_RE.match(parts[0]) or not parts[2].startswith("HTTP/"):
        raise HttpError(HTTPStatus.BAD_REQUEST, f"not an HTTP request line: {request_line[:80]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"{version} — use HTTP/1.1")
    if not target.startswith("/"):
        raise HttpError(HTTPStatus.BAD_REQUEST, "the request target must be a path (/...)")
    if len(lines) > MAX_HEADERS:
        raise HttpError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"more than {MAX_HEADERS} headers"
        )
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN_RE.match(name):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"malformed header line: {line[:80]!r}")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if version == "HTTP/1.1" and "host" not in headers:
        raise HttpError(HTTPStatus.BAD_REQUEST, "an HTTP/1.1 request needs a Host header")
    return method, target, headers


def _content_length(headers: dict[str, str]) -> int:
    if "transfer-encoding" in headers:
        raise HttpError(
            HTTPStatus.NOT_IMPLEMENTED, "Transfer-Encoding is not supported — send Content-Length"
        )
    text = headers.get("content-length")
    if text is None:
        return 0
    if not text.isdigit() or not text.isascii():
        raise HttpError(HTTPStatus.BAD_REQUEST, f"Content-Length is not a number: {text[:40]!r}")
    length = int(text)
    if length > MAX_BODY_BYTES:
        raise HttpError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {MAX_BODY_BYTES} bytes"
        )
    return length


def encode_response(response: Response, extra_headers: dict[str, str]) -> bytes:
    """The response's bytes: status line, headers (``extra_headers`` first), body."""
    status = response.status
    headers = {
        **extra_headers,
        **response.headers,
        "Content-Type": response.content_type,
        "Content-Length": str(len(response.body)),
        "Connection": "close",
    }
    head = f"HTTP/1.1 {status.value} {status.phrase}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    return head.encode("latin-1") + b"\r\n" + response.body
