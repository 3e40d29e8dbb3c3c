"""A command's time with the database: where it connects, the connection, the event loop."""

from __future__ import annotations

import argparse
import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from durable.cli.render import err
from durable.client import Client
from durable.protocol.dsn import resolve_dsn
from durable.protocol.embedded import default_home
from durable.protocol.errors import DurableError


def run(fn: Callable[[], Awaitable[int]]) -> int:
    """``anyio.run`` that surfaces a durable error raised inside a task group as itself."""
    try:
        return anyio.run(fn)
    except BaseExceptionGroup as group:
        matched, rest = group.split(DurableError)
        if matched is None or rest is not None:
            raise
        leaf: BaseException = matched
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


@contextlib.asynccontextmanager
async def connect(args: argparse.Namespace) -> AsyncIterator[Client]:
    """A small client on ``--dsn`` (else ``$DURABLE_DSN``, else the embedded server)."""
    async with Client(args.dsn, pool_size=2) as client:
        print_embedded(client)
        yield client


def print_embedded(client: Client) -> None:
    if (home := client.embedded_home) is not None:
        err(f"durable: using embedded PostgreSQL, data in {home}")


def print_location(dsn: str | None) -> None:
    """Where commands would connect, without connecting."""
    resolved = resolve_dsn(dsn)
    if resolved is None:
        err(f"durable: using embedded PostgreSQL, data in {default_home()}")
        return
    parts = urllib.parse.urlsplit(resolved)
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
    err(f"durable: using PostgreSQL at {where} ({'--dsn' if dsn else '$DURABLE_DSN'})")
