"""Real PostgreSQL for every test: ``$DURABLE_TEST_DSN``, else the embedded server.

One template database per session with every migration applied; each test gets its own
``CREATE DATABASE t_<uuid> TEMPLATE ...`` and ``DROP ... WITH (FORCE)`` afterwards.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
import asyncpg
import pytest
from support.database import connection, execute, private_server, with_database

from durable.client import Client
from durable.protocol.embedded import EmbeddedServer
from durable.protocol.store import Store

#: The browser tests' fixtures (``browser``, ``screenshots``): see support/browser.py.
pytest_plugins = ["support.browser"]


@pytest.fixture(autouse=True, scope="session")
def durable_logs_at_debug() -> None:
    """durable logs through the stdlib logger ``durable`` (WARNING by default, as any library's);
    the tests assert its events (``structlog.testing.capture_logs``), so let every level in."""
    logging.getLogger("durable").setLevel(logging.DEBUG)


@pytest.fixture(scope="session")
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"debug": True})


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A DSN of the server the suite uses (its maintenance database)."""
    if dsn := os.environ.get("DURABLE_TEST_DSN"):
        yield dsn
        return
    with private_server("durable-suite-") as server:
        yield server.start()


@pytest.fixture
def embedded_server() -> Iterator[EmbeddedServer]:
    """A private PostgreSQL (not started) that a fault test may stop and restart."""
    with private_server("durable-faults-") as server:
        yield server


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    """A database with every migration applied, used as the template of each test's database."""
    name = f"durable_tpl_{uuid.uuid4().hex[:12]}"
    anyio.run(execute, server_dsn, f'create database "{name}"')

    async def _migrate() -> None:
        store = await Store.open(with_database(server_dsn, name), min_size=1, max_size=1)
        await store.close()

    anyio.run(_migrate)
    try:
        yield name
    finally:
        anyio.run(execute, server_dsn, f'drop database if exists "{name}" with (force)')


@pytest.fixture
def dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"t_{uuid.uuid4().hex}"
    anyio.run(execute, server_dsn, f'create database "{name}" template "{template_db}"')
    try:
        yield with_database(server_dsn, name)
    finally:
        anyio.run(execute, server_dsn, f'drop database if exists "{name}" with (force)')


@pytest.fixture
async def client(dsn: str) -> AsyncIterator[Client]:
    async with Client(dsn) as c:
        yield c


@pytest.fixture
async def raw(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to this test's database, as the suite's (superuser) role."""
    async with connection(dsn) as conn:
        yield conn
