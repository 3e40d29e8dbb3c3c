"""What every benchmark workload shares: the server, a scratch database, a stopwatch, the table.

A workload is ``async def workload(bench: Bench) -> Measurement``. It runs against ``bench.dsn``,
a database created for this run only and dropped at the end, so user data is never touched.
"""

from __future__ import annotations

import contextlib
import platform
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

import anyio
import asyncpg

from durable.client import Client
from durable.config import resolve_dsn
from durable.embedded import start_embedded, stop_embedded
from durable.store import describe_dsn

# Query keys that would name another database than the URL's path (asyncpg reads ``database``).
_DATABASE_KEYS = frozenset({"database", "dbname"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Bench:
    """What a workload gets: its database and the sizes from the command line."""

    dsn: str
    n: int
    batch: int
    consumers: int

    def queue(self, label: str) -> str:
        """A fresh queue name, so no workload sees another one's tasks."""
        return f"{label}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Measurement:
    workload: str
    n: int
    seconds: float

    @property
    def tasks_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")


Workload = Callable[[Bench], Awaitable[Measurement]]


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (monotonic, high resolution)."""

    def __init__(self) -> None:
        self._start = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.seconds = time.perf_counter() - self._start


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


async def _execute(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def scratch_database(server_dsn: str) -> AsyncIterator[str]:
    """Create ``durable_bench_<hex>``, migrate it, yield its DSN; drop it (force) on the way out."""
    name = f"durable_bench_{uuid.uuid4().hex[:12]}"  # hex only: safe to quote as an identifier
    await _execute(server_dsn, f'create database "{name}"')
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
            await _execute(server_dsn, f'drop database if exists "{name}" with (force)')


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


def table(measurements: Sequence[Measurement]) -> str:
    """An aligned table: workload, N, seconds, tasks/s."""
    rows = [("workload", "N", "seconds", "tasks/s")] + [
        (m.workload, f"{m.n:,}", f"{m.seconds:.3f}", f"{m.tasks_per_s:,.0f}") for m in measurements
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
