"""Fan-out and fan-in through the protocol: a run waiting for many tasks at once (``await_tasks``,
what ``ctx.gather`` calls), batches with a callback (``spawn_batch``, ``get_batch``) and a task's
dependencies' results (``get_dependency_results``), driven through ``Client`` against a real
PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from support.waiting import wait_for

from durable.client import Client
from durable.protocol.errors import (
    BatchNotFound,
    InvalidArgument,
    InvalidQueueName,
    LeaseLost,
    TaskNotFound,
)
from durable.protocol.records import RunState, SpawnOptions, TaskState
from durable.protocol.retry import Fixed

pytestmark = pytest.mark.anyio

Q = "fan"
KIDS = "kids"
ONE_ATTEMPT = SpawnOptions(max_attempts=1)
#: A run's available_at while only a wake-up can make it claimable (PostgreSQL's infinity).
NEVER = datetime.max.replace(tzinfo=UTC)


async def _run_of(client: Client, task_id: uuid.UUID, queue: str = Q) -> uuid.UUID:
    """Claim the task's run (the only claimable one on ``queue``)."""
    (claim,) = await client.claim(queue, "w1", 30)
    assert claim.task_id == task_id
    return claim.run_id


async def _finish(
    client: Client, task_id: uuid.UUID, result: Any = None, *, fail: bool = False
) -> None:
    """Claim ``task_id`` on KIDS and end it: completed with ``result``, or failed for good."""
    claims = {c.task_id: c for c in await client.claim(KIDS, "w2", 30, qty=100)}
    run_id = claims[task_id].run_id
    others = [c.run_id for t, c in claims.items() if t != task_id]
    for other in others:  # hand back what this claim took besides
        await client.schedule_run(KIDS, other, 0)
    if fail:
        await client.fail(KIDS, run_id, {"type": "ValueError", "message": "no"})
    else:
        await client.complete(KIDS, run_id, result)


async def _kids(client: Client, n: int) -> list[uuid.UUID]:
    return [(await client.spawn(KIDS, "kid", {"i": i}, ONE_ATTEMPT)).task_id for i in range(n)]


# --- await_tasks ---------------------------------------------------------------------------------


async def test_a_wait_for_tasks_that_all_ended_returns_their_outcomes_in_order(
    client: Client,
) -> None:
    kids = await _kids(client, 3)
    await _finish(client, kids[2], "c")
    await _finish(client, kids[0], "a")
    await _finish(client, kids[1], fail=True)
    parent = await client.spawn(Q, "parent", None)
    run_id = await _run_of(client, parent.task_id)

    status, outcomes = await client.await_tasks(Q, run_id, "$gather", kids)

    assert status == "done"
    assert [(o["task_id"], o["state"], o["result"]) for o in outcomes] == [
        (str(kids[0]), "completed", "a"),
        (str(kids[1]), "failed", None),
        (str(kids[2]), "completed", "c"),
    ]
    assert outcomes[0]["failure"] is None
    assert outcomes[1]["failure"]["reason"] == "errored"
    assert outcomes[1]["failure"]["error"]["message"] == "no"
    # recorded: the same answer again, and never parked
    assert await client.await_tasks(Q, run_id, "$gather", kids) == (status, outcomes)
    assert [r.state for r in (await client.get_task(Q, parent.task_id)).runs] == [RunState.RUNNING]


