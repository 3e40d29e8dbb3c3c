"""How a task's unsuccessful end reaches the tasks around it, in SQL: its children are cancelled
with it (``on_parent_cancel``), its ``on_discard`` hook is recorded in the transaction that ends
it, and a retry of it revives the dependents its end cancelled.

Every way a task ends without completing goes through ``durable.end_task_unsuccessfully``: these
tests drive each way (the last attempt failing, a reap, a cancel, ``cancel_by``, a discard, a
cancellation policy, a dependency, a parent) and look at what followed, before and after commit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from durable.client import Client
from durable.client.recovery import Action, recover
from durable.protocol.errors import InvalidState, LeaseLost
from durable.protocol.records import (
    Cancellation,
    DiscardReason,
    FailedWorkState,
    FailureReason,
    RunState,
    SpawnOptions,
    TaskRecord,
    TaskState,
)
from durable.runtime.executor import DISCARD_TASK

pytestmark = pytest.mark.anyio

Q = "family"
HOOKED = SpawnOptions(on_discard=True, max_attempts=1)


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


# --- on_discard: recorded where the task ends ---------------------------------------------------


async def _hooks(client: Client, raw: asyncpg.Connection) -> list[dict[str, Any]]:
    """The params of every hook task recorded, oldest first."""
    rows = await raw.fetch(
        "select params::text from durable.tasks where task_name = $1 order by created_at",
        DISCARD_TASK,
    )
    return [json.loads(r["params"]) for r in rows]


async def _fail_last_attempt(client: Client, task_id: uuid.UUID) -> None:
    await client.fail(Q, await _claim(client, task_id), {"type": "Boom", "message": "no"})


async def _reap_as_crash(client: Client, task_id: uuid.UUID) -> None:
    claims = await client.claim(Q, "gone", 1)
    assert [c.task_id for c in claims] == [task_id]
    await client.stop_worker("gone")
    later = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    async with Client(client.dsn, server_settings={"durable.fake_now": later}) as at_later:
        await at_later.claim(Q, "reaper", 30, qty=0)  # reaps the lapsed lease


_ENDS: dict[str, tuple[DiscardReason, str, Callable[[Client, uuid.UUID], Awaitable[Any]]]] = {
    "exhausted": (DiscardReason.EXHAUSTED, "failed", _fail_last_attempt),
    "crash": (DiscardReason.EXHAUSTED, "failed", _reap_as_crash),
    "cancel": (DiscardReason.CANCELLED, "cancelled", lambda c, t: c.cancel(Q, t)),
    "cancel_by": (
        DiscardReason.CANCELLED,
        "cancelled",
        lambda c, t: c.cancel_by(queue=Q, task_name="hooked"),
    ),
    "discard": (DiscardReason.DISCARDED, "cancelled", lambda c, t: c.discard(Q, t)),
}


@pytest.mark.parametrize("end", sorted(_ENDS))
async def test_every_unsuccessful_end_records_the_hook_in_its_own_transaction(
    client: Client, raw: asyncpg.Connection, end: str
) -> None:
    reason, state, ending = _ENDS[end]
    task_id = (await client.spawn(Q, "hooked", {"order": 7}, HOOKED)).task_id

    await ending(client, task_id)

    record = await client.get_task(None, task_id)
    assert record.state == state
    [hook] = await _hooks(client, raw)
    assert hook["task_id"] == str(task_id)
    assert (hook["state"], hook["reason"]) == (state, reason)
    assert hook["failure"] == json.loads(json.dumps(_failure_doc(record)))
    [hook_task] = await raw.fetch(
        "select queue, idempotency_key, discard_hook from durable.tasks where task_name = $1",
        DISCARD_TASK,
    )
    assert hook_task["queue"] == Q  # a worker of the task's queue runs it
    assert hook_task["idempotency_key"] == f"durable:discard:{task_id}:{record.runs[-1].run_id}"
    assert not hook_task["discard_hook"]


def _failure_doc(record: TaskRecord) -> dict[str, Any]:
    assert record.failure is not None
    return {
        "reason": str(record.failure.reason),
        "run_id": str(record.failure.run_id) if record.failure.run_id else None,
        "attempt": record.failure.attempt,
        "error": record.failure.error,
    }


async def test_policies_dependencies_and_parents_record_the_hook_with_their_reason(
    client: Client, raw: asyncpg.Connection
) -> None:
    late = await client.spawn(Q, "hooked", None, _with(cancellation=Cancellation(max_delay=0)))
    dependency = await _spawn(client, max_attempts=1)
    dependent = await client.spawn(Q, "hooked", None, _with(depends_on=[dependency]))
    parent = await _spawn(client)
    child = await client.spawn(Q, "hooked", None, _with(parent_task_id=parent))

    await client.claim("elsewhere", "w1", 30)  # enforces the policy
    await _fail_last_attempt(client, dependency)
    await client.cancel(Q, parent)

    reasons = {h["task_id"]: h["reason"] for h in await _hooks(client, raw)}
    assert reasons == {
        str(late.task_id): "cancellation_policy",
        str(dependent.task_id): "dependency_failed",
        str(child.task_id): "parent_cancelled",
    }


def _with(**options: Any) -> SpawnOptions:
    return SpawnOptions(on_discard=True, max_attempts=1, **options)


async def test_a_task_ended_by_two_causes_in_one_transaction_ends_once(
    client: Client, raw: asyncpg.Connection
) -> None:
    """A parent and its child whose policies are both due: the claim that enforces them cancels
    the parent, which cancels the child; the child's own policy then finds it ended."""
    due = Cancellation(max_delay=0)
    parent = await client.spawn(Q, "hooked", None, _with(cancellation=due))
    child = await client.spawn(
        Q, "hooked", None, _with(cancellation=due, parent_task_id=parent.task_id)
    )

    await client.claim("elsewhere", "w1", 30)

    hooks = await _hooks(client, raw)
    assert sorted((h["task_id"], h["reason"]) for h in hooks) == sorted(
        [(str(parent.task_id), "cancellation_policy"), (str(child.task_id), "parent_cancelled")]
    )
    assert _error(await client.get_task(None, child.task_id))["type"] == "ParentCancelled"


