"""Retention: old finished tasks go, with their runs and checkpoints; live work stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from support.database import connection, table_counts

from durable.client import Client
from durable.protocol.errors import InvalidArgument
from durable.protocol.records import FailureReason, TaskState

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
