"""The operator's console in SQL: the task browser (filters, live state, keyset pages), the live
depth of the queues, the workers and their slots, and the flow over time (rollup and live tail).
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from durable.client import Client
from durable.client.flow import bucket_middle_s, percentile, series
from durable.protocol.errors import InvalidArgument, InvalidQueueName
from durable.protocol.records import FailureReason, FlowMinute, SpawnOptions, TaskState

pytestmark = pytest.mark.anyio

Q = "console"


async def test_the_browser_filters_by_live_state_and_the_rest(client: Client) -> None:
    running = await client.spawn(Q, "fetch", {"url": "a", "n": 1}, SpawnOptions(tags=["t1"]))
    [claim] = await client.claim(Q, "w1", 30)
    assert claim.task_id == running.task_id
    done = await client.spawn(Q, "fetch", {"url": "b"}, SpawnOptions(idempotency_key="k-b"))
    [claim_done] = await client.claim(Q, "w1", 30)
    await client.complete(Q, claim_done.run_id, 1)
    later = await client.spawn(Q, "mail", {"to": "x"}, SpawnOptions(delay=3600, tags=["t1", "t2"]))
    other = await client.spawn("elsewhere", "fetch", {"url": "a"})

    async def ids(**filters: object) -> list[uuid.UUID]:
        page = await client.list_tasks(**filters)  # type: ignore[arg-type]
        return [task.task_id for task in page.tasks]

    # newest first; a running task is 'running' although tasks.state says pending
    page = await client.list_tasks()
    assert [t.task_id for t in page.tasks] == [
        other.task_id,
        later.task_id,
        done.task_id,
        running.task_id,
    ]
    states = {t.task_id: t.state for t in page.tasks}
    assert states[running.task_id] is TaskState.RUNNING
    assert states[done.task_id] is TaskState.COMPLETED
    assert states[later.task_id] is TaskState.PENDING
    assert await ids(state="running") == [running.task_id]
    assert await ids(state="pending") == [other.task_id, later.task_id]
    assert await ids(state="pending", queue=Q) == [later.task_id]
    assert await ids(state="completed") == [done.task_id]
    assert await ids(queue=Q, task_name="fetch") == [done.task_id, running.task_id]
    assert await ids(tags=["t1"]) == [later.task_id, running.task_id]
    assert await ids(tags=["t1", "t2"]) == [later.task_id]
    assert await ids(task_id=done.task_id) == [done.task_id]
    assert await ids(idempotency_key="k-b") == [done.task_id]
    assert await ids(params={"url": "a"}) == [other.task_id, running.task_id]
    assert await ids(params={"url": "a", "n": 1}) == [running.task_id]
    assert await ids(since=3600) == [other.task_id, later.task_id, done.task_id, running.task_id]
    assert await ids(until=datetime.now(UTC) - timedelta(hours=1)) == []
    assert await ids(since=datetime.now(UTC) + timedelta(hours=1)) == []
    [row] = (await client.list_tasks(state="completed")).tasks
    assert (row.queue, row.task_name, row.attempt, row.idempotency_key) == (Q, "fetch", 1, "k-b")


async def test_pages_follow_one_another_by_key(client: Client) -> None:
    spawned = await client.spawn_many(Q, [("job", {"i": i}) for i in range(7)])
    newest_first = [info.task_id for info in reversed(spawned)]
    seen: list[uuid.UUID] = []
    before = None
    pages = 0
    while True:
        page = await client.list_tasks(queue=Q, limit=3, before=before)
        seen += [task.task_id for task in page.tasks]
        pages += 1
        if page.next_before is None:
            break
        before = page.next_before
    assert seen == newest_first
    assert pages == 3
    # a page while work runs: a task claimed between two pages is still listed once
    first = await client.list_tasks(queue=Q, limit=3)
    await client.claim(Q, "w1", 30, qty=7)
    rest = await client.list_tasks(queue=Q, limit=10, before=first.next_before)
    assert [t.task_id for t in first.tasks + rest.tasks] == newest_first
    assert {t.state for t in rest.tasks} == {TaskState.RUNNING}


async def test_the_browser_refuses_bad_input_with_typed_errors(client: Client) -> None:
    with pytest.raises(InvalidArgument, match="limit"):
        await client.list_tasks(limit=0)
    with pytest.raises(InvalidArgument, match="limit"):
        await client.list_tasks(limit=1001)
    with pytest.raises(InvalidArgument, match="state 'dead' is not one of"):
        await client.list_tasks(state="dead")
    with pytest.raises(InvalidQueueName):
        await client.list_tasks(queue="Bad Queue")
    with pytest.raises(InvalidArgument, match="timezone"):
        await client.list_tasks(until=datetime(2030, 1, 1))  # naive on purpose


async def test_the_browser_sql_refuses_bad_input_too(raw: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.PostgresError, match="unknown task state") as caught:
        await raw.fetch("select * from durable.list_tasks(p_state => 'dead')")
    assert caught.value.sqlstate == "DU005"
    with pytest.raises(asyncpg.PostgresError, match="limit") as caught:
        await raw.fetch("select * from durable.list_tasks(p_limit => 5000)")
    assert caught.value.sqlstate == "DU005"


async def test_queue_depth_counts_live_runs_only(client: Client) -> None:
    for i in range(3):
        await client.spawn(Q, "job", {"i": i})
    await client.spawn(Q, "job", {"later": True}, SpawnOptions(delay=3600))
    [claim] = await client.claim(Q, "w1", 30)
    done = await client.spawn("other", "job", None)
    [other_claim] = await client.claim("other", "w1", 30)
    await client.complete("other", other_claim.run_id, None)
    assert done.task_id == other_claim.task_id

    depth = {d.queue: d for d in await client.queue_depth()}
    assert set(depth) == {Q}  # a queue whose work all finished has no live runs
    mine = depth[Q]
    assert (mine.pending, mine.running, mine.sleeping, mine.available) == (3, 1, 0, 2)
    assert mine.oldest_available_s is not None
    assert 0 <= mine.oldest_available_s < 60
    await client.complete(Q, claim.run_id, None)
    assert (await client.queue_depth())[0].running == 0


async def test_workers_say_their_slots(client: Client) -> None:
    await client.register_worker("w-a", "host-a", 11, [Q], 30, concurrency=8)
    await client.register_worker("w-b", "host-b", 12, [Q, "other"], 30)
    await client.spawn(Q, "job", None)
    [claim] = await client.claim(Q, "w-a", 30)
    lost = await client.extend_claims("w-a", [claim.run_id], 30, busy=1, ahead=2)
    assert lost == []
    await client.stop_worker("w-b")

    workers = {w.worker_id: w for w in await client.list_workers()}
    a, b = workers["w-a"], workers["w-b"]
    assert (a.alive, a.host, a.pid, a.queues) == (True, "host-a", 11, [Q])
    assert (a.concurrency, a.busy, a.claimed_ahead, a.running) == (8, 1, 2, 1)
    assert a.stats_at is not None
    assert (b.alive, b.concurrency, b.running) == (False, None, 0)
    assert b.stopped_at is not None
    assert next(w.worker_id for w in await client.list_workers()) == "w-a"  # alive first
    assert [w.worker_id for w in await client.list_workers(gone_within=0)] == ["w-a"]


async def _finish_some(client: Client) -> None:
    """Two completed runs, a failed attempt that is retried, a dead task, a cancelled task."""
    for _ in range(2):
        await client.spawn(Q, "ok", None)
    await client.spawn(Q, "flaky", None, SpawnOptions(max_attempts=2))
    await client.spawn(Q, "dies", None, SpawnOptions(max_attempts=1))
    claims = await client.claim(Q, "w1", 30, qty=4)
    by_name = {c.task_name: c for c in claims}
    for claim in claims:
        if claim.task_name == "ok":
            await client.complete(Q, claim.run_id, None)
    transport = {"type": "ConnectionError", "message": "x", "reason_class": "transport"}
    await client.fail(Q, by_name["flaky"].run_id, transport, retry_in=3600)
    await client.fail(Q, by_name["dies"].run_id, {"type": "Boom"}, FailureReason.JOB_TIMEOUT)
    cancelled = await client.spawn(Q, "never", None)
    await client.cancel(Q, cancelled.task_id)


def _merged(rows: list[FlowMinute]) -> FlowMinute:
    """The rows' counts and tallies added up, as one row (of the first row's minute)."""
    classes: Counter[str] = Counter()
    lag: Counter[int] = Counter()
    run: Counter[int] = Counter()
    for r in rows:
        classes.update(r.failed_classes)
        lag.update(r.lag_ms)
        run.update(r.run_ms)
    return FlowMinute(
        minute=rows[0].minute,
        queue=rows[0].queue,
        completed=sum(r.completed for r in rows),
        failed=sum(r.failed for r in rows),
        dead=sum(r.dead for r in rows),
        cancelled=sum(r.cancelled for r in rows),
        failed_classes=dict(classes),
        lag_ms=dict(lag),
        run_ms=dict(run),
    )


def _totals(rows: list[FlowMinute]) -> dict[str, int]:
    now = datetime.now(UTC)
    return series(rows, start=now - timedelta(hours=1), end=now + timedelta(minutes=5)).totals


async def test_flow_reads_the_runs_that_ended_live_and_after_the_rollup(
    client: Client, dsn: str
) -> None:
    await _finish_some(client)
    live = await client.flow(3600)
    assert _totals(live) == {"completed": 2, "failed": 2, "dead": 1, "cancelled": 1}
    row = _merged(live)  # one minute, or two when the runs straddled a minute's end
    assert {r.queue for r in live} == {Q}
    assert row.failed_classes == {"transport": 1, "timeout": 1}
    assert sum(row.lag_ms.values()) == 4  # every run that started
    assert sum(row.run_ms.values()) == 4  # completed and failed ones
    assert await client.roll_up_flow() == 0  # the last 10 seconds wait for the next rollup
    ended = {(c.queue, str(c.state)): c.count for c in await client.ended_counts(3600)}
    assert ended == {(Q, "completed"): 2, (Q, "failed"): 1, (Q, "cancelled"): 1}
    with pytest.raises(InvalidArgument, match="whole number of minutes"):
        await client.flow(3600, step_s=90)
    step = _merged(await client.flow(3600, step_s=600))  # ten-minute steps hold the same runs
    assert (step.completed, step.failed, step.lag_ms) == (row.completed, row.failed, row.lag_ms)

    # a minute later (a worker's clock moved on) the rollup takes them; the sums stay the same
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    async with Client(dsn, server_settings={"durable.fake_now": later}) as ahead:
        assert await ahead.roll_up_flow() >= 1  # a row per minute the runs ended in
        assert await ahead.roll_up_flow() == 0  # nothing more
        assert await ahead.ended_counts(3600) == await client.ended_counts(3600)
        rolled = await client.flow(3600)
        assert _totals(rolled) == {"completed": 2, "failed": 2, "dead": 1, "cancelled": 1}
        assert _merged(rolled).failed_classes == {"transport": 1, "timeout": 1}
        assert _merged(rolled).lag_ms == row.lag_ms
        # a run ending after the rollup is read live, added to what was rolled up
        await ahead.spawn(Q, "ok", None)
        [claim] = await ahead.claim(Q, "w1", 30)
        await ahead.complete(Q, claim.run_id, None)
        assert _totals(await client.flow(3600))["completed"] == 3


async def test_flow_series_and_percentiles() -> None:
    histogram = {0: 50, 10: 45, 20: 5}  # 50 runs about 1 ms, 45 about 32 ms, 5 about 1 s
    assert percentile(histogram, 50) == bucket_middle_s(0)
    assert percentile(histogram, 95) == bucket_middle_s(10)
    assert percentile(histogram, 99) == bucket_middle_s(20)
    assert percentile({}, 50) is None
    assert 2**5 / 1000 < bucket_middle_s(10) < 2**5.5 / 1000  # [32, 45) ms
    with pytest.raises(ValueError, match="whole number of minutes"):
        series([], start=datetime.now(UTC), end=datetime.now(UTC), step_s=90)
