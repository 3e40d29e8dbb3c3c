"""How a task's unsuccessful end reaches the tasks around it, in SQL: its children are cancelled
with it (``on_parent_cancel``).

Every way a task ends without completing goes through ``durable.end_task_unsuccessfully``: these
tests cancel a parent each way (a cancel, ``cancel_by``, a discard, a cancellation policy, a
dependency) and look at what followed, before and after commit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from durable.client import Client
from durable.protocol.errors import LeaseLost
from durable.protocol.records import (
    Cancellation,
    FailureReason,
    RunState,
    SpawnOptions,
    TaskRecord,
    TaskState,
)

pytestmark = pytest.mark.anyio

Q = "family"


async def _spawn(client: Client, **options: Any) -> uuid.UUID:
    info = await client.spawn(Q, "job", {"n": 1}, SpawnOptions(**options))
    assert info.created
    return info.task_id


async def _states(client: Client, *task_ids: uuid.UUID) -> list[TaskState]:
    return [(await client.get_task(None, t)).state for t in task_ids]


def _error(record: TaskRecord) -> dict[str, Any]:
    assert record.failure is not None
    assert record.failure.error is not None
    return record.failure.error


async def _rolled_back(
    raw: asyncpg.Connection, probe: Callable[[], Awaitable[Any]], sql: str, *args: Any
) -> Any:
    """Run ``sql`` in a transaction, return what ``probe()`` reads inside it, roll it back."""
    transaction = raw.transaction()
    await transaction.start()
    try:
        await raw.execute(sql, *args)
        return await probe()
    finally:
        await transaction.rollback()


async def _claim(client: Client, task_id: uuid.UUID, queue: str = Q) -> uuid.UUID:
    """Claim the run of ``task_id``; the other runs claimed with it are handed back."""
    claims = await client.claim(queue, "w1", 30, qty=100)
    for claim in claims:
        if claim.task_id != task_id:
            await client.schedule_run(queue, claim.run_id, 0)
    [run_id] = [c.run_id for c in claims if c.task_id == task_id]
    return run_id


# --- cancellation reaches children --------------------------------------------------------------


async def test_cancelling_a_parent_cancels_its_children_down_the_tree_in_one_transaction(
    client: Client, raw: asyncpg.Connection
) -> None:
    parent = await _spawn(client)
    child = await _spawn(client, parent_task_id=parent)
    grandchild = await _spawn(client, parent_task_id=child)
    abandoned = await _spawn(client, parent_task_id=parent, on_parent_cancel="abandon")
    finished = await _spawn(client, parent_task_id=parent)
    await client.complete(Q, await _claim(client, finished), "done")
    running = await _claim(client, child)  # the child is running on a worker

    # in the cancel's transaction, and only if it commits
    inside = await _rolled_back(
        raw,
        lambda: raw.fetch(
            "select state from durable.tasks where task_id = any($1::uuid[])", [child, grandchild]
        ),
        "select durable.cancel($1, $2)",
        Q,
        parent,
    )
    assert {r["state"] for r in inside} == {"cancelled"}
    assert await _states(client, parent, child, grandchild) == [
        TaskState.PENDING,
        TaskState.RUNNING,
        TaskState.PENDING,
    ]

    await client.cancel(Q, parent)

    assert await _states(client, parent, child, grandchild, abandoned, finished) == [
        TaskState.CANCELLED,
        TaskState.CANCELLED,
        TaskState.CANCELLED,
        TaskState.PENDING,
        TaskState.COMPLETED,
    ]
    for task_id, its_parent in ((child, parent), (grandchild, child)):
        record = await client.get_task(None, task_id)
        assert record.failure is not None
        assert record.failure.reason is FailureReason.CANCELLED
        assert _error(record) == {
            "type": "ParentCancelled",
            "message": f"parent task {its_parent} was cancelled",
            "parent": str(its_parent),
        }
    child_record = await client.get_task(None, child)
    assert child_record.on_parent_cancel == "cancel"
    assert (await client.get_task(None, abandoned)).on_parent_cancel == "abandon"
    last = child_record.runs[-1]
    assert (last.run_id, last.state, last.failure_reason) == (
        running,
        RunState.CANCELLED,
        FailureReason.CANCELLED,
    )
    with pytest.raises(LeaseLost):  # its worker is fenced off: its writes change nothing
        await client.set_checkpoint(Q, running, "late", 1)


async def _cancel_by_policy(client: Client, parent: uuid.UUID) -> None:
    await client.claim("elsewhere", "w1", 30)  # any claim enforces the policies that are due


_PARENT_ENDINGS: dict[str, tuple[dict[str, Any], Callable[[Client, uuid.UUID], Awaitable[Any]]]] = {
    "cancel": ({}, lambda client, parent: client.cancel(Q, parent)),
    "cancel_by": ({"tags": ["batch-7"]}, lambda client, parent: client.cancel_by(tags=["batch-7"])),
    "discard": ({}, lambda client, parent: client.discard(Q, parent)),
    "policy": ({"cancellation": Cancellation(max_delay=0)}, _cancel_by_policy),
}


@pytest.mark.parametrize("ending", sorted(_PARENT_ENDINGS))
async def test_every_way_of_cancelling_a_parent_cancels_its_children(
    client: Client, ending: str
) -> None:
    options, cancel = _PARENT_ENDINGS[ending]
    parent = await _spawn(client, **options)
    child = await _spawn(client, parent_task_id=parent)
    abandoned = await _spawn(client, parent_task_id=parent, on_parent_cancel="abandon")

    await cancel(client, parent)

    assert await _states(client, parent, child, abandoned) == [
        TaskState.CANCELLED,
        TaskState.CANCELLED,
        TaskState.PENDING,
    ]
    assert _error(await client.get_task(None, child))["type"] == "ParentCancelled"


async def test_a_parent_cancelled_by_its_dependency_cancels_its_children(client: Client) -> None:
    dependency = await _spawn(client, max_attempts=1)
    parent = await _spawn(client, depends_on=[dependency])
    child = await _spawn(client, parent_task_id=parent)
    await client.fail(Q, await _claim(client, dependency), {"type": "Boom", "message": "no"})

    assert await _states(client, dependency, parent, child) == [
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.CANCELLED,
    ]
    assert _error(await client.get_task(None, parent))["type"] == "DependencyFailed"
    assert _error(await client.get_task(None, child))["type"] == "ParentCancelled"


async def test_a_parent_that_fails_or_completes_leaves_its_children_running(
    client: Client,
) -> None:
    failing = await _spawn(client, max_attempts=1)
    completing = await _spawn(client)
    children = [
        await _spawn(client, parent_task_id=failing),
        await _spawn(client, parent_task_id=completing),
    ]
    await client.fail(Q, await _claim(client, failing), {"type": "Boom", "message": "no"})
    await client.complete(Q, await _claim(client, completing), "done")
    assert await _states(client, *children) == [TaskState.PENDING] * 2


async def test_a_child_spawned_after_its_parent_was_cancelled_is_born_cancelled(
    client: Client,
) -> None:
    parent = await _spawn(client)
    await client.cancel(Q, parent)
    child = await _spawn(client, parent_task_id=parent)
    abandoned = await _spawn(client, parent_task_id=parent, on_parent_cancel="abandon")

    record = await client.get_task(None, child)
    assert record.state is TaskState.CANCELLED
    assert _error(record)["type"] == "ParentCancelled"
    assert [r.started_at for r in record.runs] == [None]
    assert await _states(client, abandoned) == [TaskState.PENDING]


async def test_a_parent_cancel_policy_that_is_neither_cancel_nor_abandon_is_refused(
    client: Client, raw: asyncpg.Connection
) -> None:
    with pytest.raises(ValueError, match="on_parent_cancel must be 'cancel' or 'abandon'"):
        SpawnOptions(on_parent_cancel="orphan")  # type: ignore[arg-type]
    for options in ('{"on_parent_cancel": "orphan"}', '{"on_parent_cancel": null}'):
        await _spawn_refused(raw, options)
    items = json.dumps([{"task_name": "job", "options": {"on_parent_cancel": "orphan"}}])
    with pytest.raises(asyncpg.PostgresError, match="on_parent_cancel must be") as refused:
        await raw.execute("select durable.spawn_many($1, $2::jsonb)", Q, items)
    assert refused.value.sqlstate == "DU005"
    assert await raw.fetchval("select count(*) from durable.tasks") == 0


async def _spawn_refused(raw: asyncpg.Connection, options: str) -> None:
    if options == '{"on_parent_cancel": null}':  # JSON null is "not given": the default
        await raw.execute("select durable.spawn($1, 'job', 'null', $2::jsonb)", Q, options)
        await raw.execute("delete from durable.runs; delete from durable.tasks")
        return
    with pytest.raises(asyncpg.PostgresError, match="on_parent_cancel must be") as refused:
        await raw.execute("select durable.spawn($1, 'job', 'null', $2::jsonb)", Q, options)
    assert refused.value.sqlstate == "DU005"
