"""``app.sync``, the blocking API: spawns from many threads at once, results that block, errors
as the async API raises them, cancel, spawn_many, and its lifecycle (open on first use, close,
reopen, a bad DSN). The blocking calls run in threads of the test (``anyio.to_thread``) while a
worker of another app object, the worker process's stand-in, runs in the test's event loop."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from support.in_process import running_worker

from durable import (
    DatabaseUnavailable,
    Durable,
    DurableError,
    SyncDurable,
    SyncTaskContext,
    SyncTaskHandle,
    TaskFailed,
    TaskNotFound,
    TaskState,
)

pytestmark = pytest.mark.anyio


def make_app(dsn: str) -> Durable:
    app = Durable(dsn)

    @app.task(name="double")
    def double(ctx: SyncTaskContext, params: dict[str, int]) -> int:
        return params["n"] * 2

    @app.task(name="explode", max_attempts=1)
    def explode(ctx: SyncTaskContext, params: None) -> None:
        raise RuntimeError("boom")

    return app


async def test_many_threads_spawn_and_wait_through_one_portal(dsn: str) -> None:
    producer, worker_app = make_app(dsn), make_app(dsn)
    double = producer.registry["double"]
    results: dict[int, int] = {}
    threads: set[int] = set()

    def one_thread(base: int) -> None:
        handles = [producer.sync.spawn(double, {"n": base + i}) for i in range(5)]
        threads.add(threading.get_ident())
        for i, handle in enumerate(handles):
            assert isinstance(handle, SyncTaskHandle)
            results[base + i] = handle.result(timeout=30).result

    try:
        async with running_worker(worker_app), anyio.create_task_group() as tg:
            for base in range(0, 100, 10):  # ten threads, five spawns each
                tg.start_soon(anyio.to_thread.run_sync, one_thread, base)
        assert results == {n: 2 * n for n in range(0, 100, 10) for n in range(n, n + 5)}
        assert len(threads) == 10
        assert producer.sync.is_open
    finally:
        await anyio.to_thread.run_sync(producer.sync.close)
    assert not producer.sync.is_open


async def test_errors_cancel_and_records_as_the_async_api_gives_them(dsn: str) -> None:
    producer, worker_app = make_app(dsn), make_app(dsn)

    def produce() -> tuple[Any, ...]:
        with producer.sync as sync:  # opens now, closes at the end of the block
            failed = sync.spawn(producer.registry["explode"])
            later = sync.spawn("double", {"n": 1}, delay=3600, tags=["sync"])
            record = sync.get_task(later.task_id)
            sync.cancel(later.task_id)
            cancelled = sync.get_task(later.task_id).state
            with pytest.raises(TaskFailed):
                sync.result(later.task_id, timeout=10)
            with pytest.raises(TaskFailed, match="boom"):
                failed.result(timeout=30)
            with pytest.raises(TaskNotFound):
                sync.get_task(later.run_id)
            by_name = sync.spawn("not_here", {"x": 1}, queue="elsewhere")
            many = sync.spawn_many([("double", {"n": 3}), ("double", {"n": 4})])
            results = [handle.result(timeout=30).result for handle in many]
            return record, cancelled, by_name, results

    async with running_worker(worker_app):
        record, cancelled, by_name, results = await anyio.to_thread.run_sync(produce)
    assert record.state is TaskState.PENDING
    assert record.tags == ["sync"]
    assert cancelled is TaskState.CANCELLED
    assert (by_name.queue, by_name.task_name, by_name.created) == ("elsewhere", "not_here", True)
    assert results == [6, 8]
    assert not producer.sync.is_open


async def test_a_closed_portal_reopens_on_the_next_call(dsn: str) -> None:
    app = make_app(dsn)

    def twice() -> list[bool]:
        created = [app.sync.spawn("double", {"n": 1}, idempotency_key="k").created]
        app.sync.close()
        app.sync.close()  # closing twice is harmless
        created.append(app.sync.spawn("double", {"n": 1}, idempotency_key="k").created)
        app.sync.close()
        return created

    assert await anyio.to_thread.run_sync(twice) == [True, False]


async def test_an_unreachable_database_fails_the_call_and_leaves_it_closed() -> None:
    sync = SyncDurable(Durable("postgresql://nobody@127.0.0.1:1/nowhere").registry)

    def call() -> None:
        with pytest.raises(DatabaseUnavailable, match=r"127\.0\.0\.1:1"):
            sync.spawn("double", {"n": 1}, queue="default")

    await anyio.to_thread.run_sync(call)
    assert not sync.is_open
    assert [t for t in threading.enumerate() if t.name == "durable-sync"] == []  # it ended


async def test_an_app_is_entered_from_async_code_or_used_through_sync_not_both(dsn: str) -> None:
    app = make_app(dsn)
    async with app:
        with pytest.raises(DurableError, match="connected from async code"):
            await anyio.to_thread.run_sync(app.sync.open)
    assert not app.sync.is_open
    await anyio.to_thread.run_sync(app.sync.open)
    try:
        with pytest.raises(DurableError, match=r"app\.sync is open"):
            await app.__aenter__()
    finally:
        await anyio.to_thread.run_sync(app.sync.close)
    async with app:  # closed: async code may enter it again
        assert app.client.connected
