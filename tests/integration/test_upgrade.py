"""Upgrading in place from schema version 13, the last of the single-kind layout.

``schema_v13/`` holds the migrations durable shipped up to version 13 (``sql/migrations/``), byte
for byte; :func:`_migrate_like_v13` is the migrator of that era. A database they built, holding
tasks in every state, is migrated by today's code: the data stays, the protocol works, and the
schema is the one a fresh install gets (``pg_dump`` agrees). The v13-era migrator refuses the new
layout, and a database older than the baseline is refused with a clear error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from support.database import connection, empty_database

from durable.client import Client
from durable.protocol.embedded import _bin_dir
from durable.protocol.errors import DatabaseUnavailable, SchemaError
from durable.protocol.migrate import load_migrations
from durable.protocol.records import SpawnOptions, TaskState

pytestmark = pytest.mark.anyio

V13 = Path(__file__).parent / "schema_v13"
_V13_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_V13_BOOKKEEPING = """
create schema if not exists durable;
create table if not exists durable.schema_migrations (
    version    integer primary key,
    name       text not null,
    checksum   text not null,
    applied_at timestamptz not null default now()
);
"""


async def _migrate_like_v13(conn: asyncpg.Connection, *, through: int = 13) -> None:
    """What durable's migrator did up to schema version 13: refuse a database that records a
    version it does not know, then apply each pending file (up to ``through``) in a transaction of
    its own, recorded in durable.schema_migrations with its sha256."""
    files = [
        (int(match[1]), match[2], path.read_text())
        for path in sorted(V13.iterdir())
        if (match := _V13_FILE.match(path.name))
    ]
    assert [version for version, _, _ in files] == list(range(1, 14))
    await conn.execute(_V13_BOOKKEEPING)
    applied = {
        r["version"] for r in await conn.fetch("select version from durable.schema_migrations")
    }
    newer = sorted(applied - {version for version, _, _ in files})
    if newer:
        raise SchemaError(
            f"the database schema has migrations {newer} that this durable does not know — "
            "upgrade durable"
        )
    for version, name, sql in files[:through]:
        if version in applied:
            continue
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute(
                "insert into durable.schema_migrations (version, name, checksum)"
                " values ($1, $2, $3)",
                version,
                name,
                hashlib.sha256(sql.encode()).hexdigest(),
            )


@pytest.fixture
async def v13_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A database built by the v13-era migrator, as an earlier durable left it."""
    async with empty_database(server_dsn, prefix="u") as dsn:
        async with connection(dsn) as conn:
            await _migrate_like_v13(conn)
        yield dsn


# --- the data and the protocol survive the upgrade -----------------------------------------------

_ROWS = {
    # 0018 records when each failure happened (backfilled: the failed run's end; checked below)
    "tasks": "select (to_jsonb(x) - 'failed_at')::text from durable.tasks x order by 1",
    "runs": "select to_jsonb(x)::text from durable.runs x order by 1",
    "checkpoints": "select to_jsonb(x)::text from durable.checkpoints x order by 1",
    "workers": "select to_jsonb(x)::text from durable.workers x order by 1",
}


#: The columns later migrations add to v13's tables, and what they hold on the rows a v13 worker
#: wrote (their default).
_ADDED_COLUMNS: dict[str, dict[str, Any]] = {
    # (every task of the v13 fill is named "job": the runs' task_name is backfilled from it)
    "runs": {"code_version": None, "reserved": False, "task_name": "job", "concurrency_key": None},
    "tasks": {
        "on_parent_cancel": "cancel",
        "concurrency_key": None,
        "retry_on": None,
        "discard_on": None,
    },
    "workers": {"concurrency": None, "busy": None, "claimed_ahead": None, "stats_at": None},
}


async def _rows(conn: asyncpg.Connection) -> dict[str, list[str]]:
    return {table: [r[0] for r in await conn.fetch(query)] for table, query in _ROWS.items()}


async def _v13_rows(conn: asyncpg.Connection) -> dict[str, list[str]]:
    """The rows of an upgraded database as v13 saw them: the columns added since, which must hold
    their default on every row, taken out."""
    rows = {}
    for table, query in _ROWS.items():
        added = _ADDED_COLUMNS.get(table, {})
        for row in await conn.fetch(query):
            doc = json.loads(row[0])
            assert {column: doc[column] for column in added} == added, (table, row)
        v13_query = query.replace("to_jsonb(x)", "(to_jsonb(x) - $1::text[])")
        rows[table] = [r[0] for r in await conn.fetch(v13_query, list(added))]
    return rows


