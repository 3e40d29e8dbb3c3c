"""Migrations: idempotent, safe to run concurrently, and a schema of another version is refused;
the protocol is applied when its files change and never downgraded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
import structlog
from support.database import connection, empty_database, execute

from durable.client import Client
from durable.protocol import migrate
from durable.protocol.errors import SchemaError
from durable.protocol.migrate import load_migrations, load_protocol
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
    async with empty_database(server_dsn, prefix="m") as dsn:
        yield dsn


async def _versions(dsn: str) -> list[int]:
    async with connection(dsn) as conn:
        return [r[0] for r in await conn.fetch("select version from durable.schema_migrations")]


async def test_opening_an_empty_database_applies_every_migration(empty_dsn: str) -> None:
    store = await Store.open(empty_dsn)
    await store.close()
    assert await _versions(empty_dsn) == [m.version for m in load_migrations()]


async def test_migrating_twice_is_a_no_op(dsn: str) -> None:
    async with connection(dsn) as conn:
        objects = await conn.fetchval(_SCHEMA_OBJECTS)
        functions = await conn.fetchval(_FUNCTIONS)
        assert await migrate.migrate(conn) == []
        assert await migrate.migrate(conn) == []
        assert (await conn.fetchval(_SCHEMA_OBJECTS), await conn.fetchval(_FUNCTIONS)) == (
            objects,
            functions,
        )
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
    async with connection(empty_dsn) as conn:
        assert await conn.fetchval("select to_regnamespace('durable')") is None


async def test_open_without_migrating_accepts_a_current_schema(dsn: str) -> None:
    async with Client(dsn, migrate=False) as client:
        assert (await client.spawn("jobs", "job", None)).created


@pytest.mark.parametrize("apply", [True, False], ids=["migrate", "check"])
async def test_a_schema_newer_than_this_package_is_refused(dsn: str, apply: bool) -> None:
    await execute(
        dsn,
        "insert into durable.schema_migrations (version, name, checksum)"
        " values (9999, 'from_the_future', 'x')",
    )
    with pytest.raises(SchemaError, match=r"\[9999\].*upgrade durable"):
        await Store.open(dsn, migrate=apply)


# --- the protocol: applied when its files change, never downgraded ------------------------------

_FUNCTION_VERSIONS = """
select p.proname, p.xmin::text from pg_catalog.pg_proc p
 where p.pronamespace = 'durable'::regnamespace order by 1
"""
_RECORDED_PROTOCOL = "select version, checksum from durable.applied_protocol"


async def _protocol_state(dsn: str) -> tuple[dict[str, str], tuple[int, str]]:
    """Each function's row version (a ``create or replace`` writes a new one), and the recorded
    protocol."""
    async with connection(dsn) as conn:
        functions = {r[0]: r[1] for r in await conn.fetch(_FUNCTION_VERSIONS)}
        recorded = await conn.fetchrow(_RECORDED_PROTOCOL)
    assert recorded is not None
    return functions, (recorded["version"], recorded["checksum"])


async def _record_protocol(dsn: str, version: int, checksum: str) -> None:
    async with connection(dsn) as conn:
        await conn.execute(
            "update durable.applied_protocol set version = $1, checksum = $2", version, checksum
        )


async def test_a_fresh_database_records_the_protocol_it_runs(dsn: str) -> None:
    functions, recorded = await _protocol_state(dsn)
    assert recorded == (migrate.PROTOCOL_VERSION, load_protocol().checksum)
    assert len(functions) == 129  # protocol 11 added three (refresh_hot_stats, forget_*)


async def test_connecting_again_applies_nothing(dsn: str) -> None:
    before = await _protocol_state(dsn)
    with structlog.testing.capture_logs() as logs:
        async with Client(dsn):
            pass
        async with Client(dsn):
            pass
    assert await _protocol_state(dsn) == before
    assert [e["event"] for e in logs if e["event"].startswith(("schema.", "protocol."))] == []


async def test_a_changed_protocol_is_applied_once(dsn: str) -> None:
    functions, _ = await _protocol_state(dsn)
    await _record_protocol(dsn, migrate.PROTOCOL_VERSION, "the hash of an edited sql/protocol/")
    with structlog.testing.capture_logs() as logs:
        async with Client(dsn):
            pass
        after = await _protocol_state(dsn)
        async with Client(dsn):
            pass
    applied = [e for e in logs if e["event"] == "protocol.applied"]
    assert [e["version"] for e in applied] == [migrate.PROTOCOL_VERSION]
    assert after[1] == (migrate.PROTOCOL_VERSION, load_protocol().checksum)
    assert after[0].keys() == functions.keys()
    assert all(after[0][name] != functions[name] for name in functions)  # each one rewritten
    assert await _protocol_state(dsn) == after  # and then left alone


async def test_a_newer_protocol_is_not_overwritten(dsn: str) -> None:
    newer = migrate.PROTOCOL_VERSION + 1
    await _record_protocol(dsn, newer, "a protocol from the future")
    functions, _ = await _protocol_state(dsn)
    with structlog.testing.capture_logs() as logs:
        async with Client(dsn) as client:
            assert (await client.spawn("jobs", "job", None)).created
        async with Client(dsn, migrate=False) as client:  # and a newer one is current enough
            assert (await client.spawn("jobs", "job", None)).created
    assert await _protocol_state(dsn) == (functions, (newer, "a protocol from the future"))
    assert [e["event"] for e in logs if e["event"].startswith("protocol.")] == [
        "protocol.kept_newer"
    ]


@pytest.mark.parametrize("recorded", ["edited", "missing"])
async def test_open_without_migrating_refuses_a_protocol_that_is_not_current(
    dsn: str, recorded: str
) -> None:
    async with connection(dsn) as conn:
        if recorded == "edited":
            await conn.execute("update durable.applied_protocol set checksum = 'edited'")
        else:
            await conn.execute("delete from durable.applied_protocol")
    with pytest.raises(SchemaError, match=r"protocol.*durable migrate"):
        await Store.open(dsn, migrate=False)
    async with Client(dsn):  # migrating applies it
        pass
    async with Client(dsn, migrate=False) as client:
        assert (await client.spawn("jobs", "job", None)).created