async def test_the_hook_is_recorded_only_if_the_end_commits_and_once_per_end(
    client: Client, raw: asyncpg.Connection
) -> None:
    task_id = (await client.spawn(Q, "hooked", None, HOOKED)).task_id
    inside = await _rolled_back(
        raw, lambda: _hooks(client, raw), "select durable.cancel($1, $2)", Q, task_id
    )
    assert [h["task_id"] for h in inside] == [str(task_id)]
    assert await _hooks(client, raw) == []

    await client.cancel(Q, task_id)
    await client.discard(Q, task_id)  # it had ended already: no second end, no second hook
    assert len(await _hooks(client, raw)) == 1


async def test_a_retried_task_that_ends_again_has_its_hook_again(
    client: Client, raw: asyncpg.Connection
) -> None:
    task_id = (await client.spawn(Q, "hooked", None, HOOKED)).task_id
    await client.cancel(Q, task_id)
    await client.retry(Q, task_id)
    await _fail_last_attempt(client, task_id)
    hooks = await _hooks(client, raw)
    assert [(h["task_id"], h["reason"]) for h in hooks] == [
        (str(task_id), "cancelled"),
        (str(task_id), "exhausted"),
    ]


async def test_no_hook_for_a_completed_task_nor_for_one_without_on_discard(
    client: Client, raw: asyncpg.Connection
) -> None:
    hooked = (await client.spawn(Q, "hooked", None, HOOKED)).task_id
    await client.complete(Q, await _claim(client, hooked), "done")
    plain = await _spawn(client, max_attempts=1)
    await _fail_last_attempt(client, plain)
    await client.cancel(Q, await _spawn(client))
    assert await _hooks(client, raw) == []


# --- redrive: a retry revives the dependents a failure cancelled --------------------------------


async def _failed_chain(client: Client) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """root <- first <- second (each depends on the one before); root's failure cancels both."""
    root = await _spawn(client, max_attempts=1)
    first = await _spawn(client, depends_on=[root])
    second = await _spawn(client, depends_on=[first])
    await _fail_last_attempt(client, root)
    assert await _states(client, root, first, second) == [
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.CANCELLED,
    ]
    return root, first, second


