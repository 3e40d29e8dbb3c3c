"""Spawns sent one after another keep their pool connection (``store._KeptConnection``): the
pool gets it back once it went unused a moment (``KEEP_S``), after an error at once, and on
close."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from durable.protocol.codec import RawJson
from durable.protocol.errors import InvalidQueueName
from durable.protocol.store import Store

pytestmark = pytest.mark.anyio

_NO_OPTIONS = RawJson(b"{}")


async def spawn(store: Store, i: int) -> None:
    await store.spawn("q", "noop", RawJson(b"%d" % i), _NO_OPTIONS)


async def test_a_pool_of_one_serves_other_statements_between_spawns(dsn: str) -> None:
    store = await Store.open(dsn, max_size=1)
    try:
        with anyio.fail_after(10):  # a connection kept for good would leave the claims waiting
            for i in range(20):
                await spawn(store, i)
            claimed = await store.claim("q", "w1", 60, 5)
            async with anyio.create_task_group() as tg:  # spawns and claims take turns
                tg.start_soon(lambda: _spawns(store, 20))
                for _ in range(5):
                    claimed += await store.claim("q", "w1", 60, 5)
        assert len(claimed) == 30
    finally:
        with anyio.fail_after(10):
            await store.close()


async def _spawns(store: Store, n: int) -> None:
    for i in range(n):
        await spawn(store, i)


async def test_concurrent_spawns_each_get_a_connection(dsn: str) -> None:
    store = await Store.open(dsn, max_size=3)
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(lambda: _spawns(store, 30))
            assert len(await store.claim("q", "w1", 60, 200)) == 90
    finally:
        await store.close()


async def test_a_failed_or_cancelled_spawn_gives_its_connection_back(
    dsn: str, raw: asyncpg.Connection
) -> None:
    store = await Store.open(dsn, max_size=1)
    try:
        with pytest.raises(InvalidQueueName):
            await store.spawn("Not A Queue", "noop", RawJson(b"1"), _NO_OPTIONS)
        await spawn(store, 1)
        # a spawn cancelled while it waits for a lock: its connection goes back to the pool
        async with raw.transaction():
            await raw.execute("lock table durable.tasks in exclusive mode")
            with anyio.move_on_after(0.5) as scope:
                await spawn(store, 2)
            assert scope.cancelled_caught
        with anyio.fail_after(10):
            await spawn(store, 3)
            # (the cancelled one counts if it committed before the server heard the cancel)
            assert len(await store.claim("q", "w1", 60, 10)) in (2, 3)
    finally:
        with anyio.fail_after(10):
            await store.close()
