"""Retention: old finished tasks go, with their runs and checkpoints; live work stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from support.database import connection, table_counts

from durable.client import Client
from durable.protocol.errors import InvalidArgument
from durable.protocol.records import FailureReason, SpawnOptions, TaskState

pytestmark = pytest.mark.anyio


async def _counts(dsn: str) -> tuple[int, int, int]:
    """Tasks, runs and checkpoints."""
    async with connection(dsn) as conn:
        tasks, runs, checkpoints, _ = await table_counts(conn)
    return tasks, runs, checkpoints


async def test_prune_deletes_old_finished_tasks_with_their_runs_and_checkpoints(
    client: Client, dsn: str
) -> None:
    for i in range(5):
        await client.spawn("q", "t", i)
    claims = await client.claim("q", "w", 30, qty=3)
    await client.set_checkpoint("q", claims[0].run_id, "s", 1)
    await client.complete("q", claims[0].run_id, "done")
    await client.fail("q", claims[1].run_id, {"message": "x"}, FailureReason.CANCELLED)
    # claims[2] stays running; two tasks stay pending
    assert await _counts(dsn) == (5, 5, 1)

    assert await client.prune_tasks(3600) == 0  # nothing is that old yet
    future = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    async with Client(dsn, server_settings={"durable.fake_now": future}) as later:
        assert await later.prune_tasks(3600, batch=1) == 1  # completed only, by default
        assert await later.prune_tasks(3600, [TaskState.CANCELLED]) == 1
        assert await later.prune_tasks(0, [TaskState.FAILED, TaskState.COMPLETED]) == 0
    assert await _counts(dsn) == (3, 3, 0)  # the running and the pending tasks remain


async def test_prune_refuses_live_states_and_negative_ages(client: Client) -> None:
    with pytest.raises(InvalidArgument):
        await client.prune_tasks(60, ["pending"])
    with pytest.raises(ValueError, match="non-negative"):
        await client.prune_tasks(-1)


async def test_prune_takes_a_tasks_messages_state_and_batch_with_it(
    client: Client, dsn: str
) -> None:
    batch = await client.spawn_batch([("q", "t", 0, None)])
    (claim,) = await client.claim("q", "w", 30)
    await client.set_state("q", claim.run_id, "stage", "done")
    await client.send_message(claim.task_id, "never-read", "unread")
    await client.complete("q", claim.run_id, None)
    assert (await client.get_batch(batch.batch_id)).finished

    future = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    async with Client(dsn, server_settings={"durable.fake_now": future}) as later:
        assert await later.prune_tasks(3600) == 1
        assert await later.prune_bookkeeping(3600) >= 1  # the finished batch (and the worker)
    async with connection(dsn) as conn:
        left = await conn.fetchrow(
            "select (select count(*) from durable.messages) as messages,"
            " (select count(*) from durable.states) as states,"
            " (select count(*) from durable.batch_members) as members,"
            " (select count(*) from durable.batches) as batches"
        )
    assert dict(left or {}) == {"messages": 0, "states": 0, "members": 0, "batches": 0}


async def test_prune_forgets_only_what_the_tasks_it_deletes_leave_behind(
    client: Client, dsn: str
) -> None:
    # one finished task in history, one still hot, both with a key and a published state; a
    # pending task with a key of its own
    for key in ("cold", "hot"):
        await client.spawn("q", "t", key, SpawnOptions(idempotency_key=key))
        (claim,) = await client.claim("q", "w", 30)
        await client.set_state("q", claim.run_id, "stage", key)
        await client.complete("q", claim.run_id, None)
        if key == "cold":
            assert await client.move_all_to_history() == 1
    kept = await client.spawn("q", "t", "kept", SpawnOptions(idempotency_key="kept"))

    future = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    async with Client(dsn, server_settings={"durable.fake_now": future}) as later:
        assert await later.prune_tasks(3600) == 2  # one from each place, in one call
    async with connection(dsn) as conn:
        assert await conn.fetchval("select count(*) from durable.states") == 0
        keys = await conn.fetch("select idempotency_key, task_id from durable.task_keys")
    assert [(k["idempotency_key"], k["task_id"]) for k in keys] == [("kept", kept.task_id)]
    assert (
        await client.spawn("q", "t", "x", SpawnOptions(idempotency_key="kept"))
    ).created is False
    assert (await client.spawn("q", "t", "x", SpawnOptions(idempotency_key="hot"))).created