async def test_a_wait_for_tasks_parks_once_and_wakes_once_when_the_last_ended(
    client: Client,
) -> None:
    kids = await _kids(client, 3)
    parent = await client.spawn(Q, "parent", None)
    run_id = await _run_of(client, parent.task_id)
    await _finish(client, kids[1], "b")

    assert await client.await_tasks(Q, run_id, "$gather", kids) == ("suspended", None)
    parked = await client.get_task(Q, parent.task_id)
    assert [r.state for r in parked.runs] == [RunState.SUSPENDED, RunState.SLEEPING]
    (wait,) = parked.waiting_for
    assert wait["child_task_ids"] == [str(k) for k in kids]
    assert sorted(wait["running_task_ids"]) == sorted([str(kids[0]), str(kids[2])])
    with pytest.raises(LeaseLost):  # the parked run is over
        await client.await_tasks(Q, run_id, "$gather", kids)

    await _finish(client, kids[0], "a")
    middle = await client.get_task(Q, parent.task_id)
    assert middle.runs[-1].available_at == NEVER  # still asleep: only the last end wakes it
    assert middle.waiting_for[0]["running_task_ids"] == [str(kids[2])]
    assert await client.claim(Q, "w1", 30) == []

    await _finish(client, kids[2], "c")
    woken = await client.get_task(Q, parent.task_id)
    assert woken.waiting_for == []
    (claim,) = await client.claim(Q, "w1", 30)
    assert claim.run_id == woken.runs[-1].run_id
    status, outcomes = await client.await_tasks(Q, claim.run_id, "$gather", kids)
    assert status == "done"
    assert [o["result"] for o in outcomes] == ["a", "b", "c"]
    await client.complete(Q, claim.run_id, None)
    runs = (await client.get_task(Q, parent.task_id)).runs
    assert [r.state for r in runs] == [RunState.SUSPENDED, RunState.COMPLETED]  # parked once


async def test_a_wait_for_tasks_times_out_and_forgets_its_edges(client: Client, dsn: str) -> None:
    kids = await _kids(client, 2)
    parent = await client.spawn(Q, "parent", None)
    run_id = await _run_of(client, parent.task_id)
    assert await client.await_tasks(Q, run_id, "$gather", kids, timeout=0.2) == (
        "suspended",
        None,
    )
    woken = await _claim_when_due(client)
    assert await client.await_tasks(Q, woken, "$gather", kids, timeout=0.2) == ("timeout", None)
    await _finish(client, kids[0], "late")  # nobody waits for it any more
    assert (await client.get_task(Q, parent.task_id)).waiting_for == []
    checkpoints = await client.get_checkpoints(Q, parent.task_id)
    assert [(c.step_name, c.value) for c in checkpoints] == [("$gather", {"timed_out": True})]


async def _claim_when_due(client: Client) -> uuid.UUID:
    async def probe() -> uuid.UUID | None:
        claims = await client.claim(Q, "w1", 30)
        return claims[0].run_id if claims else None

    return await wait_for(probe, timeout=10, what="the parked run to be due")


async def test_a_cancelled_parent_stops_waiting(client: Client) -> None:
    kids = await _kids(client, 2)
    parent = await client.spawn(Q, "parent", None)
    run_id = await _run_of(client, parent.task_id)
    await client.await_tasks(Q, run_id, "$gather", kids)
    await client.cancel(Q, parent.task_id)
    for kid in kids:
        await _finish(client, kid, "x")
    record = await client.get_task(Q, parent.task_id)
    assert (record.state, record.waiting_for) == (TaskState.CANCELLED, [])
    assert await client.get_checkpoints(Q, parent.task_id) == []


async def test_a_wait_for_tasks_refuses_bad_input(client: Client) -> None:
    kids = await _kids(client, 1)
    parent = await client.spawn(Q, "parent", None)
    run_id = await _run_of(client, parent.task_id)
    unknown = uuid.uuid4()
    with pytest.raises(TaskNotFound) as caught:
        await client.await_tasks(Q, run_id, "$gather", [kids[0], unknown])
    assert caught.value.task_id == unknown
    with pytest.raises(InvalidArgument, match="at least one task"):
        await client.await_tasks(Q, run_id, "$gather", [])
    with pytest.raises(InvalidArgument, match="timeout"):
        await client.await_tasks(Q, run_id, "$gather", kids, timeout=-1)
    with pytest.raises(InvalidArgument, match="step name"):
        await client.await_tasks(Q, run_id, "", kids)
    with pytest.raises(LeaseLost):
        await client.await_tasks(Q, uuid.uuid4(), "$gather", kids)
    assert (await client.get_task(Q, parent.task_id)).waiting_for == []


