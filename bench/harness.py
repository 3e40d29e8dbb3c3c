"""What the benchmark scripts share: the server, scratch databases, the header line.

Every run works in a database created for it and dropped at the end, so user data is never
touched.
"""

from __future__ import annotations

import contextlib
import platform
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import asyncpg

from durable.client import Client
from durable.protocol.dsn import resolve_dsn
from durable.protocol.embedded import start_embedded, stop_embedded
from durable.protocol.store import describe_dsn

# Query keys that would name another database than the URL's path (asyncpg reads ``database``).
_DATABASE_KEYS = frozenset({"database", "dbname"})


# --- the server and the scratch database ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Server:
    dsn: str  # as given: only read for settings and to create and drop the scratch database
    label: str  # for the header: host:port of $DURABLE_DSN, or "embedded (<home>)"


@contextlib.asynccontextmanager
async def target_server() -> AsyncIterator[Server]:
    """``$DURABLE_DSN`` if set, else the embedded server (started, or joined, for this run)."""
    if dsn := resolve_dsn(None):
        host, port = describe_dsn(dsn)
        yield Server(dsn, f"{host}:{port}")
        return
    server = await start_embedded()
    try:
        yield Server(server.dsn, f"embedded ({server.home})")
    finally:
        with anyio.CancelScope(shield=True):
            await stop_embedded(server)


def with_database(dsn: str, database: str) -> str:
    """The same server and options, another database: replace the URL's path, keep the query."""
    parts = urllib.parse.urlsplit(dsn)
    pairs = [
        (key, value)
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if key not in _DATABASE_KEYS
    ]
    query = urllib.parse.urlencode(pairs, safe="/", quote_via=urllib.parse.quote)
    return f"{parts.scheme}://{parts.netloc}/{database}" + (f"?{query}" if query else "")


async def execute(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def scratch_database(server_dsn: str) -> AsyncIterator[str]:
    """Create ``durable_bench_<hex>``, migrate it, yield its DSN; drop it (force) on the way out."""
    name = f"durable_bench_{uuid.uuid4().hex[:12]}"  # hex only: safe to quote as an identifier
    await execute(server_dsn, f'create database "{name}"')
    dsn = with_database(server_dsn, name)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            current = await conn.fetchval("select current_database()")
        finally:
            await conn.close()
        if current != name:  # never run workloads anywhere but the scratch database
            raise RuntimeError(f"connected to database {current!r}, expected {name!r}")
        async with Client(dsn, pool_size=1):  # applies the migrations, outside any timing
            pass
        yield dsn
    finally:
        with anyio.CancelScope(shield=True):
            await execute(server_dsn, f'drop database if exists "{name}" with (force)')


async def describe_server(dsn: str) -> dict[str, str]:
    """The server settings that explain the figures."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "select name, setting from pg_settings where name = any($1::text[])",
            ["server_version", "fsync", "synchronous_commit"],
        )
    finally:
        await conn.close()
    return {r["name"]: r["setting"] for r in rows}


# --- output --------------------------------------------------------------------------------------


def header(server: Server, settings: dict[str, str]) -> str:
    return (
        f"PostgreSQL {settings.get('server_version', '?')}"
        f" (fsync={settings.get('fsync', '?')},"
        f" synchronous_commit={settings.get('synchronous_commit', '?')})"
        f" | Python {platform.python_version()}"
        f" | database: {server.label}"
    )
