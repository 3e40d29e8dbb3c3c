"""Spawning inside the caller's transaction (``spawn(..., connection=conn)``), end to end: the
task exists only if the caller commits, workers wake at the commit, keys and options behave as
usual, and a database without durable's protocol gives ``SchemaError``. With an asyncpg
connection and with SQLAlchemy's AsyncConnection and AsyncSession on asyncpg."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool
from support.database import connection, empty_database
from support.in_process import running_worker

from durable import (
    DatabaseUnavailable,
    Durable,
    InvalidArgument,
    SchemaError,
    TaskContext,
    TaskNotFound,
    TaskState,
    Unique,
)
from durable.client import CHANNEL_WORK

pytestmark = pytest.mark.anyio

#: A worker that polls this rarely runs a task within seconds only because NOTIFY woke it.
SLOW_POLL_S = 60.0
#: How long a test listens for a NOTIFY that must not come.
QUIET_S = 0.5


def make_app(dsn: str) -> Durable:
    app = Durable(dsn)

    @app.task(name="welcome")
    async def welcome(ctx: TaskContext, params: dict[str, Any]) -> str:
        return f"welcome, {params['user']}"

    return app


def sqlalchemy_url(dsn: str) -> str:
    return "postgresql+asyncpg://" + dsn.split("://", 1)[1]


@contextlib.asynccontextmanager
async def engine_of(dsn: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url(dsn), poolclass=NullPool)
    try:
        yield engine
    finally:
        await engine.dispose()


class Notifications:
    """The NOTIFYs of ``durable_work`` seen by a connection of its own."""

    def __init__(self) -> None:
        self.queues: list[str] = []
        self.arrived = anyio.Event()

    def __call__(self, conn: object, pid: int, channel: str, payload: object) -> None:
        assert isinstance(payload, str)
        self.queues.append(payload)
        self.arrived.set()


@contextlib.asynccontextmanager
async def listening(dsn: str) -> AsyncIterator[Notifications]:
    seen = Notifications()
    async with connection(dsn) as conn:
        await conn.add_listener(CHANNEL_WORK, seen)
        yield seen


async def count_tasks(dsn: str) -> int:
    async with connection(dsn) as conn:
        count: int = await conn.fetchval("select count(*) from durable.tasks")
        return count


# --- asyncpg ------------------------------------------------------------------------------------


async def test_a_rollback_leaves_no_task_and_wakes_nobody(dsn: str) -> None:
    app = make_app(dsn)
    welcome = app.registry["welcome"]
    async with listening(dsn) as seen, connection(dsn) as conn:
        tx = conn.transaction()
        await tx.start()
        handle = await welcome.spawn({"user": "ada"}, connection=conn)
        assert handle.created
        await tx.rollback()
        await anyio.sleep(QUIET_S)
        assert seen.queues == []
    assert await count_tasks(dsn) == 0
    async with app:
        with pytest.raises(TaskNotFound):
            await app.get_task(handle.task_id)


async def test_a_commit_makes_the_task_and_wakes_a_worker_then(dsn: str) -> None:
    app = make_app(dsn)
    welcome = app.registry["welcome"]
    async with running_worker(app, poll_interval=SLOW_POLL_S), listening(dsn) as seen:
        async with connection(dsn) as conn, conn.transaction():
            await conn.execute("create table signups (name text primary key)")
            await conn.execute("insert into signups values ('ada')")
            handle = await welcome.spawn({"user": "ada"}, connection=conn)
            # inside the transaction: nobody else sees the task, no worker was woken
            with pytest.raises(TaskNotFound):
                await app.get_task(handle.task_id)
            await anyio.sleep(QUIET_S)
            assert seen.queues == []
        with anyio.fail_after(10):
            await seen.arrived.wait()
        assert seen.queues == ["default"]
        with anyio.fail_after(10):  # well before the worker's next poll: NOTIFY woke it
            result = await handle.result()
        assert result.result == "welcome, ada"


async def test_a_duplicate_key_inside_the_transaction_returns_the_first_task(dsn: str) -> None:
    app = make_app(dsn)
    welcome = app.registry["welcome"]
    async with connection(dsn) as conn, conn.transaction():
        first = await welcome.spawn({"user": "ada"}, idempotency_key="w-ada", connection=conn)
        again = await welcome.spawn({"user": "bob"}, idempotency_key="w-ada", connection=conn)
        assert first.created
        assert not again.created
        assert again.task_id == first.task_id
    async with app:  # and after the commit, a spawn on the pool finds it too
        later = await welcome.spawn({"user": "eve"}, idempotency_key="w-ada")
        assert (later.created, later.task_id) == (False, first.task_id)
        record = await app.get_task(first.task_id)
        assert record.params == {"user": "ada"}
    assert await count_tasks(dsn) == 1


async def test_every_option_and_the_params_arrive_as_on_the_pool(dsn: str) -> None:
    app = make_app(dsn)
    params = {"user": "ådä ✓", "nested": [1, 2.5, None, {"k": True}]}
    async with connection(dsn) as conn:
        # the caller's own jsonb codec (text, stdlib json) does not change what durable stores
        await conn.set_type_codec(
            "jsonb", schema="pg_catalog", encoder=json.dumps, decoder=json.loads
        )
        async with conn.transaction():
            handle = await app.spawn(
                "welcome",
                params,
                connection=conn,
                tags=["signup", "tx"],
                priority=5,
                max_attempts=7,
                delay=3600,
                headers={"source": "test"},
            )
    async with app:
        record = await app.get_task(handle.task_id)
    assert record.params == params
    assert record.tags == ["signup", "tx"]
    assert record.state is TaskState.PENDING  # delayed an hour
    assert record.max_attempts == 7
    assert record.headers == {"source": "test"}


async def test_uniqueness_and_dependencies_hold_inside_one_transaction(dsn: str) -> None:
    app = make_app(dsn)
    welcome = app.registry["welcome"]
    async with running_worker(app), connection(dsn) as conn:
        async with conn.transaction():
            first = await welcome.spawn(
                {"user": "ada", "n": 1}, unique=Unique(keys=["user"]), connection=conn
            )
            duplicate = await welcome.spawn(
                {"user": "ada", "n": 2}, unique=Unique(keys=["user"]), connection=conn
            )
            after = await welcome.spawn(
                {"user": "bob"}, depends_on=[first.task_id], connection=conn
            )
        assert (duplicate.created, duplicate.task_id) == (False, first.task_id)
        with anyio.fail_after(20):
            assert (await after.result()).result == "welcome, bob"
        record = await app.get_task(first.task_id)
        assert record.state is TaskState.COMPLETED
        assert record.params == {"user": "ada", "n": 1}


async def test_spawn_many_on_a_connection_commits_or_rolls_back_together(dsn: str) -> None:
    app = make_app(dsn)
    welcome = app.registry["welcome"]
    async with connection(dsn) as conn:
        tx = conn.transaction()
        await tx.start()
        handles = await welcome.spawn_many([{"user": "a"}, {"user": "b"}], connection=conn)
        assert [h.created for h in handles] == [True, True]
        await tx.rollback()
        assert await count_tasks(dsn) == 0
        async with conn.transaction():
            handles = await app.spawn_many(
                [(welcome, {"user": "a"}), ("welcome", {"user": "b"})], connection=conn
            )
            info = await app.client.spawn_many(
                "default", [("welcome", {"user": "c"})], connection=conn
            )
    assert await count_tasks(dsn) == 3
    async with running_worker(app):
        with anyio.fail_after(10):
            results = [(await h.result()).result for h in handles]
        assert results == ["welcome, a", "welcome, b"]
        assert (await app.get_task(info[0].task_id)).params == {"user": "c"}


async def test_a_connection_killed_before_its_commit_leaves_no_task(dsn: str) -> None:
    app = make_app(dsn)
    async with listening(dsn) as seen, connection(dsn) as killer:
        conn = await asyncpg.connect(dsn)
        try:
            tx = conn.transaction()
            await tx.start()
            await app.spawn("welcome", {"user": "ada"}, connection=conn)
            assert await killer.fetchval("select pg_terminate_backend($1)", conn.get_server_pid())
            with pytest.raises(DatabaseUnavailable, match="caller's connection"):
                await app.spawn("welcome", {"user": "bob"}, connection=conn)
        finally:
            conn.terminate()
        await anyio.sleep(QUIET_S)
        assert seen.queues == []
    assert await count_tasks(dsn) == 0


async def test_a_database_without_durable_gives_schema_error(server_dsn: str) -> None:
    app = make_app("postgresql://nobody@127.0.0.1:1/never-connected")
    async with empty_database(server_dsn, prefix="noschema") as bare:
        async with connection(bare) as conn:
            with pytest.raises(SchemaError, match="durable migrate"):
                await app.spawn("welcome", {"user": "ada"}, connection=conn)
            with pytest.raises(SchemaError):
                await app.registry["welcome"].spawn_many([{"user": "a"}], connection=conn)
        async with engine_of(bare) as engine, AsyncSession(engine) as session:
            with pytest.raises(SchemaError, match="durable migrate"):
                await app.spawn("welcome", {"user": "ada"}, connection=session)


async def test_what_is_not_a_connection_is_refused_by_name(dsn: str) -> None:
    app = make_app(dsn)
    with pytest.raises(InvalidArgument, match="got str"):
        await app.spawn("welcome", {}, connection="postgresql://")  # type: ignore[arg-type]


# --- SQLAlchemy ---------------------------------------------------------------------------------


async def test_a_sqlalchemy_session_commits_the_row_and_the_task_together(dsn: str) -> None:
    app = make_app(dsn)
    welcome = app.registry["welcome"]
    async with connection(dsn) as conn:
        await conn.execute("create table signups (name text primary key)")
    async with engine_of(dsn) as engine:
        sessions = async_sessionmaker(engine)
        async with running_worker(app, poll_interval=SLOW_POLL_S), listening(dsn) as seen:
            # the spawn is the session's first statement: it still joins the transaction
            async with sessions() as session, session.begin():
                first = await welcome.spawn({"user": "ada"}, connection=session)
                await session.execute(text("insert into signups values ('ada')"))
            async with sessions() as session, session.begin():
                await session.execute(text("insert into signups values ('bob')"))
                second = await welcome.spawn({"user": "bob"}, connection=session)
            with anyio.fail_after(10):
                await seen.arrived.wait()
                assert (await first.result()).result == "welcome, ada"
                assert (await second.result()).result == "welcome, bob"


async def test_a_sqlalchemy_rollback_takes_the_task_with_it(dsn: str) -> None:
    app = make_app(dsn)
    welcome = app.registry["welcome"]
    async with connection(dsn) as conn:
        await conn.execute("create table signups (name text primary key)")
    async with engine_of(dsn) as engine, listening(dsn) as seen:
        async with AsyncSession(engine) as session:
            await session.execute(text("insert into signups values ('ada')"))
            await welcome.spawn({"user": "ada"}, connection=session)
            await session.rollback()
        # the spawn as the session's first statement (SQLAlchemy begins on the driver lazily)
        async with AsyncSession(engine) as session:
            await welcome.spawn({"user": "eve"}, connection=session)
            await session.rollback()
        async with engine.connect() as sa_conn:
            await welcome.spawn({"user": "eve"}, connection=sa_conn)
            await sa_conn.rollback()

        # a failed insert after the spawn rolls both back
        async def sign_up_twice() -> None:
            async with engine.begin() as sa_conn:
                await sa_conn.execute(text("insert into signups values ('bob')"))
                await welcome.spawn({"user": "bob"}, connection=sa_conn)
                await sa_conn.execute(text("insert into signups values ('bob')"))

        with pytest.raises(IntegrityError, match="duplicate key"):
            await sign_up_twice()
        await anyio.sleep(QUIET_S)
        assert seen.queues == []
    assert await count_tasks(dsn) == 0


async def test_a_sqlalchemy_connection_with_a_duplicate_key(dsn: str) -> None:
    app = make_app(dsn)
    async with engine_of(dsn) as engine, engine.begin() as sa_conn:
        first = await app.spawn("welcome", {"user": "a"}, idempotency_key="k", connection=sa_conn)
        again = await app.spawn("welcome", {"user": "b"}, idempotency_key="k", connection=sa_conn)
    assert (first.created, again.created, again.task_id) == (True, False, first.task_id)
    assert await count_tasks(dsn) == 1


async def test_a_pool_connection_works_too(dsn: str) -> None:
    app = make_app(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn, conn.transaction():
            handle = await app.spawn("welcome", {"user": "ada"}, connection=conn)
    finally:
        await pool.close()
    async with app:
        assert (await app.get_task(handle.task_id)).params == {"user": "ada"}