# --- batches -------------------------------------------------------------------------------------


def _member(i: int, options: SpawnOptions | None = ONE_ATTEMPT) -> tuple[str, str, Any, Any]:
    return (KIDS, "kid", {"i": i}, options)


async def test_a_batch_spawns_its_callback_once_when_every_member_completed(
    client: Client,
) -> None:
    batch = await client.spawn_batch(
        [_member(0), _member(1), ("other", "kid", {"i": 2}, None)],
        on_complete=(Q, "done", {"report": "r1"}, SpawnOptions(priority=3)),
        on_exhausted=(Q, "broken", None, None),
    )
    assert batch.created
    assert [m.created for m in batch.members] == [True, True, True]
    tasks = [await client.get_task(None, m.task_id) for m in batch.members]
    assert [(t.queue, t.params, t.batch_ids) for t in tasks] == [
        (KIDS, {"i": 0}, [batch.batch_id]),
        (KIDS, {"i": 1}, [batch.batch_id]),
        ("other", {"i": 2}, [batch.batch_id]),
    ]

    await _finish(client, batch.members[0].task_id, 0)
    await _finish(client, batch.members[1].task_id, 1)
    record = await client.get_batch(batch.batch_id)
    assert (record.total, record.pending, record.finished, record.callback_task_id) == (
        3,
        1,
        False,
        None,
    )
    assert record.counts == {"completed": 2, "failed": 0, "cancelled": 0}
    assert await client.claim(Q, "w1", 30) == []

    (last,) = await client.claim("other", "w3", 30)
    await client.complete("other", last.run_id, 2)
    record = await client.get_batch(batch.batch_id)
    assert (record.pending, record.finished) == (0, True)
    assert (record.on_complete, record.on_exhausted) == ("done", "broken")
    assert record.callback_task_id is not None
    callback = await client.get_task(Q, record.callback_task_id)
    assert callback.task_name == "done"
    assert callback.params == {
        "batch_id": str(batch.batch_id),
        "total": 3,
        "counts": {"completed": 3, "failed": 0, "cancelled": 0},
        "params": {"report": "r1"},
    }
    assert callback.idempotency_key == f"durable:batch:{batch.batch_id}"
    (claim,) = await client.claim(Q, "w1", 30, qty=10)  # only the one callback
    assert claim.task_id == callback.task_id


async def test_a_batch_with_a_failed_member_spawns_on_exhausted_with_the_counts(
    client: Client,
) -> None:
    batch = await client.spawn_batch(
        [_member(0), _member(1), _member(2)],
        on_complete=(Q, "done", None, None),
        on_exhausted=(Q, "broken", {"why": "look"}, None),
    )
    ids = [m.task_id for m in batch.members]
    await _finish(client, ids[0], "ok")
    await _finish(client, ids[1], fail=True)
    await client.cancel(None, ids[2])
    record = await client.get_batch(batch.batch_id)
    assert record.counts == {"completed": 1, "failed": 1, "cancelled": 1}
    assert record.callback_task_id is not None
    callback = await client.get_task(Q, record.callback_task_id)
    assert (callback.task_name, callback.params["counts"], callback.params["params"]) == (
        "broken",
        {"completed": 1, "failed": 1, "cancelled": 1},
        {"why": "look"},
    )


async def test_a_member_retried_after_it_ended_counts_once(client: Client) -> None:
    batch = await client.spawn_batch(
        [_member(0), _member(1)], on_exhausted=(Q, "broken", None, None)
    )
    first, second = (m.task_id for m in batch.members)
    await _finish(client, first, fail=True)
    await client.retry(None, first)  # an operator retries it before the batch ended
    await _finish(client, first, "fixed")
    record = await client.get_batch(batch.batch_id)
    assert (record.pending, record.counts["failed"], record.counts["completed"]) == (1, 1, 0)
    await _finish(client, second, "ok")
    record = await client.get_batch(batch.batch_id)
    assert record.counts == {"completed": 1, "failed": 1, "cancelled": 0}
    assert record.callback_task_id is not None


