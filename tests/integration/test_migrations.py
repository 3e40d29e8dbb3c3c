"""Migrations: idempotent, safe to run concurrently, and a schema of another version is refused."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest
from conftest import with_database

from durable.client import Client
from durable.protocol import migrate
from durable.protocol.errors import SchemaError
from durable.protocol.migrate import load_migrations
from durable.protocol.store import Store

pytestmark = pytest.mark.anyio

_SCHEMA_OBJECTS = """
select count(*) from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where n.nspname = 'durable'
"""
_FUNCTIONS = """
select count(*) from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
 where n.nspname = 'durable'
"""


@pytest.fixture
async def empty_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A database with nothing in it: no schema, no migrations."""
    name = f"m_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'create database "{name}"')
        yield with_database(server_dsn, name)
    finally:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


async def _versions(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch("select version from durable.schema_migrations")]
    finally:
        await conn.close()


async def test_opening_an_empty_database_applies_every_migration(empty_dsn: str) -> None:
    store = await Store.open(empty_dsn)
    await store.close()
    assert await _versions(empty_dsn) == [m.version for m in load_migrations()]


async def test_migrating_twice_is_a_no_op(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        objects = await conn.fetchval(_SCHEMA_OBJECTS)
        functions = await conn.fetchval(_FUNCTIONS)
        assert await migrate.migrate(conn) == []
        assert await migrate.migrate(conn) == []
        assert (await conn.fetchval(_SCHEMA_OBJECTS), await conn.fetchval(_FUNCTIONS)) == (
            objects,
            functions,
        )
    finally:
        await conn.close()
    assert await _versions(dsn) == [m.version for m in load_migrations()]


async def test_migrating_keeps_the_data(client: Client, dsn: str) -> None:
    info = await client.spawn("jobs", "job", {"n": 1})
    async with Client(dsn) as again:
        assert (await again.get_task("jobs", info.task_id)).params == {"n": 1}


async def test_concurrent_opens_of_an_empty_database_all_succeed(empty_dsn: str) -> None:
    stores: list[Store] = []

    async def open_store() -> None:
        stores.append(await Store.open(empty_dsn, min_size=1, max_size=2))

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(open_store)
    finally:
        for store in stores:
            await store.close()
    assert len(stores) == 5
    assert await _versions(empty_dsn) == [m.version for m in load_migrations()]


async def test_open_without_migrating_refuses_an_empty_database(empty_dsn: str) -> None:
    with pytest.raises(SchemaError, match="durable migrate"):
        await Store.open(empty_dsn, migrate=False)
    with pytest.raises(SchemaError):
        await Client(empty_dsn, migrate=False).connect()
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await conn.fetchval("select to_regnamespace('durable')") is None
    finally:
        await conn.close()


async def test_open_without_migrating_accepts_a_current_schema(dsn: str) -> None:
    async with Client(dsn, migrate=False) as client:
        assert (await client.spawn("jobs", "job", None)).created


@pytest.mark.parametrize("apply", [True, False], ids=["migrate", "check"])
async def test_a_schema_newer_than_this_package_is_refused(dsn: str, apply: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "insert into durable.schema_migrations (version, name, checksum)"
            " values (9999, 'from_the_future', 'x')"
        )
    finally:
        await conn.close()
    with pytest.raises(SchemaError, match=r"\[9999\].*upgrade durable"):
        await Store.open(dsn, migrate=apply)
