"""The operator's view in SQL: failed work and its groups, replay, discard, retention by rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import durable
from durable.client import Client
from durable.protocol.errors import InvalidArgument, InvalidState
from durable.protocol.records import (
    FailedWorkState,
    FailureReason,
    ReasonClass,
    Recovery,
    Retention,
    SpawnOptions,
    TaskState,
)
from durable.runtime.retention import prune, prune_rules

pytestmark = pytest.mark.anyio

Q = "ops"


async def _run_once(client: Client, task_name: str, *, attempts: int = 1) -> durable.Claim:
    await client.spawn(Q, task_name, {"n": 1}, SpawnOptions(max_attempts=attempts))
    (claim,) = await client.claim(Q, "w1", 30)
    return claim


async def test_failed_work_lists_dead_and_retrying_tasks_with_reason_classes(
    client: Client,
) -> None:
    dead = await _run_once(client, "charge")
    await client.set_checkpoint(Q, dead.run_id, "load", 1)
    await client.fail(
        Q,
        dead.run_id,
        {"type": "ConnectionError", "message": "refused", "reason_class": "transport"},
    )
    retrying = await _run_once(client, "charge", attempts=3)
    await client.fail(Q, retrying.run_id, {"type": "WorkerCrashed"}, FailureReason.CRASH)
    done = await _run_once(client, "ship")
    await client.complete(Q, done.run_id, "ok")
    cancelled = await client.spawn(Q, "ship", None)
    await client.cancel(Q, cancelled.task_id)

    rows = await client.failed_work()
    assert [r.task_id for r in rows] == [cancelled.task_id, retrying.task_id, dead.task_id]
    by_id = {r.task_id: r for r in rows}
    first = by_id[dead.task_id]
    assert first.state is FailedWorkState.FAILED
    assert first.failure_reason is FailureReason.ERRORED
    assert first.reason_class is ReasonClass.TRANSPORT
    assert first.error_type == "ConnectionError"
    assert first.run_id == dead.run_id
    assert (first.attempt, first.max_attempts) == (1, 1)
    assert first.recovery is Recovery.RETRY_FROM_CHECKPOINT
    assert first.last_checkpoint == "load"
    assert first.retryable
    second = by_id[retrying.task_id]
    assert second.state is FailedWorkState.RETRYING
    assert second.reason_class is ReasonClass.CRASH
    assert second.recovery is Recovery.NONE
    third = by_id[cancelled.task_id]
    assert (third.state, third.failure_reason) == (FailedWorkState.FAILED, FailureReason.CANCELLED)
    assert third.reason_class is ReasonClass.UNKNOWN
    assert third.recovery is Recovery.RETRY

    assert durable.reason_class_counts(rows) == {
        ReasonClass.CRASH: 1,
        ReasonClass.TRANSPORT: 1,
        ReasonClass.UNKNOWN: 1,
        ReasonClass.VALIDATION: 0,
        ReasonClass.TIMEOUT: 0,
        ReasonClass.EXHAUSTED: 0,
    }

    # every filter narrows the same set
    assert [r.task_id for r in await client.failed_work(reason="crash")] == [retrying.task_id]
    assert [r.task_id for r in await client.failed_work(task_name="ship")] == [cancelled.task_id]
    assert [r.task_id for r in await client.failed_work(state="retrying")] == [retrying.task_id]
    assert [r.task_id for r in await client.failed_work(reason_class="transport")] == [dead.task_id]
    assert [r.task_id for r in await client.failed_work(error_type="ConnectionError")] == [
        dead.task_id
    ]
    assert len(await client.failed_work(limit=2)) == 2
    assert len(await client.failed_work(limit=None)) == 3
    assert await client.failed_work(since=datetime.now(UTC) + timedelta(hours=1)) == []
    assert len(await client.failed_work(since=timedelta(hours=1))) == 3
    assert await client.failed_work(queue="elsewhere") == []
    with pytest.raises(InvalidArgument, match="reason 'boom' is not one of"):
        await client.failed_work(reason="boom")

    groups = await client.failure_groups()
    assert {(g.failure_reason, g.error_type, g.task_name, g.count) for g in groups} == {
        (FailureReason.ERRORED, "ConnectionError", "charge", 1),
        (FailureReason.CRASH, "WorkerCrashed", "charge", 1),
        (FailureReason.CANCELLED, None, "ship", 1),
    }
    assert all(g.first_seen <= g.last_seen for g in groups)

    # a retried dead task shows as retrying until it completes, then leaves the view
    await client.retry(Q, dead.task_id)
    assert (await client.failed_work(error_type="ConnectionError"))[0].state == "retrying"


async def test_failure_groups_count_and_date_each_group(client: Client) -> None:
    for _ in range(3):
        claim = await _run_once(client, "parse")
        error = {"type": "ValueError", "reason_class": "validation", "retryable": False}
        await client.fail(Q, claim.run_id, error)  # as a worker records a discard_on error
    claim = await _run_once(client, "parse")
    await client.fail(Q, claim.run_id, None, FailureReason.JOB_TIMEOUT)
    groups = await client.failure_groups()
    assert [(g.error_type, g.reason_class, g.count) for g in groups] == [
        ("ValueError", ReasonClass.VALIDATION, 3),
        (None, ReasonClass.TIMEOUT, 1),
    ]
    rows = await client.failed_work(reason_class="validation")
    assert [r.retryable for r in rows] == [False, False, False]
    assert groups[0].first_seen == min(r.failed_at for r in rows)
    assert groups[0].last_seen == max(r.failed_at for r in rows)


async def test_replay_resumes_after_the_last_checkpoint_or_from_a_step(client: Client) -> None:
    claim = await _run_once(client, "pipeline")
    for step in ("a", "b", "c"):
        await client.set_checkpoint(Q, claim.run_id, step, step.upper())
    await client.complete(Q, claim.run_id, "done")

    with pytest.raises(InvalidArgument, match="no checkpoint named 'zz'"):
        await client.replay(Q, claim.task_id, "zz")
    info = await client.replay(Q, claim.task_id, "b")
    assert info.attempt == 2
    assert [c.step_name for c in await client.get_checkpoints(Q, claim.task_id)] == ["a"]
    task = await client.get_task(Q, claim.task_id)
    assert (task.state, task.result) == (TaskState.PENDING, None)
    with pytest.raises(InvalidState, match="only a finished task can be replayed"):
        await client.replay(Q, claim.task_id)

    (second,) = await client.claim(Q, "w1", 30)
    assert second.run_id == info.run_id
    await client.complete(Q, second.run_id, "again")
    info = await client.replay(None, claim.task_id)  # keeps every checkpoint
    assert [c.step_name for c in await client.get_checkpoints(Q, claim.task_id)] == ["a"]
    assert info.attempt == 3


async def test_discard_ends_a_task_for_good(client: Client) -> None:
    live = await _run_once(client, "flaky", attempts=5)
    await client.fail(Q, live.run_id, {"type": "OSError"})
    assert [r.task_id for r in await client.failed_work()] == [live.task_id]

    assert await client.discard(Q, live.task_id) is TaskState.PENDING
    task = await client.get_task(Q, live.task_id)
    assert task.state is TaskState.CANCELLED
    assert task.discarded_at is not None
    assert task.failure is not None
    assert task.failure.error == {
        "type": "Discarded",
        "message": "discarded by an operator",
    }
    assert await client.failed_work() == []
    assert await client.discard(Q, live.task_id) is TaskState.CANCELLED  # twice: no change
    with pytest.raises(InvalidState, match="discarded"):
        await client.retry(Q, live.task_id)
    with pytest.raises(InvalidState, match="discarded"):
        await client.replay(Q, live.task_id)

    done = await _run_once(client, "ok")
    await client.complete(Q, done.run_id, 1)
    with pytest.raises(InvalidState, match="nothing to discard"):
        await client.discard(Q, done.task_id)


async def test_retention_rules_prune_by_task_name_and_end_state(client: Client, dsn: str) -> None:
    for name in ("keep_long", "short", "other"):
        claim = await _run_once(client, name)
        await client.complete(Q, claim.run_id, None)
        claim = await _run_once(client, name)
        await client.fail(Q, claim.run_id, {"type": "E"})
    await client.spawn(Q, "other", None)  # pending: never pruned by age

    rules = prune_rules(
        Retention(completed=timedelta(hours=1), failed=timedelta(days=2)),
        {
            "keep_long": Retention(completed=timedelta(days=30)),
            "short": Retention(failed=60),
        },
    )
    # per state: the names with a rule of their own, then the default for all other names
    assert [(r.state, r.older_than, r.task_names, r.except_names) for r in rules] == [
        (TaskState.COMPLETED, 30 * 86400.0, ("keep_long",), ()),
        (TaskState.COMPLETED, 3600.0, None, ("keep_long",)),
        (TaskState.FAILED, 60.0, ("short",), ()),
        (TaskState.FAILED, 2 * 86400.0, None, ("short",)),
    ]

    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    async with Client(dsn, server_settings={"durable.fake_now": later}) as at_two_hours:
        assert await prune(at_two_hours, rules, batch=1) == 3  # short/other completed, short failed
        remaining = {
            (r.task_name, r.state)
            for r in await at_two_hours.failed_work()
            if r.state is FailedWorkState.FAILED
        }
        assert remaining == {("keep_long", "failed"), ("other", "failed")}
        assert (await at_two_hours.queue_counts()) != []
    counts = {(c.state, c.count) for c in await client.queue_counts()}
    assert counts == {(TaskState.COMPLETED, 1), (TaskState.FAILED, 2), (TaskState.PENDING, 1)}


async def test_failure_groups_take_the_failed_work_filters(client: Client) -> None:
    for tags, error in ((["eu"], "KeyError"), (["eu"], "KeyError"), (["us"], "KeyError")):
        await client.spawn(Q, "sync", None, SpawnOptions(max_attempts=1, tags=tags))
        (claim,) = await client.claim(Q, "w1", 30)
        await client.fail(Q, claim.run_id, {"type": error})
    claim = await _run_once(client, "sync")
    await client.fail(Q, claim.run_id, {"type": "OSError"})

    [eu] = await client.failure_groups(tags=["eu"])
    assert (eu.error_type, eu.count) == ("KeyError", 2)
    [keys] = await client.failure_groups(error_type="KeyError")
    assert keys.count == 3
    assert await client.failure_groups(error_type="KeyError", tags=["nobody"]) == []
