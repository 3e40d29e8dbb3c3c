"""The test's database without durable in between: DSNs, plain asyncpg connections, row counts,
and the pool a worker script's tasks write their side records through."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import asyncpg

from durable.protocol.embedded import EmbeddedServer


@contextlib.contextmanager
def private_server(prefix: str) -> Iterator[EmbeddedServer]:
    """An embedded PostgreSQL of the caller's own under a new /tmp directory (not started);
    stopped and removed on exit."""
    home = Path(tempfile.mkdtemp(dir="/tmp", prefix=prefix))
    server = EmbeddedServer(home)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def with_database(dsn: str, database: str) -> str:
    """The same server, another database."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path="/" + database))


@contextlib.asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection, closed on exit."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def execute(dsn: str, *statements: str) -> None:
    """Run ``statements`` in turn on a connection of their own (DDL, roles, databases)."""
    async with connection(dsn) as conn:
        for statement in statements:
            await conn.execute(statement)


@contextlib.asynccontextmanager
async def empty_database(server_dsn: str, *, prefix: str) -> AsyncIterator[str]:
    """A database of its own on ``server_dsn``'s server with nothing in it (no schema), named
    ``<prefix>_<uuid>``; its DSN, and it is dropped on exit."""
    name = f"{prefix}_{uuid.uuid4().hex}"
    await execute(server_dsn, f'create database "{name}"')
    try:
        yield with_database(server_dsn, name)
    finally:
        await execute(server_dsn, f'drop database if exists "{name}" with (force)')


async def fetchval(dsn: str, query: str, *args: Any) -> Any:
    """The first value of ``query``'s first row, on a connection of its own."""
    async with connection(dsn) as conn:
        return await conn.fetchval(query, *args)


class TableCounts(NamedTuple):
    tasks: int
    runs: int
    checkpoints: int
    workers: int


async def table_counts(conn: asyncpg.Connection) -> TableCounts:
    """How many rows durable's tables hold (a write that was refused changes none of them)."""
    row = await conn.fetchrow(
        "select (select count(*) from durable.tasks), (select count(*) from durable.runs),"
        " (select count(*) from durable.checkpoints), (select count(*) from durable.workers)"
    )
    assert row is not None
    return TableCounts(*row)


class SidePool:
    """A pool of a worker script's own, opened for the process's life: its tasks record their
    side effects through it rather than through durable's pool, so each row is committed
    whatever becomes of the run."""

    def __init__(self, *, max_size: int) -> None:
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the side pool is opened by the worker script; run the app as one")
        return self._pool

    @contextlib.asynccontextmanager
    async def open(self, dsn: str) -> AsyncIterator[asyncpg.Pool]:
        self._pool = await asyncpg.create_pool(dsn, min_size=1, max_size=self.max_size)
        try:
            yield self._pool
        finally:
            with anyio.CancelScope(shield=True):
                await self._pool.close()
            self._pool = None