async def _fill_like_a_v13_worker(conn: asyncpg.Connection) -> dict[str, uuid.UUID]:
    """Tasks in every state, written through the v13 protocol: a pending one, a running one with
    a checkpoint, a completed one with two checkpoints, a failed one. Returns their ids, and the
    running task's run."""

    async def spawn(queue: str, options: str = "{}") -> uuid.UUID:
        return await conn.fetchval(  # type: ignore[no-any-return]
            "select task_id from durable.spawn($1, 'job', $2::jsonb, $3::jsonb)",
            queue,
            f'{{"queue": "{queue}"}}',
            options,
        )

    async def claim(queue: str) -> uuid.UUID:
        return await conn.fetchval(  # type: ignore[no-any-return]
            "select run_id from durable.claim($1, 'old-worker', 300)", queue
        )

    ids = {
        "pending": await spawn("idle"),
        "running": await spawn("busy"),
        "completed": await spawn("done"),
        "failed": await spawn("broken", '{"max_attempts": 1}'),
    }
    running = await claim("busy")
    await conn.execute("select durable.set_checkpoint('busy', $1, 'fetch', '[1, 2]')", running)
    done = await claim("done")
    await conn.execute("select durable.set_checkpoint('done', $1, 'a', '\"A\"')", done)
    await conn.execute("select durable.set_checkpoint('done', $1, 'b', '\"B\"')", done)
    await conn.execute("select durable.complete('done', $1, '{\"n\": 3}')", done)
    broken = await claim("broken")
    await conn.execute(
        'select durable.fail(\'broken\', $1, \'{"type": "Boom", "message": "no"}\')', broken
    )
    return {**ids, "running_run": running}


async def test_a_database_at_version_13_is_upgraded_in_place(v13_dsn: str) -> None:
    async with connection(v13_dsn) as conn:
        ids = await _fill_like_a_v13_worker(conn)
        before = await _rows(conn)
        assert all(before.values())

    async with Client(v13_dsn) as client:  # connecting migrates
        async with connection(v13_dsn) as conn:
            assert await _v13_rows(conn) == before
            # the failure recorded by the v13 protocol got its run's end as when it happened
            backfilled = await conn.fetchval(
                "select t.failed_at = r.finished_at from durable.tasks t"
                " join durable.runs r on r.run_id = (t.failure->>'run_id')::uuid"
                " where t.task_id = $1",
                ids["failed"],
            )
            assert backfilled is True
            versions = [
                r[0]
                for r in await conn.fetch(
                    "select version from durable.schema_migrations order by 1"
                )
            ]
        latest = load_migrations()[-1].version
        assert versions == list(range(1, latest + 1))
        assert [m.version for m in load_migrations()] == list(range(13, latest + 1))

        # the old run still holds its lease, and its checkpoint is there to replay
        assert [c.step_name for c in await client.get_checkpoints("busy", ids["running"])] == [
            "fetch"
        ]
        await client.complete("busy", ids["running_run"], "finished after the upgrade")
        assert (await client.get_result("busy", ids["running"])).result == (
            "finished after the upgrade"
        )
        completed = await client.get_result("done", ids["completed"])
        assert (completed.state, completed.result) == (TaskState.COMPLETED, {"n": 3})
        assert (await client.get_result("broken", ids["failed"])).state == TaskState.FAILED

        # and the protocol runs: the old pending task and a new one are claimed and completed
        new = await client.spawn("idle", "job", {"new": True})
        claims = await client.claim("idle", "new-worker", 30, qty=10)
        assert [c.task_id for c in claims] == [ids["pending"], new.task_id]
        done = await client.complete_runs("idle", [(c.run_id, c.task_id.hex) for c in claims])
        assert all(done.values())
        for task_id in (ids["pending"], new.task_id):
            result = await client.get_result("idle", task_id)
            assert (result.state, result.result) == (TaskState.COMPLETED, task_id.hex)


# --- fresh equals upgraded -----------------------------------------------------------------------


def _pg_dump() -> Path:
    """A pg_dump at least as new as the server (an older one refuses to dump): the one of the
    durable[embedded] extra (PostgreSQL 18) when installed, else Debian's, else the PATH's."""
    candidates = [Path("/usr/lib/postgresql/15/bin/pg_dump")]
    with contextlib.suppress(DatabaseUnavailable):  # the extra is not installed
        candidates.insert(0, _bin_dir() / "pg_dump")
    found = next((c for c in candidates if c.is_file()), None) or shutil.which("pg_dump")
    assert found, "no pg_dump: pip install 'durable[embedded]' (the dev extra has it)"
    return Path(found)


