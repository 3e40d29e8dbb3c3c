"""spawn_many's two forms: items sharing their options go as typed arrays (spawn_batch), items
with options of their own as one JSON document (spawn_many); both answer alike."""

from __future__ import annotations

import asyncpg
import pytest

from durable.client import Client
from durable.errors import InvalidArgument
from durable.records import SpawnOptions, TaskState, Unique

pytestmark = pytest.mark.anyio

Q = "batch"


async def test_shared_options_and_per_item_keys(client: Client) -> None:
    await client.spawn(Q, "job", "old", SpawnOptions(idempotency_key="k-old"))
    shared = SpawnOptions(priority=7, tags=["nightly"], max_attempts=5, delay=3600)
    items = [
        ("job", 1, shared),
        ("job", 2, SpawnOptions(priority=7, tags=["nightly"], max_attempts=5, delay=3600,
                                idempotency_key="k1")),
        ("job", 3, SpawnOptions(priority=7, tags=["nightly"], max_attempts=5, delay=3600,
                                idempotency_key="k1")),  # the same key in the same batch
        ("job", 4, SpawnOptions(priority=7, tags=["nightly"], max_attempts=5, delay=3600,
                                idempotency_key="k-old")),  # a key stored before
    ]  # fmt: skip
    infos = await client.spawn_many(Q, items)
    assert [i.created for i in infos] == [True, True, False, False]
    assert infos[2].task_id == infos[1].task_id
    assert infos[2].run_id == infos[1].run_id
    old = await client.get_task(Q, infos[3].task_id)
    assert old.params == "old"
    for info in infos[:2]:
        task = await client.get_task(Q, info.task_id)
        assert (task.max_attempts, task.tags, task.state) == (5, ["nightly"], TaskState.PENDING)
        assert task.scheduled_at is not None
        assert task.scheduled_at > task.created_at
    [claim] = await client.claim(Q, "w", 30, qty=10)  # the others start in an hour
    assert claim.params == "old"


async def test_items_with_options_of_their_own_go_one_by_one(client: Client) -> None:
    infos = await client.spawn_many(
        Q,
        [
            ("job", 1, SpawnOptions(priority=1)),
            ("job", 2, SpawnOptions(priority=9)),
            ("job", 3, SpawnOptions(unique=Unique())),
        ],
    )
    assert all(i.created for i in infos)
    claims = await client.claim(Q, "w", 30, qty=3)
    assert [c.params for c in claims] == [2, 1, 3]  # by priority
    assert await client.spawn_many(Q, []) == []


async def test_spawn_batch_refuses_what_it_cannot_share(client: Client) -> None:
    with pytest.raises(InvalidArgument, match="task name must be 1 to 255 characters"):
        await client.spawn_many(Q, [("job", 1), ("", 2)])
    with pytest.raises(asyncpg.PostgresError, match="use spawn_many"):
        await client.store._pool.fetch(  # the SQL function itself, as another client would call it
            "select * from durable.spawn_batch($1, $2, $3, null, $4)",
            Q,
            ["job"],
            [1],
            {"unique": {}},
        )
    assert await client.queue_counts() == []