async def test_a_retry_revives_the_dependents_and_they_wait_for_their_dependencies(
    client: Client,
) -> None:
    root, first, second = await _failed_chain(client)
    listed = await client.revivable_dependents([root])
    assert [(d.task_id, d.dependency) for d in listed] == [(first, root), (second, first)]
    assert (await _states(client, first, second)) == [TaskState.CANCELLED] * 2  # only listed

    info = await client.retry(Q, root)

    assert [d.task_id for d in info.revived] == [first, second]
    for task_id, dependency in ((first, root), (second, first)):
        record = await client.get_task(None, task_id)
        assert record.state is TaskState.PENDING
        assert record.pending_dependencies == [dependency]
        assert record.failure is None  # the failure was its dependency's: not failed work
        cancelled, waiting = record.runs
        assert cancelled.state is RunState.CANCELLED
        assert (waiting.state, waiting.attempt) == (RunState.PENDING, cancelled.attempt)
        # not claimable until its dependency completed
        assert waiting.available_at == datetime.max.replace(tzinfo=UTC)
    assert {r.task_id for r in await client.failed_work()} == {root}
    # only the root is claimable; each dependent once the one before completed
    for task_id in (root, first, second):
        claims = await client.claim(Q, "w1", 30, qty=10)
        assert [c.task_id for c in claims] == [task_id]
        await client.complete(Q, claims[0].run_id, "done")
    assert await _states(client, root, first, second) == [TaskState.COMPLETED] * 3


async def test_a_retry_without_reviving_leaves_the_dependents_cancelled(client: Client) -> None:
    root, first, second = await _failed_chain(client)
    info = await client.retry(Q, root, revive_dependents=False)
    assert info.revived == ()
    assert await _states(client, root, first, second) == [
        TaskState.PENDING,
        TaskState.CANCELLED,
        TaskState.CANCELLED,
    ]
    # the dependent can then be retried itself: it waits for its dependency again
    again = await client.retry(Q, first)
    assert [d.task_id for d in again.revived] == [second]
    assert (await client.get_task(None, first)).pending_dependencies == [root]


async def test_a_dependent_another_dead_dependency_blocks_is_not_revived(client: Client) -> None:
    root = await _spawn(client, max_attempts=1)
    other = await _spawn(client, max_attempts=1)
    blocked = await _spawn(client, depends_on=[root, other])
    below = await _spawn(client, depends_on=[blocked])
    discarded = await _spawn(client, depends_on=[root])
    await _fail_last_attempt(client, root)
    await _fail_last_attempt(client, other)
    assert _error(await client.get_task(None, blocked))["dependency"] == str(root)
    await client.discard(Q, discarded)

    assert await client.revivable_dependents([root]) == []
    info = await client.retry(Q, root)
    assert info.revived == ()
    assert await _states(client, blocked, below, discarded) == [TaskState.CANCELLED] * 3


async def test_retrying_a_dependent_of_a_dead_task_is_refused(client: Client) -> None:
    root, first, _second = await _failed_chain(client)
    with pytest.raises(InvalidState, match=f"depends on task {root}, which ended failed"):
        await client.retry(Q, first)
    assert await _states(client, first) == [TaskState.CANCELLED]


async def test_a_bulk_retry_revives_the_dependents_among_its_rows_once(client: Client) -> None:
    root, first, second = await _failed_chain(client)
    rows = await client.failed_work(queue=Q)
    assert {r.task_id for r in rows} == {root, first, second}
    assert {r.state for r in rows} == {FailedWorkState.FAILED}

    changes = [change async for change in recover(client, rows, Action.RETRY)]

    assert [(c.task_id, c.changed, c.revived_with) for c in changes] == [
        (root, True, None),
        (first, True, root),
        (second, True, root),
    ]
    assert [d.task_id for d in changes[0].revived] == [first, second]
    assert await _states(client, root, first, second) == [TaskState.PENDING] * 3
