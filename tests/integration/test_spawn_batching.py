"""Concurrent spawns share a statement and a commit (the client's spawn batcher), end to end:
fewer statements than spawns, each caller its own handle or its own error, duplicates answered
as one at a time, one coroutine's spawns in order, a lone spawn sent at once."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
from support.database import connection, fetchval

from durable.client import Client
from durable.protocol.errors import DurableError, InvalidArgument, NotSerializable
from durable.protocol.records import SpawnInfo, SpawnOptions, Unique

pytestmark = pytest.mark.anyio

Q = "batched"


async def _spawn_all(client: Client, calls: list[tuple[Any, SpawnOptions | None]]) -> list[Any]:
    """Spawn each ``(params, options)`` from a coroutine of its own, all at once; per call, its
    SpawnInfo or the error it raised."""
    got: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        params, options = calls[i]
        try:
            got[i] = await client.spawn(Q, "job", params, options)
        except DurableError as exc:
            got[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(one, i)
    return got


async def test_fifty_concurrent_spawns_take_fewer_statements_than_spawns(
    client: Client, dsn: str
) -> None:
    got = await _spawn_all(client, [({"i": i}, None) for i in range(50)])
    assert all(isinstance(info, SpawnInfo) and info.created for info in got)
    assert len({info.task_id for info in got}) == 50
    statements, batched, refused = client.spawn_batches
    assert refused == 0
    assert batched >= 40  # all but the few sent alone before the first one was in flight
    assert statements < batched
    assert statements + (50 - batched) < 50  # fewer statements than spawns, all told
    assert await fetchval(dsn, "select count(*) from durable.tasks") == 50
    assert await fetchval(dsn, "select count(*) from durable.runs where state = 'pending'") == 50
    params = await fetchval(
        dsn, "select array_agg((params->>'i')::int order by (params->>'i')::int) from durable.tasks"
    )
    assert params == list(range(50))


async def test_a_lone_spawn_is_sent_at_once_and_alone(client: Client) -> None:
    with anyio.fail_after(5):
        for i in range(3):
            assert (await client.spawn(Q, "job", i)).created
    assert client.spawn_batches == (0, 0, 0)  # never through the batcher's task


async def test_a_bad_spawn_fails_alone_and_the_others_are_made(client: Client, dsn: str) -> None:
    calls: list[tuple[Any, SpawnOptions | None]] = [({"i": i}, None) for i in range(30)]
    calls[7] = ({"i": 7}, SpawnOptions(priority=2**40))  # refused by the database
    calls[19] = ({"bad": float("nan")}, None)  # refused before it joins a batch
    calls[23] = ({"i": 23}, SpawnOptions(max_attempts=2**40))  # refused by the database
    got = await _spawn_all(client, calls)
    assert isinstance(got[7], InvalidArgument)
    assert "out of range" in str(got[7])
    assert isinstance(got[19], NotSerializable)
    assert isinstance(got[23], InvalidArgument)
    good = [g for i, g in enumerate(got) if i not in (7, 19, 23)]
    assert all(isinstance(g, SpawnInfo) and g.created for g in good)
    batches = client.spawn_batches
    assert batches.statements >= 1
    assert batches.refused >= 1  # the batch with the bad ones, sent again one by one
    assert await fetchval(dsn, "select count(*) from durable.tasks") == 27


async def test_a_duplicate_key_in_a_batch_returns_the_existing_task(
    client: Client, dsn: str
) -> None:
    first = await client.spawn(Q, "job", "before", SpawnOptions(idempotency_key="old"))
    calls: list[tuple[Any, SpawnOptions | None]] = []
    for i in range(40):
        key = "old" if i % 4 == 0 else "new" if i % 4 == 1 else None
        calls.append((i, SpawnOptions(idempotency_key=key) if key else None))
    got = await _spawn_all(client, calls)
    assert client.spawn_batches[0] >= 1
    assert all(isinstance(g, SpawnInfo) for g in got)
    old = [g for i, g in enumerate(got) if i % 4 == 0]
    new = [g for i, g in enumerate(got) if i % 4 == 1]
    assert all(
        not g.created and g.task_id == first.task_id and g.run_id == first.run_id for g in old
    )
    assert sum(g.created for g in new) == 1
    assert len({(g.task_id, g.run_id) for g in new}) == 1
    assert sum(g.created for i, g in enumerate(got) if i % 4 >= 2) == 20
    assert await fetchval(dsn, "select count(*) from durable.tasks") == 1 + 1 + 20


async def test_each_coroutine_s_spawns_keep_their_order(client: Client) -> None:
    spawned: dict[int, list[uuid.UUID]] = {c: [] for c in range(10)}

    async def producer(c: int) -> None:
        for i in range(15):
            info = await client.spawn(Q, "job", {"c": c, "i": i})
            spawned[c].append(info.task_id)

    async with anyio.create_task_group() as tg:
        for c in range(10):
            tg.start_soon(producer, c)
    assert client.spawn_batches[0] < 150
    claimed: list[dict[str, int]] = []
    while batch := await client.claim(Q, "w", qty=50):
        claimed += [claim.params for claim in batch]
    assert len(claimed) == 150
    for c in range(10):  # claims come in each producer's spawn order
        assert [p["i"] for p in claimed if p["c"] == c] == list(range(15))


async def test_spawns_in_flight_at_close_are_written_and_later_ones_refused(dsn: str) -> None:
    client = Client(dsn, pool_size=4)
    got: list[Any] = []

    async def one(i: int) -> None:
        try:
            got.append(await client.spawn(Q, "job", i))
        except DurableError as exc:
            got.append(exc)

    # the client's task group inside this one: closed before this one ends
    async with anyio.create_task_group() as tg, client:
        for i in range(20):
            tg.start_soon(one, i)
        await anyio.wait_all_tasks_blocked()  # one spawn in flight, the others queued
    assert len(got) == 20
    made = [g for g in got if isinstance(g, SpawnInfo)]
    assert len(made) + sum("not connected" in str(g) for g in got) == 20
    assert len(made) >= 1
    assert await fetchval(dsn, "select count(*) from durable.tasks") == len(made)
    with pytest.raises(DurableError, match="not connected"):
        await client.spawn(Q, "job", 99)


async def test_every_spawn_path_writes_the_same_rows(client: Client, dsn: str) -> None:
    """durable.spawn without options (one statement), with an option at its default (the
    general path), alone through spawn_many and batched: the same task and run, ids and times
    aside; the one notification each."""
    made = [
        await client.spawn(Q, "job", {"i": 0}),
        await client.spawn(Q, "job", {"i": 0}, SpawnOptions(priority=0)),
        (await client.spawn_many(Q, [("job", {"i": 0})]))[0],
        (await client.spawn_many(Q, [("job", {"i": 0}, SpawnOptions(priority=0))]))[0],
    ]
    ignored = {"task_id", "run_id", "created_at", "scheduled_at", "available_at", "updated_at"}
    async with connection(dsn) as conn:
        tasks = [
            {k: v for k, v in dict(r).items() if k not in ignored}
            for r in await conn.fetch(
                "select * from durable.tasks where task_id = any($1::uuid[]) order by task_id",
                [m.task_id for m in made],
            )
        ]
        runs = [
            {k: v for k, v in dict(r).items() if k not in ignored}
            for r in await conn.fetch(
                "select * from durable.runs where run_id = any($1::uuid[]) order by run_id",
                [m.run_id for m in made],
            )
        ]
        times = await conn.fetch(
            "select t.created_at = t.scheduled_at and r.available_at = t.created_at"
            " and r.created_at = t.created_at as same"
            " from durable.tasks t join durable.runs r using (task_id)"
        )
    assert len(tasks) == len(runs) == 4
    assert all(t == tasks[0] for t in tasks)
    assert all(r == runs[0] for r in runs)
    assert all(row["same"] for row in times)
    assert all(m.created and m.attempt == 1 for m in made)


async def test_two_clients_batching_the_same_keys_in_opposite_orders_never_deadlock(
    dsn: str,
) -> None:
    keys = [f"k{i:03}" for i in range(300)]
    infos: list[SpawnInfo] = []

    async def producer(client: Client, key: str) -> None:
        infos.append(await client.spawn(Q, "job", key, SpawnOptions(idempotency_key=key)))

    async with (
        Client(dsn, pool_size=4) as one,
        Client(dsn, pool_size=4) as other,
        anyio.create_task_group() as tg,
    ):
        for a, b in zip(keys, reversed(keys), strict=True):
            tg.start_soon(producer, one, a)
            tg.start_soon(producer, other, b)
    assert len(infos) == 600
    assert sum(i.created for i in infos) == 300
    assert len({i.task_id for i in infos}) == 300
    assert one.spawn_batches[0] >= 1
    assert other.spawn_batches[0] >= 1
    # no batch was refused (a deadlock between the two would be, then sent one by one)
    assert one.spawn_batches.refused == other.spawn_batches.refused == 0


async def test_spawns_that_lock_other_rows_are_sent_alone(client: Client, dsn: str) -> None:
    parent = await client.spawn(Q, "parent", None)
    calls: list[tuple[Any, SpawnOptions | None]] = [
        (i, SpawnOptions(parent_task_id=parent.task_id)) for i in range(10)
    ]
    calls += [(i, SpawnOptions(depends_on=[parent.task_id])) for i in range(10)]
    calls += [({"u": i % 2}, SpawnOptions(unique=Unique())) for i in range(10)]
    got = await _spawn_all(client, calls)
    assert all(isinstance(g, SpawnInfo) for g in got)
    assert client.spawn_batches == (0, 0, 0)
    assert sum(g.created for g in got[20:]) == 2  # one task per unique params


async def test_a_client_connected_without_async_with_spawns_each_on_its_own(dsn: str) -> None:
    """connect() and close() may run in different tasks (a blocking portal's calls do): such a
    client opens no task group, and its concurrent spawns go one by one, as before batching."""
    client = Client(dsn, pool_size=4)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.connect)  # in a task of its own, which ends
        got = await _spawn_all(client, [(i, None) for i in range(20)])
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.close)  # in another task
    assert all(isinstance(g, SpawnInfo) and g.created for g in got)
    assert client.spawn_batches == (0, 0, 0)
    assert await fetchval(dsn, "select count(*) from durable.tasks") == 20