async def _schema_dump(dsn: str) -> str:
    """``pg_dump --schema-only --schema=durable``: tables, indexes, constraints, functions and
    grants, normalized only where two equal databases must differ."""
    command: list[str | Path] = [
        _pg_dump(),
        "--schema-only",
        "--schema=durable",
        "--no-password",
        f"--dbname={dsn}",
    ]
    with anyio.fail_after(60):
        done = await anyio.run_process(command, check=False)
    assert done.returncode == 0, done.stderr.decode()
    database = urllib.parse.urlsplit(dsn).path.lstrip("/")
    lines = [
        line.replace(database, "<database>")
        for line in done.stdout.decode().splitlines()
        # pg_dump >= 17.6 fences its output with a random key
        if not line.startswith(("\\restrict ", "\\unrestrict "))
    ]
    # a server may stamp each column with when it was added (attoptions pg_attver=...)
    return re.sub(r"pg_attver=\d+", "pg_attver=N", "\n".join(lines))


async def test_a_fresh_database_and_an_upgraded_one_have_the_same_schema(
    dsn: str, v13_dsn: str
) -> None:
    async with Client(v13_dsn):  # upgrades it
        pass
    fresh, upgraded = await _schema_dump(dsn), await _schema_dump(v13_dsn)
    assert "CREATE TABLE durable.tasks" in fresh
    assert "CREATE FUNCTION durable.claim(" in fresh
    assert "GRANT ALL ON FUNCTION durable.claim(" in fresh
    assert "CREATE INDEX tasks_pending ON durable.tasks" in fresh
    assert fresh == upgraded


# --- the layouts refuse each other's databases where they must -----------------------------------

#: The versions a v13-era migrator does not know, as its refusal lists them: [14, 15, ...].
_AFTER_V13 = re.escape(str(list(range(14, load_migrations()[-1].version + 1))))


async def test_the_v13_era_migrator_refuses_a_database_of_the_new_layout(dsn: str) -> None:
    async with connection(dsn) as conn:
        with pytest.raises(SchemaError, match=rf"{_AFTER_V13}.*upgrade durable"):
            await _migrate_like_v13(conn)


async def test_the_v13_era_migrator_refuses_an_upgraded_database(v13_dsn: str) -> None:
    async with Client(v13_dsn):
        pass
    async with connection(v13_dsn) as conn:
        with pytest.raises(SchemaError, match=rf"{_AFTER_V13}.*upgrade durable"):
            await _migrate_like_v13(conn)


@pytest.mark.parametrize("migrate", [True, False], ids=["migrate", "check"])
async def test_a_database_below_the_baseline_is_refused(server_dsn: str, migrate: bool) -> None:
    async with empty_database(server_dsn, prefix="u") as dsn:
        async with connection(dsn) as conn:
            await _migrate_like_v13(conn, through=12)
        with pytest.raises(SchemaError, match=r"version 12, below 13.*earlier durable"):
            await Client(dsn, migrate=migrate).connect()
        async with connection(dsn) as conn:
            versions = await conn.fetchval("select max(version) from durable.schema_migrations")
        assert versions == 12  # untouched


# --- the finished tasks of the old layout move to history ----------------------------------------


async def test_an_upgraded_database_answers_the_same_once_its_history_moved(
    v13_dsn: str,
) -> None:
    async with connection(v13_dsn) as conn:
        ids = await _fill_like_a_v13_worker(conn)
        keyed = await conn.fetchval(
            "select task_id from durable.spawn('done', 'job', 'null', $1::jsonb)",
            '{"idempotency_key": "k"}',
        )
        run = await conn.fetchval("select run_id from durable.claim('done', 'old-worker', 300)")
        await conn.execute("select durable.complete('done', $1, '\"kept\"')", run)

    async with Client(v13_dsn) as client:  # connecting migrates: the finished tasks stay hot

        async def answers() -> list[Any]:
            return [
                await client.get_task(None, ids["completed"]),
                await client.get_task(None, ids["failed"]),
                await client.get_result(None, ids["completed"]),
                await client.get_result(None, ids["failed"]),
                await client.get_checkpoints("done", ids["completed"]),
                await client.failed_work(),
                await client.list_tasks(),
                await client.spawn(
                    "done", "job", None, SpawnOptions(idempotency_key="k")
                ),  # the key, from the tasks of the old layout
            ]

        before = await answers()
        assert before[-1].task_id == keyed
        assert await client.move_all_to_history() == 3  # completed, failed, keyed
        async with connection(v13_dsn) as conn:
            assert await conn.fetchval("select count(*) from durable.tasks_history") == 3
            assert await conn.fetchval("select count(*) from durable.tasks_history_default") == 0
        assert await answers() == before
