"""Every protocol function, driven through ``durable.client.Client`` against a real PostgreSQL.

Time moves with the fake clock: a client made by :func:`_at` runs every statement at that instant
(``durable.now()`` reads the session setting ``durable.fake_now``), so leases lapse without waiting.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import pytest
from support.database import connection
from support.waiting import wait_until

from durable.client import Client
from durable.protocol.errors import InvalidArgument, InvalidState, LeaseLost, TaskNotFound
from durable.protocol.records import (
    FailureReason,
    RunRecord,
    RunState,
    SpawnInfo,
    SpawnOptions,
    TaskState,
)
from durable.protocol.retry import DEFAULT_RETRY, Exponential, Fixed, RetryStrategy, delay_bounds
from durable.protocol.store import CHANNEL_DONE, CHANNEL_WORK

pytestmark = pytest.mark.anyio

Q = "emails"
TOLERANCE_S = 0.002  # interval arithmetic rounds to microseconds


def _at(dsn: str, when: datetime) -> Client:
    """A client whose database clock reads ``when``."""
    return Client(dsn, pool_size=2, server_settings={"durable.fake_now": when.isoformat()})


def _now() -> datetime:
    return datetime.now(UTC)


async def _claim_one(
    client: Client, worker: str = "w1", claim_timeout: float = 30.0, queue: str = Q
) -> uuid.UUID:
    claims = await client.claim(queue, worker, claim_timeout)
    assert len(claims) == 1
    return claims[0].run_id


async def _spawn_and_claim(
    client: Client, options: SpawnOptions | None = None, claim_timeout: float = 30.0
) -> tuple[SpawnInfo, uuid.UUID]:
    info = await client.spawn(Q, "job", {"n": 1}, options)
    return info, await _claim_one(client, claim_timeout=claim_timeout)


async def _runs(client: Client, task_id: uuid.UUID) -> list[RunRecord]:
    return (await client.get_task(Q, task_id)).runs


# --- spawn ------------------------------------------------------------------------------------


async def test_spawn_creates_a_task_with_a_first_pending_run(client: Client) -> None:
    info = await client.spawn(Q, "job", {"n": 1})
    assert info.created is True
    assert info.attempt == 1
    assert (info.task_id.version, info.run_id.version) == (7, 7)
    task = await client.get_task(Q, info.task_id)
    assert task.state == TaskState.PENDING
    assert [(r.run_id, r.state, r.attempt) for r in task.runs] == [
        (info.run_id, RunState.PENDING, 1)
    ]


async def test_spawn_with_a_known_key_returns_the_existing_task(client: Client) -> None:
    first = await client.spawn(Q, "job", {"n": 1}, SpawnOptions(idempotency_key="k"))
    again = await client.spawn(Q, "job", {"n": 2}, SpawnOptions(idempotency_key="k"))
    assert again == SpawnInfo(first.task_id, first.run_id, 1, created=False)
    assert (await client.get_task(Q, first.task_id)).params == {"n": 1}


async def test_spawn_with_the_same_key_on_another_queue_makes_a_new_task(client: Client) -> None:
    first = await client.spawn(Q, "job", None, SpawnOptions(idempotency_key="k"))
    other = await client.spawn("other", "job", None, SpawnOptions(idempotency_key="k"))
    assert other.created is True
    assert other.task_id != first.task_id


async def test_spawn_stores_its_options(client: Client, dsn: str) -> None:
    options = SpawnOptions(
        idempotency_key="key-1",
        max_attempts=7,
        retry=Fixed(4.0),
        timeout=12.5,
        heartbeat_timeout=timedelta(seconds=3),
        priority=5,
        headers={"trace": "abc"},
    )
    info = await client.spawn(Q, "job", [1, "two", {"three": 3.0}], options)
    task = await client.get_task(Q, info.task_id)
    assert (task.task_name, task.params, task.headers) == (
        "job",
        [1, "two", {"three": 3.0}],
        {"trace": "abc"},
    )
    assert (task.max_attempts, task.idempotency_key) == (7, "key-1")
    async with connection(dsn) as conn:
        row = await conn.fetchrow(
            "select retry::text, timeout_s, heartbeat_timeout_s, priority from durable.tasks"
        )
    assert row is not None
    assert (row["timeout_s"], row["heartbeat_timeout_s"], row["priority"]) == (12.5, 3.0, 5)
    assert '"kind": "fixed"' in row["retry"]


async def test_a_delayed_spawn_is_claimable_only_when_due(client: Client, dsn: str) -> None:
    info = await client.spawn(Q, "job", None, SpawnOptions(delay=60))
    assert await client.claim(Q, "w1") == []
    async with _at(dsn, _now() + timedelta(seconds=61)) as later:
        assert [c.run_id for c in await later.claim(Q, "w1")] == [info.run_id]


async def test_a_spawn_at_a_time_is_claimable_only_from_then(client: Client, dsn: str) -> None:
    when = _now() + timedelta(hours=2)
    info = await client.spawn(Q, "job", None, SpawnOptions(at=when))
    assert (await _runs(client, info.task_id))[0].available_at == when
    async with _at(dsn, when - timedelta(seconds=1)) as before:
        assert await before.claim(Q, "w1") == []
    async with _at(dsn, when) as then:
        assert [c.run_id for c in await then.claim(Q, "w1")] == [info.run_id]


async def test_spawn_many_returns_one_result_per_item_in_order(client: Client) -> None:
    infos = await client.spawn_many(Q, [("job", i) for i in range(20)])
    assert all(i.created and i.attempt == 1 for i in infos)
    params = [(await client.get_task(Q, i.task_id)).params for i in infos]
    assert params == list(range(20))


async def test_a_batch_without_options_stores_what_any_other_spawn_stores(
    client: Client, dsn: str
) -> None:
    # a batch of items without options takes spawn_many's plain path; the others do not
    [plain] = await client.spawn_many(Q, [("job", 1)])
    mixed, _ = await client.spawn_many(Q, [("job", 1), ("job", 2, SpawnOptions(tags=["t"]))])
    single = await client.spawn(Q, "job", 1)
    async with connection(dsn) as conn:
        rows = await conn.fetch(
            """
            select to_jsonb(t) - '{task_id,created_at,scheduled_at}'::text[] as task,
                   to_jsonb(r) - '{run_id,task_id,created_at,available_at}'::text[] as run,
                   t.scheduled_at = t.created_at and r.available_at = r.created_at as now
              from unnest($1::uuid[]) with ordinality as u(task_id, ord)
              join durable.tasks t using (task_id) join durable.runs r using (task_id)
             order by u.ord
            """,
            [plain.task_id, mixed.task_id, single.task_id],
        )
    assert [row["now"] for row in rows] == [True, True, True]
    assert rows[0]["task"] == rows[1]["task"] == rows[2]["task"]
    assert rows[0]["run"] == rows[1]["run"] == rows[2]["run"]


async def test_spawn_many_honours_keys_within_the_batch_and_existing(client: Client) -> None:
    old = await client.spawn(Q, "job", "old", SpawnOptions(idempotency_key="old"))
    infos = await client.spawn_many(
        Q,
        [
            ("job", "a", SpawnOptions(idempotency_key="a")),
            ("job", "old", SpawnOptions(idempotency_key="old")),
            ("job", "plain"),
            ("job", "a again", SpawnOptions(idempotency_key="a")),
        ],
    )
    assert [i.created for i in infos] == [True, False, True, False]
    assert infos[1] == SpawnInfo(old.task_id, old.run_id, 1, created=False)
    assert infos[3] == SpawnInfo(infos[0].task_id, infos[0].run_id, 1, created=False)
    assert (await client.get_task(Q, infos[0].task_id)).params == "a"
    counts = {c.state: c.count for c in await client.queue_counts() if c.queue == Q}
    assert counts == {TaskState.PENDING: 3}


# --- claim ------------------------------------------------------------------------------------


async def test_claim_takes_at_most_qty_runs(client: Client) -> None:
    await client.spawn_many(Q, [("job", i) for i in range(5)])
    assert len(await client.claim(Q, "w1", qty=3)) == 3
    assert len(await client.claim(Q, "w1", qty=3)) == 2
    assert await client.claim(Q, "w1", qty=3) == []


async def test_claim_takes_higher_priority_first(client: Client) -> None:
    for priority in (0, 10, -5, 3):
        await client.spawn(Q, "job", priority, SpawnOptions(priority=priority))
    first = await client.claim(Q, "w1", qty=2)
    assert [c.params for c in first] == [10, 3]
    assert [c.params for c in await client.claim(Q, "w1", qty=2)] == [0, -5]


async def test_claim_returns_the_task_and_a_lease(client: Client) -> None:
    options = SpawnOptions(max_attempts=4, timeout=9.0, headers={"h": 1})
    info = await client.spawn(Q, "job", {"n": 1}, options)
    before = _now()
    [claim] = await client.claim(Q, "w1", claim_timeout=30.0)
    assert (claim.run_id, claim.task_id, claim.task_name, claim.queue) == (
        info.run_id,
        info.task_id,
        "job",
        Q,
    )
    assert (claim.params, claim.headers, claim.attempt, claim.max_attempts) == (
        {"n": 1},
        {"h": 1},
        1,
        4,
    )
    assert (claim.timeout, claim.heartbeat_timeout, claim.has_checkpoints) == (9.0, None, False)
    assert before + timedelta(seconds=29) < claim.lease_expires_at < _now() + timedelta(seconds=31)
    task = await client.get_task(Q, info.task_id)
    assert task.state == TaskState.RUNNING
    assert task.runs[0].claimed_by == "w1"


async def test_a_claimed_run_is_not_claimed_again(client: Client) -> None:
    await client.spawn(Q, "job", None)
    await _claim_one(client)
    assert await client.claim(Q, "w2", qty=10) == []


async def test_claim_only_sees_its_queue(client: Client) -> None:
    await client.spawn("other", "job", None)
    assert await client.claim(Q, "w1") == []


# --- complete ---------------------------------------------------------------------------------


async def test_complete_records_the_result(client: Client) -> None:
    info, run_id = await _spawn_and_claim(client)
    await client.complete(Q, run_id, {"sent": True})
    result = await client.get_result(Q, info.task_id)
    assert (result.state, result.result, result.failure) == (
        TaskState.COMPLETED,
        {"sent": True},
        None,
    )
    [run] = await _runs(client, info.task_id)
    assert (run.state, run.result) == (RunState.COMPLETED, {"sent": True})


async def test_every_write_after_complete_raises_lease_lost(client: Client) -> None:
    info, run_id = await _spawn_and_claim(client)
    await client.complete(Q, run_id, 1)
    with pytest.raises(LeaseLost) as caught:
        await client.complete(Q, run_id, 2)
    assert caught.value.run_id == run_id
    with pytest.raises(LeaseLost):
        await client.fail(Q, run_id, {"type": "E"})
    with pytest.raises(LeaseLost):
        await client.extend_claim(Q, run_id, 10)
    with pytest.raises(LeaseLost):
        await client.set_checkpoint(Q, run_id, "s", 1)
    assert (await client.get_result(Q, info.task_id)).result == 1
    assert await client.get_checkpoints(Q, info.task_id) == []


async def test_complete_on_another_queue_raises_lease_lost(client: Client) -> None:
    info, run_id = await _spawn_and_claim(client)
    with pytest.raises(LeaseLost):
        await client.complete("other", run_id, 1)
    assert (await client.get_result(Q, info.task_id)).state == TaskState.RUNNING


# --- fail -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "retry",
    [None, Fixed(5.0), Exponential(base=2.0, factor=3.0, max=60.0, jitter=0.5)],
    ids=["default", "fixed", "exponential"],
)
async def test_fail_with_attempts_left_schedules_the_next_run_within_the_backoff(
    client: Client, retry: RetryStrategy | None
) -> None:
    info, run_id = await _spawn_and_claim(client, SpawnOptions(retry=retry, max_attempts=5))
    error = {"type": "ValueError", "message": "boom", "traceback": "..."}
    next_run = await client.fail(Q, run_id, error)
    task = await client.get_task(Q, info.task_id)
    failed, pending = task.runs
    assert (failed.state, failed.failure_reason, failed.error) == (
        RunState.FAILED,
        FailureReason.ERRORED,
        error,
    )
    assert (pending.run_id, pending.state, pending.attempt) == (next_run, RunState.PENDING, 2)
    assert (task.state, task.attempt) == (TaskState.PENDING, 2)
    assert failed.finished_at is not None
    waited = (pending.available_at - failed.finished_at).total_seconds()
    low, high = delay_bounds(retry or DEFAULT_RETRY, 1)
    assert low - TOLERANCE_S <= waited <= high + TOLERANCE_S


async def test_the_second_failure_waits_longer(client: Client, dsn: str) -> None:
    retry = Exponential(base=10.0, factor=2.0, max=100.0, jitter=0.0)
    info, run_id = await _spawn_and_claim(client, SpawnOptions(retry=retry, max_attempts=3))
    await client.fail(Q, run_id, None)
    async with _at(dsn, _now() + timedelta(seconds=11)) as later:
        [claim] = await later.claim(Q, "w1")
        assert claim.attempt == 2
        await later.fail(Q, claim.run_id, None)
    runs = await _runs(client, info.task_id)
    assert runs[1].finished_at is not None
    assert (runs[2].available_at - runs[1].finished_at).total_seconds() == pytest.approx(20.0)


async def test_exhausted_attempts_end_the_task_failed(client: Client) -> None:
    info, run_id = await _spawn_and_claim(client, SpawnOptions(max_attempts=1))
    error = {"type": "KeyError", "message": "'x'"}
    assert await client.fail(Q, run_id, error) is None
    result = await client.get_result(Q, info.task_id)
    assert result.state == TaskState.FAILED
    assert result.failure is not None
    assert (result.failure.reason, result.failure.error) == (FailureReason.ERRORED, error)
    assert (result.failure.run_id, result.failure.attempt) == (run_id, 1)
    assert [r.state for r in await _runs(client, info.task_id)] == [RunState.FAILED]
    assert await client.claim(Q, "w1") == []


async def test_fail_honours_retry_at(client: Client) -> None:
    info, run_id = await _spawn_and_claim(client)
    retry_at = _now() + timedelta(minutes=42)
    next_run = await client.fail(Q, run_id, None, retry_at=retry_at)
    runs = await _runs(client, info.task_id)
    assert (runs[1].run_id, runs[1].available_at) == (next_run, retry_at)


async def test_fail_stores_the_reason_given(client: Client) -> None:
    info, run_id = await _spawn_and_claim(client, SpawnOptions(max_attempts=1))
    await client.fail(Q, run_id, {"type": "TimeoutError"}, reason=FailureReason.JOB_TIMEOUT)
    failure = (await client.get_result(Q, info.task_id)).failure
    assert failure is not None
    assert failure.reason == FailureReason.JOB_TIMEOUT
    assert (await _runs(client, info.task_id))[0].failure_reason == FailureReason.JOB_TIMEOUT


# --- leases and reaping -----------------------------------------------------------------------


async def test_extend_claim_moves_the_lease(client: Client) -> None:
    info, run_id = await _spawn_and_claim(client, claim_timeout=30.0)
    lease = await client.extend_claim(Q, run_id, 600)
    assert _now() + timedelta(seconds=590) < lease < _now() + timedelta(seconds=610)
    assert (await _runs(client, info.task_id))[0].lease_expires_at == lease


async def test_extend_claim_never_shortens_the_lease(client: Client) -> None:
    _, run_id = await _spawn_and_claim(client, claim_timeout=600.0)
    lease = await client.extend_claim(Q, run_id, 1)
    assert lease > _now() + timedelta(seconds=590)


async def test_extend_claim_defaults_to_the_claim_timeout(client: Client, dsn: str) -> None:
    start = _now()
    _, run_id = await _spawn_and_claim(client, claim_timeout=30.0)
    later_now = start + timedelta(seconds=20)
    async with _at(dsn, later_now) as later:
        assert await later.extend_claim(Q, run_id) == later_now + timedelta(seconds=30)


async def test_extend_claim_after_the_lease_lapsed_raises_lease_lost(
    client: Client, dsn: str
) -> None:
    _, run_id = await _spawn_and_claim(client, claim_timeout=30.0)
    async with _at(dsn, _now() + timedelta(seconds=31)) as later:
        with pytest.raises(LeaseLost):
            await later.extend_claim(Q, run_id, 60)


async def _assert_reaped(client: Client, task_id: uuid.UUID, reason: FailureReason) -> None:
    task = await client.get_task(Q, task_id)
    assert [(r.state, r.attempt) for r in task.runs] == [
        (RunState.FAILED, 1),
        (RunState.PENDING, 2),
    ]
    assert task.runs[0].failure_reason == reason
    assert task.runs[0].error is not None
    assert task.attempt == 2


async def test_a_lapsed_lease_of_a_gone_worker_is_reaped_as_crash(client: Client, dsn: str) -> None:
    await client.register_worker("w1", "host", 1, [Q], ttl=30.0)
    info, run_id = await _spawn_and_claim(client, claim_timeout=5.0)
    async with _at(dsn, _now() + timedelta(hours=1)) as later:
        assert await later.claim(Q, "w2") == []
        with pytest.raises(LeaseLost):
            await later.complete(Q, run_id, "too late")
    await _assert_reaped(client, info.task_id, FailureReason.CRASH)


async def test_a_lapsed_lease_of_a_stopped_worker_is_reaped_as_crash(
    client: Client, dsn: str
) -> None:
    await client.register_worker("w1", "host", 1, [Q], ttl=3600.0)
    info, _ = await _spawn_and_claim(client, claim_timeout=5.0)
    await client.stop_worker("w1")
    async with _at(dsn, _now() + timedelta(seconds=10)) as later:
        await later.claim(Q, "w2")
    await _assert_reaped(client, info.task_id, FailureReason.CRASH)


async def test_a_lapsed_lease_of_a_live_worker_is_reaped_as_heartbeat_timeout(
    client: Client, dsn: str
) -> None:
    await client.register_worker("w1", "host", 1, [Q], ttl=3600.0)
    info, _ = await _spawn_and_claim(client, claim_timeout=5.0)
    async with _at(dsn, _now() + timedelta(seconds=60)) as later:
        assert await later.worker_heartbeat("w1", 3600.0) is True  # seen after the lease lapsed
        await later.claim(Q, "w2")
    await _assert_reaped(client, info.task_id, FailureReason.HEARTBEAT_TIMEOUT)


async def test_a_lapsed_lease_waits_until_its_worker_is_seen_or_gone(
    client: Client, dsn: str
) -> None:
    await client.register_worker("w1", "host", 1, [Q], ttl=3600.0)
    info, run_id = await _spawn_and_claim(client, claim_timeout=5.0)
    async with _at(dsn, _now() + timedelta(seconds=60)) as later:
        assert await later.claim(Q, "w2") == []
    [run] = await _runs(client, info.task_id)
    assert (run.run_id, run.state, run.failure_reason) == (run_id, RunState.RUNNING, None)


# --- checkpoints ------------------------------------------------------------------------------


async def test_get_checkpoints_returns_what_the_run_wrote(client: Client) -> None:
    info, run_id = await _spawn_and_claim(client)
    await client.set_checkpoint(Q, run_id, "load", {"user": 7})
    await client.set_checkpoint(Q, run_id, "send", None)
    checkpoints = await client.get_checkpoints(Q, info.task_id)
    assert [(c.step_name, c.value, c.run_id) for c in checkpoints] == [
        ("load", {"user": 7}, run_id),
        ("send", None, run_id),
    ]


async def test_a_second_write_of_a_step_keeps_the_first_value(client: Client) -> None:
    info, run_id = await _spawn_and_claim(client)
    await client.set_checkpoint(Q, run_id, "step", "first")
    await client.set_checkpoint(Q, run_id, "step", "second")
    assert [c.value for c in await client.get_checkpoints(Q, info.task_id)] == ["first"]


async def test_set_checkpoint_extends_the_lease(client: Client, dsn: str) -> None:
    start = _now()
    info, run_id = await _spawn_and_claim(client, claim_timeout=30.0)
    later_now = start + timedelta(seconds=20)
    async with _at(dsn, later_now) as later:
        await later.set_checkpoint(Q, run_id, "a", 1)
        assert (await _runs(later, info.task_id))[0].lease_expires_at == later_now + timedelta(
            seconds=30
        )
        await later.set_checkpoint(Q, run_id, "b", 2, extend_by=600)
        assert (await _runs(later, info.task_id))[0].lease_expires_at == later_now + timedelta(
            seconds=600
        )


async def test_a_checkpoint_after_the_lease_expired_raises_and_writes_nothing(
    client: Client, dsn: str
) -> None:
    info, run_id = await _spawn_and_claim(client, claim_timeout=30.0)
    await client.set_checkpoint(Q, run_id, "a", 1)
    async with _at(dsn, _now() + timedelta(seconds=31)) as later:
        with pytest.raises(LeaseLost):
            await later.set_checkpoint(Q, run_id, "b", 2)
    assert [c.step_name for c in await client.get_checkpoints(Q, info.task_id)] == ["a"]


async def test_a_checkpoint_after_the_run_was_reaped_raises_and_writes_nothing(
    client: Client, dsn: str
) -> None:
    info, run_id = await _spawn_and_claim(client, claim_timeout=5.0)
    await client.stop_worker("w1")
    async with _at(dsn, _now() + timedelta(seconds=10)) as later:
        await later.claim(Q, "w2")
    await _assert_reaped(client, info.task_id, FailureReason.CRASH)
    with pytest.raises(LeaseLost):
        await client.set_checkpoint(Q, run_id, "b", 2, extend_by=600)
    assert await client.get_checkpoints(Q, info.task_id) == []


async def test_set_checkpoints_records_the_live_runs_and_reports_the_lost(
    client: Client, dsn: str
) -> None:
    start = _now()
    await client.spawn_many(Q, [("job", i) for i in range(3)])
    claims = await client.claim(Q, "w1", 30, qty=3)
    await client.cancel(Q, claims[0].task_id)  # its run is no longer live
    live = claims[1]
    items = [
        (claims[0].run_id, "a", 0),
        (live.run_id, "a", {"x": 1}),
        (live.run_id, "b", None),  # two steps of one run in one batch
        (claims[2].run_id, "a", 2),
        (live.run_id, "a", "later"),  # a step already in the batch keeps its first value
    ]
    later_now = start + timedelta(seconds=20)
    async with _at(dsn, later_now) as later:
        assert await later.set_checkpoints(Q, items) == [False, True, True, True, True]
        # each live run's lease is extended by its lease duration, once per batch
        assert (await _runs(later, live.task_id))[0].lease_expires_at == later_now + timedelta(
            seconds=30
        )
    assert await client.get_checkpoints(Q, claims[0].task_id) == []
    steps = [(c.step_name, c.value) for c in await client.get_checkpoints(Q, live.task_id)]
    assert sorted(steps, key=lambda s: s[0]) == [("a", {"x": 1}), ("b", None)]
    # after the lease lapsed nothing more is written, and nothing raises
    async with _at(dsn, _now() + timedelta(seconds=61)) as late:
        assert await late.set_checkpoints(Q, [(claims[2].run_id, "b", 3)]) == [False]
    assert [c.step_name for c in await client.get_checkpoints(Q, claims[2].task_id)] == ["a"]


async def test_set_checkpoints_refuses_an_empty_step_name_and_writes_nothing(
    client: Client,
) -> None:
    info, run_id = await _spawn_and_claim(client)
    with pytest.raises(InvalidArgument, match="step name"):
        await client.set_checkpoints(Q, [(run_id, "a", 1), (run_id, "", 2)])
    assert await client.get_checkpoints(Q, info.task_id) == []


async def test_a_claim_tells_whether_checkpoints_exist(client: Client) -> None:
    info, run_id = await _spawn_and_claim(client, SpawnOptions(retry=Fixed(0)))
    await client.set_checkpoint(Q, run_id, "a", 1)
    await client.fail(Q, run_id, None)
    [claim] = await client.claim(Q, "w1")
    assert (claim.task_id, claim.attempt, claim.has_checkpoints) == (info.task_id, 2, True)


# --- extend_claims: the batched heartbeat -----------------------------------------------------


async def test_extend_claims_extends_every_lease_and_returns_the_lost(
    client: Client, dsn: str
) -> None:
    start = _now()
    infos = await client.spawn_many(Q, [("job", i) for i in range(4)])
    mine = [c.run_id for c in await client.claim(Q, "w1", claim_timeout=30.0, qty=3)]
    theirs = await _claim_one(client, worker="w2")
    cancelled = mine.pop()
    await client.cancel(Q, next(i.task_id for i in infos if i.run_id == cancelled))
    later_now = start + timedelta(seconds=20)
    async with _at(dsn, later_now) as later:
        lost = await later.extend_claims("w1", [*mine, cancelled, theirs], worker_ttl=90.0)
        assert sorted(lost) == sorted([cancelled, theirs])
        leases = {
            r.run_id: r.lease_expires_at for i in infos for r in await _runs(later, i.task_id)
        }
    assert [leases[r] for r in mine] == [later_now + timedelta(seconds=30)] * 2
    theirs_lease = leases[theirs]
    assert theirs_lease is not None
    assert theirs_lease < later_now + timedelta(seconds=30)  # another worker's: not extended
    async with connection(dsn) as conn:
        expires = await conn.fetchval("select expires_at from durable.workers where worker_id='w1'")
    assert expires == later_now + timedelta(seconds=90)


# --- schedule_run -----------------------------------------------------------------------------


async def test_schedule_run_defers_without_spending_an_attempt(client: Client, dsn: str) -> None:
    info, run_id = await _spawn_and_claim(client)
    next_run = await client.schedule_run(Q, run_id, 60)
    task = await client.get_task(Q, info.task_id)
    assert [(r.run_id, r.state, r.attempt) for r in task.runs] == [
        (run_id, RunState.RELEASED, 1),
        (next_run, RunState.PENDING, 1),
    ]
    assert (task.state, task.attempt) == (TaskState.PENDING, 1)
    assert await client.claim(Q, "w1") == []
    async with _at(dsn, _now() + timedelta(seconds=61)) as later:
        [claim] = await later.claim(Q, "w1")
    assert (claim.run_id, claim.attempt) == (next_run, 1)


async def test_schedule_run_with_a_stale_run_raises_lease_lost(client: Client) -> None:
    info, run_id = await _spawn_and_claim(client)
    await client.schedule_run(Q, run_id, 0)
    with pytest.raises(LeaseLost):
        await client.schedule_run(Q, run_id, 0)
    with pytest.raises(LeaseLost):
        await client.complete(Q, run_id, None)
    assert len(await _runs(client, info.task_id)) == 2


# --- cancel and retry -------------------------------------------------------------------------


async def test_cancel_a_pending_task(client: Client) -> None:
    info = await client.spawn(Q, "job", None)
    await client.cancel(Q, info.task_id)
    result = await client.get_result(Q, info.task_id)
    assert result.state == TaskState.CANCELLED
    assert result.failure is not None
    assert result.failure.reason == FailureReason.CANCELLED
    assert await client.claim(Q, "w1") == []


async def test_cancel_a_running_task_fences_its_runner(client: Client) -> None:
    info, run_id = await _spawn_and_claim(client)
    await client.cancel(None, info.task_id)
    assert (await client.get_result(Q, info.task_id)).state == TaskState.CANCELLED
    with pytest.raises(LeaseLost):
        await client.set_checkpoint(Q, run_id, "s", 1)
    with pytest.raises(LeaseLost):
        await client.complete(Q, run_id, "done")
    [run] = await _runs(client, info.task_id)
    assert (run.state, run.failure_reason) == (RunState.CANCELLED, FailureReason.CANCELLED)
    assert await client.get_checkpoints(Q, info.task_id) == []


async def test_cancelling_a_completed_task_raises_invalid_state(client: Client) -> None:
    info, run_id = await _spawn_and_claim(client)
    await client.complete(Q, run_id, 1)
    with pytest.raises(InvalidState):
        await client.cancel(Q, info.task_id)
    assert (await client.get_result(Q, info.task_id)).state == TaskState.COMPLETED


async def test_cancelling_an_unknown_task_raises_task_not_found(client: Client) -> None:
    missing = uuid.uuid4()
    with pytest.raises(TaskNotFound) as caught:
        await client.cancel(Q, missing)
    assert caught.value.task_id == missing


async def test_retry_of_a_failed_task_keeps_its_checkpoints(client: Client) -> None:
    info, run_id = await _spawn_and_claim(client, SpawnOptions(max_attempts=1))
    await client.set_checkpoint(Q, run_id, "load", {"user": 7})
    await client.fail(Q, run_id, {"type": "E"})
    again = await client.retry(Q, info.task_id)
    assert (again.task_id, again.attempt, again.created) == (info.task_id, 2, False)
    task = await client.get_task(Q, info.task_id)
    assert (task.state, task.attempt, task.max_attempts) == (TaskState.PENDING, 2, 2)
    assert [(r.state, r.attempt) for r in task.runs] == [
        (RunState.FAILED, 1),
        (RunState.PENDING, 2),
    ]
    [claim] = await client.claim(Q, "w1")
    assert (claim.run_id, claim.attempt, claim.has_checkpoints) == (again.run_id, 2, True)
    assert [c.value for c in await client.get_checkpoints(Q, info.task_id)] == [{"user": 7}]


async def test_retry_of_a_cancelled_task_makes_a_new_run(client: Client) -> None:
    info = await client.spawn(Q, "job", None)
    await client.cancel(Q, info.task_id)
    again = await client.retry(None, info.task_id)
    assert [c.run_id for c in await client.claim(Q, "w1")] == [again.run_id]


async def test_retry_with_a_delay_is_claimable_only_when_due(client: Client, dsn: str) -> None:
    info, run_id = await _spawn_and_claim(client, SpawnOptions(max_attempts=1))
    await client.fail(Q, run_id, None)
    again = await client.retry(Q, info.task_id, SpawnOptions(delay=60))
    assert await client.claim(Q, "w1") == []
    async with _at(dsn, _now() + timedelta(seconds=61)) as later:
        assert [c.run_id for c in await later.claim(Q, "w1")] == [again.run_id]


async def test_retry_of_a_completed_or_pending_task_raises_invalid_state(client: Client) -> None:
    done, run_id = await _spawn_and_claim(client)
    await client.complete(Q, run_id, 1)
    pending = await client.spawn(Q, "job", None)
    for task_id in (done.task_id, pending.task_id):
        with pytest.raises(InvalidState):
            await client.retry(Q, task_id)
    assert len(await _runs(client, done.task_id)) == 1
    assert len(await _runs(client, pending.task_id)) == 1


# --- workers and operator views ---------------------------------------------------------------


async def test_worker_registers_heartbeats_and_stops(client: Client, dsn: str) -> None:
    async def worker_row() -> asyncpg.Record | None:
        async with connection(dsn) as conn:
            return await conn.fetchrow("select * from durable.workers where worker_id = 'w1'")

    assert await client.worker_heartbeat("w1", 30.0) is False  # unknown
    await client.register_worker("w1", "host-a", 123, [Q, "other"], ttl=30.0)
    row = await worker_row()
    assert row is not None
    assert (row["host"], row["pid"], row["queues"], row["stopped_at"]) == (
        "host-a",
        123,
        [Q, "other"],
        None,
    )
    later_now = _now() + timedelta(seconds=20)
    async with _at(dsn, later_now) as later:
        assert await later.worker_heartbeat("w1", 30.0) is True
    row = await worker_row()
    assert row is not None
    assert (row["last_seen_at"], row["expires_at"]) == (
        later_now,
        later_now + timedelta(seconds=30),
    )
    await client.stop_worker("w1")
    row = await worker_row()
    assert row is not None
    assert row["stopped_at"] is not None
    assert await client.worker_heartbeat("w1", 30.0) is False


async def test_queue_counts_counts_tasks_by_live_state(client: Client) -> None:
    infos = await client.spawn_many(Q, [("job", i) for i in range(4)])
    await client.spawn("other", "job", None)
    claims = await client.claim(Q, "w1", qty=2)
    await client.complete(Q, claims[1].run_id, None)
    claimed = {c.task_id for c in claims}
    await client.cancel(Q, next(i.task_id for i in infos if i.task_id not in claimed))
    counts = {(c.queue, c.state): c.count for c in await client.queue_counts()}
    assert counts == {
        (Q, TaskState.PENDING): 1,
        (Q, TaskState.RUNNING): 1,
        (Q, TaskState.COMPLETED): 1,
        (Q, TaskState.CANCELLED): 1,
        ("other", TaskState.PENDING): 1,
    }


async def test_list_failed_runs_lists_failed_runs_newest_first(client: Client) -> None:
    first, run_1 = await _spawn_and_claim(client, SpawnOptions(max_attempts=1))
    await client.fail(Q, run_1, {"type": "A"})
    second, run_2 = await _spawn_and_claim(client, SpawnOptions(max_attempts=2))
    await client.fail(Q, run_2, {"type": "B"}, reason=FailureReason.JOB_TIMEOUT)
    rows = await client.list_failed_runs(Q)
    assert [(r.run_id, r.task_id, r.task_state, r.failure_reason, r.error) for r in rows] == [
        (run_2, second.task_id, TaskState.PENDING, FailureReason.JOB_TIMEOUT, {"type": "B"}),
        (run_1, first.task_id, TaskState.FAILED, FailureReason.ERRORED, {"type": "A"}),
    ]
    assert (rows[0].attempt, rows[0].max_attempts, rows[0].task_name) == (1, 2, "job")
    assert [r.run_id for r in await client.list_failed_runs(Q, limit=1)] == [run_2]
    assert await client.list_failed_runs("other") == []


# --- durable.next_delay: the SQL backoff agrees with durable.protocol.retry.delay_bounds ------

_SAMPLE = """
select min(d), max(d) from (select durable.next_delay($1, $2) as d from generate_series(1, 400)) s
"""


async def _sample(dsn: str, retry: dict[str, Any] | None, attempt: int) -> tuple[float, float]:
    async with connection(dsn) as conn:
        row = await conn.fetchrow(_SAMPLE, None if retry is None else _jsonb(retry), attempt)
    assert row is not None
    return row[0], row[1]


def _jsonb(doc: dict[str, Any]) -> str:
    return json.dumps(doc)  # a raw connection takes jsonb as text


@pytest.mark.parametrize(
    "retry",
    [
        Fixed(3.0),
        Fixed(0.0),
        Exponential(),
        Exponential(base=0.5, factor=3.0, max=40.0, jitter=0.5),
        Exponential(base=2.0, factor=1.0, max=10.0, jitter=0.2),
        Exponential(base=5.0, factor=2.0, max=1.0, jitter=0.3),
        Exponential(base=0.0, factor=2.0, max=10.0, jitter=1.0),
    ],
    ids=str,
)
async def test_next_delay_stays_within_delay_bounds(dsn: str, retry: RetryStrategy) -> None:
    for attempt in (1, 2, 3, 5, 8, 13, 30):
        low, high = delay_bounds(retry, attempt)
        smallest, largest = await _sample(dsn, retry.to_json(), attempt)
        assert low - 1e-9 <= smallest <= largest <= high + 1e-9, (attempt, smallest, largest)


async def test_next_delay_without_a_strategy_uses_the_default(dsn: str) -> None:
    for attempt in (1, 4):
        low, high = delay_bounds(DEFAULT_RETRY, attempt)
        smallest, largest = await _sample(dsn, None, attempt)
        assert low - 1e-9 <= smallest <= largest <= high + 1e-9


@pytest.mark.parametrize("attempt", [1_000, 1_000_000, 2_147_483_647])
async def test_next_delay_of_a_huge_attempt_is_capped_without_overflow(
    dsn: str, attempt: int
) -> None:
    retry = Exponential(base=1.0, factor=10.0, max=300.0, jitter=0.1)
    smallest, largest = await _sample(dsn, retry.to_json(), attempt)
    assert 270.0 - 1e-9 <= smallest <= largest <= 300.0


async def test_next_delay_without_jitter_is_exact(dsn: str) -> None:
    retry = Exponential(base=1.5, factor=2.0, max=100.0, jitter=0.0)
    for attempt, expected in ((1, 1.5), (2, 3.0), (4, 12.0), (8, 100.0), (2_147_483_647, 100.0)):
        smallest, largest = await _sample(dsn, retry.to_json(), attempt)
        assert smallest == pytest.approx(expected)
        assert largest == pytest.approx(expected)


async def test_runs_waiting_on_a_live_worker_do_not_hold_back_a_crashed_one(
    client: Client, dsn: str
) -> None:
    await client.register_worker("slow", "host", 1, [Q], ttl=3600.0)
    await client.spawn_many(Q, [("job", i) for i in range(150)])
    assert len(await client.claim(Q, "slow", claim_timeout=5.0, qty=150)) == 150
    crashed, _ = await _spawn_and_claim(client, claim_timeout=5.0)
    await client.stop_worker("w1")
    async with _at(dsn, _now() + timedelta(seconds=60)) as later:
        await later.claim(Q, "w2")
    await _assert_reaped(client, crashed.task_id, FailureReason.CRASH)


# --- notifications ----------------------------------------------------------------------------


async def test_work_and_done_are_notified(client: Client) -> None:
    received: list[tuple[str, str]] = []
    done = anyio.Event()

    def on(channel: str) -> Callable[[str], None]:
        def handler(payload: str) -> None:
            received.append((channel, payload))
            if channel == CHANNEL_DONE:
                done.set()

        return handler

    listener = await client.listen({CHANNEL_WORK: on(CHANNEL_WORK), CHANNEL_DONE: on(CHANNEL_DONE)})
    try:
        await client.spawn(Q, "job", None, SpawnOptions(delay=60))  # not claimable now: silent
        info, run_id = await _spawn_and_claim(client)
        await client.complete(Q, run_id, None)
        with anyio.fail_after(5):
            await done.wait()
    finally:
        await listener.close()
    assert received == [(CHANNEL_WORK, Q), (CHANNEL_DONE, str(info.task_id))]


async def test_complete_runs_notifies_its_ended_tasks_in_lists_of_up_to_200(
    client: Client,
) -> None:
    payloads: list[str] = []
    listener = await client.listen({CHANNEL_DONE: payloads.append})
    try:
        await client.spawn_many(Q, [("job", i) for i in range(250)])
        claims = await client.claim(Q, "w1", 30, qty=250)
        await client.store.complete_runs(Q, [(c.run_id, None) for c in claims])

        async def both_lists() -> bool:
            return len(payloads) >= 2

        await wait_until(both_lists, timeout=5, what="two notifications", interval=0.01)
    finally:
        await listener.close()
    lists = [p.split(",") for p in payloads]
    assert [len(ids) for ids in lists] == [200, 50]
    assert sorted(ids for chunk in lists for ids in chunk) == sorted(str(c.task_id) for c in claims)


async def test_a_batch_is_claimed_in_its_order(client: Client) -> None:
    """spawn_many keys a batch in its order, so claim (priority, time, key) takes it FIFO."""
    infos = await client.spawn_many(Q, [("job", i) for i in range(300)])
    assert len({i.task_id for i in infos} | {i.run_id for i in infos}) == 600
    claims = await client.claim(Q, "w1", 30, qty=120) + await client.claim(Q, "w1", 30, qty=500)
    assert [c.params for c in claims] == list(range(300))
    assert [c.run_id for c in claims] == [i.run_id for i in infos]


async def test_complete_runs_completes_the_live_runs_and_reports_the_lost(client: Client) -> None:
    await client.spawn_many("q", [("t", i) for i in range(4)])
    claims = await client.claim("q", "w1", 30, qty=4)
    await client.cancel("q", claims[0].task_id)  # its run is no longer live
    outcome = await client.store.complete_runs(
        "q", [(c.run_id, {"echo": c.params}) for c in claims]
    )
    assert outcome == {c.run_id: c is not claims[0] for c in claims}
    for c in claims[1:]:
        result = await client.get_result("q", c.task_id)
        assert (result.state, result.result) == (TaskState.COMPLETED, {"echo": c.params})
    assert (await client.get_result("q", claims[0].task_id)).state is TaskState.CANCELLED
    # a second batch of the same runs writes nothing: they are no longer live
    again = await client.store.complete_runs("q", [(c.run_id, None) for c in claims])
    assert not any(again.values())