async def test_a_batch_whose_members_ended_already_settles_at_once(client: Client) -> None:
    done = await client.spawn(KIDS, "kid", None, SpawnOptions(idempotency_key="k0"))
    await _finish(client, done.task_id, "earlier")
    batch = await client.spawn_batch(
        [_member(0, SpawnOptions(idempotency_key="k0"))], on_complete=(Q, "done", None, None)
    )
    assert [(m.task_id, m.created) for m in batch.members] == [(done.task_id, False)]
    record = await client.get_batch(batch.batch_id)
    assert (record.pending, record.finished) == (0, True)
    assert record.counts == {"completed": 1, "failed": 0, "cancelled": 0}
    assert record.callback_task_id is not None


async def test_a_batch_without_the_callback_that_applies_spawns_nothing(client: Client) -> None:
    batch = await client.spawn_batch([_member(0)], on_exhausted=(Q, "broken", None, None))
    await _finish(client, batch.members[0].task_id, "fine")
    record = await client.get_batch(batch.batch_id)
    assert (record.finished, record.callback_task_id, record.callback_error) == (True, None, None)
    assert await client.claim(Q, "w1", 30) == []


async def test_a_batch_with_a_key_is_spawned_once(client: Client) -> None:
    first = await client.spawn_batch([_member(0), _member(1)], idempotency_key="nightly-1")
    again = await client.spawn_batch([_member(5)], idempotency_key="nightly-1")
    assert (again.batch_id, again.created) == (first.batch_id, False)
    assert [m.task_id for m in again.members] == [m.task_id for m in first.members]
    assert [m.created for m in again.members] == [False, False]
    assert len(await client.claim(KIDS, "w1", 30, qty=10)) == 2


async def test_a_batch_refuses_bad_input(client: Client) -> None:
    with pytest.raises(InvalidArgument, match="at least one item"):
        await client.spawn_batch([])
    with pytest.raises(InvalidQueueName):
        await client.spawn_batch([("Bad Queue", "kid", None, None)])
    with pytest.raises(InvalidArgument, match="task name"):
        await client.spawn_batch([_member(0)], on_complete=(Q, "", None, None))
    with pytest.raises(InvalidArgument, match="depends_on, unique or an idempotency key"):
        await client.spawn_batch(
            [_member(0)], on_complete=(Q, "done", None, SpawnOptions(idempotency_key="x"))
        )
    with pytest.raises(BatchNotFound) as caught:
        await client.get_batch(missing := uuid.uuid4())
    assert caught.value.batch_id == missing
    assert await client.claim(KIDS, "w1", 30) == []  # nothing was spawned


# --- dependencies' results -----------------------------------------------------------------------


async def test_a_dependent_reads_its_dependencies_results_in_spawn_order(
    client: Client,
) -> None:
    b = await client.spawn(KIDS, "extract_b", None, ONE_ATTEMPT)
    a = await client.spawn(KIDS, "extract_a", None, ONE_ATTEMPT)
    dependent = await client.spawn(
        Q, "load", None, SpawnOptions(depends_on=[b.task_id, a.task_id], retry=Fixed(0))
    )
    await _finish(client, a.task_id, {"rows": 2})
    await _finish(client, b.task_id, {"rows": 5})
    run_id = await _run_of(client, dependent.task_id)
    results = await client.get_dependency_results(Q, dependent.task_id)
    assert [(r.task_id, r.task_name, r.state, r.result) for r in results] == [
        (b.task_id, "extract_b", TaskState.COMPLETED, {"rows": 5}),
        (a.task_id, "extract_a", TaskState.COMPLETED, {"rows": 2}),
    ]
    await client.complete(Q, run_id, None)
    assert await client.get_dependency_results(None, b.task_id) == []  # no dependencies
    with pytest.raises(TaskNotFound):
        await client.get_dependency_results(None, uuid.uuid4())
