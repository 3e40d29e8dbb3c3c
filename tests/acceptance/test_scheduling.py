"""Uniqueness, scheduling (priority, delay/at, cron), snooze and retry hooks, with real workers.

Most tests run an in-process worker of an app of their own; the cron slot across three worker
processes and ``on_discard`` across two run ``scheduling_app.py`` in subprocesses.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from scheduling_app import (
    ALWAYS_FAILS,
    ALWAYS_FAILS_ATTEMPTS,
    CRON_NAME,
    CRON_QUEUE,
    DISCARD_STEP,
    FAILS_ONCE,
    GATED,
    SCRIPT,
    TICK,
    always_fails,
    fails_once,
    gated,
)
from scheduling_app import app as scheduling_app
from support.clock import FakeClock
from support.in_process import running_worker
from support.processes import WorkerProcess, wait_event, worker_process
from support.side_tables import side_connection, wait_entered
from support.waiting import wait_finished, wait_for, wait_until
from worker_app import QUEUE

from durable import (
    Client,
    DiscardReason,
    Durable,
    FailureReason,
    Fixed,
    RunState,
    ScheduleNotFound,
    Snooze,
    TaskContext,
    TaskDiscarded,
    TaskHandle,
    TaskState,
    Unique,
)
from durable.runtime.cron import CronExpr

pytestmark = pytest.mark.anyio

EVERY_MINUTE = CronExpr.parse("* * * * *")
#: Slack for comparing two timestamps that the database computed from one clock reading.
CLOCK_SLACK = timedelta(milliseconds=5)
SUBPROCESS_ARGS = ("--claim-timeout", "1", "--poll-interval", "0.1")


async def task_rows(dsn: str, task_name: str) -> list[dict[str, Any]]:
    """Every stored task named ``task_name``, oldest first."""
    async with side_connection(dsn) as conn:
        rows = await conn.fetch(
            "select task_id, idempotency_key, priority, params from durable.tasks"
            " where task_name = $1 order by created_at, task_id",
            task_name,
        )
    return [dict(row) for row in rows]


# --- uniqueness -----------------------------------------------------------------------------------


async def test_a_duplicate_within_the_period_returns_the_existing_task(dsn: str) -> None:
    app = Durable(dsn)
    executed: list[Any] = []

    @app.task(unique=Unique(period=60))
    async def report(ctx: TaskContext, params: Any) -> Any:
        executed.append(params)
        return params

    async with app:
        first = await report.spawn({"day": "mon"})
        again = await report.spawn({"day": "mon"})
        other_day = await report.spawn({"day": "tue"})
    async with running_worker(app):
        await first.result(timeout=10)
        await other_day.result(timeout=10)
        # completed is one of the default states: still a duplicate
        after_completion = await report.spawn({"day": "mon"})

    assert first.created
    assert not again.created
    assert (again.task_id, again.run_id, again.attempt) == (first.task_id, first.run_id, 1)
    assert other_day.created
    assert other_day.task_id != first.task_id
    assert not after_completion.created
    assert after_completion.task_id == first.task_id
    assert sorted(executed, key=str) == [{"day": "mon"}, {"day": "tue"}]
    assert len(await task_rows(dsn, "report")) == 2


async def test_unique_keys_choose_the_params_that_make_a_duplicate(dsn: str) -> None:
    app = Durable(dsn)
    by_user = Unique(keys=["user"])

    @app.task
    async def notify(ctx: TaskContext, params: Any) -> None:
        return None

    @app.task
    async def remind(ctx: TaskContext, params: Any) -> None:
        return None

    async with app:
        first = await notify.spawn({"user": 1, "text": "a"}, unique=by_user)
        other_text = await notify.spawn({"user": 1, "text": "b"}, unique=by_user)
        other_user = await notify.spawn({"user": 2, "text": "a"}, unique=by_user)
        no_user = await notify.spawn({"text": "a"}, unique=by_user)
        no_user_again = await notify.spawn({"text": "z"}, unique=by_user)
        other_task = await remind.spawn({"user": 1, "text": "a"}, unique=by_user)
        record = await app.get_task(first.task_id)

    assert first.created
    assert (other_text.created, other_text.task_id) == (False, first.task_id)
    assert other_user.created
    assert other_user.task_id != first.task_id
    # a missing key is a value of its own: both spawns without "user" are one task
    assert no_user.created
    assert (no_user_again.created, no_user_again.task_id) == (False, no_user.task_id)
    # the task name is part of the identity
    assert other_task.created
    # without replace, the duplicate leaves the existing task's params alone
    assert record.params == {"user": 1, "text": "a"}
    assert len(await task_rows(dsn, "notify")) == 3


async def test_a_task_created_before_the_period_is_not_a_duplicate(dsn: str) -> None:
    app = Durable(dsn)
    period_s = 0.5

    @app.task(unique=Unique(period=period_s))
    async def digest(ctx: TaskContext, params: Any) -> None:
        return None

    async with app:
        first = await digest.spawn({"list": "x"})
        within = await digest.spawn({"list": "x"})
        created_at = (await app.get_task(first.task_id)).created_at

        async def period_over() -> bool | None:
            later = await digest.spawn({"list": "x"})
            # a duplicate until the period is over; then the new task
            return True if later.created else None

        # not a bare sleep: spawn until the period has passed, then check where that happened
        await wait_for(period_over, timeout=10, what="the unique period to pass", interval=0.1)
        rows = await task_rows(dsn, "digest")
        second = await app.get_task(rows[-1]["task_id"])
        after = await digest.spawn({"list": "x"})

    assert first.created
    assert (within.created, within.task_id) == (False, first.task_id)
    assert len(rows) == 2
    assert second.created_at >= created_at + timedelta(seconds=period_s)
    # the newer task is the one later duplicates find
    assert (after.created, after.task_id) == (False, second.task_id)


async def test_unique_states_pending_lets_a_new_task_follow_a_completed_one(dsn: str) -> None:
    app = Durable(dsn)
    runs: list[uuid.UUID] = []

    @app.task(unique=Unique(states=["pending"]))
    async def sync_account(ctx: TaskContext, params: Any) -> None:
        runs.append(ctx.task_id)

    async with app:
        first = await sync_account.spawn({"account": 7})
        while_pending = await sync_account.spawn({"account": 7})
    async with running_worker(app):
        await first.result(timeout=10)
        after_completion = await sync_account.spawn({"account": 7})
        await after_completion.result(timeout=10)

    assert (while_pending.created, while_pending.task_id) == (False, first.task_id)
    assert after_completion.created
    assert after_completion.task_id != first.task_id
    assert runs == [first.task_id, after_completion.task_id]


async def test_replace_updates_params_and_priority_of_a_task_not_yet_started(dsn: str) -> None:
    app = Durable(dsn)
    order: list[tuple[str, Any]] = []
    latest = Unique(keys=["doc"], replace=["params", "priority"])

    @app.task
    async def render(ctx: TaskContext, params: Any) -> Any:
        order.append(("render", params))
        return params

    @app.task
    async def other(ctx: TaskContext, params: Any) -> None:
        order.append(("other", params))

    async with app:
        first = await render.spawn({"doc": 1, "v": 1}, unique=latest)
        bystander = await other.spawn({"n": 1}, priority=5)
        duplicate = await render.spawn({"doc": 1, "v": 2}, unique=latest, priority=10)
        record = await app.get_task(first.task_id)
    async with side_connection(dsn) as conn:
        task_priority = await conn.fetchval(
            "select priority from durable.tasks where task_id = $1", first.task_id
        )
        run_priority = await conn.fetchval(
            "select priority from durable.runs where run_id = $1", first.run_id
        )

    # one slot: the replaced priority (10) goes before the bystander (5), with the new params
    async with running_worker(app, concurrency=1):
        result = await first.result(timeout=10)
        await bystander.result(timeout=10)
        # once the task has started, a duplicate changes nothing
        too_late = await render.spawn({"doc": 1, "v": 3}, unique=latest, priority=1)
        final = await app.get_task(first.task_id)

    assert (duplicate.created, duplicate.task_id, duplicate.run_id) == (
        False,
        first.task_id,
        first.run_id,
    )
    assert record.params == {"doc": 1, "v": 2}
    assert (task_priority, run_priority) == (10, 10)
    assert order == [("render", {"doc": 1, "v": 2}), ("other", {"n": 1})]
    assert result.result == {"doc": 1, "v": 2}
    assert (too_late.created, too_late.task_id) == (False, first.task_id)
    assert final.params == {"doc": 1, "v": 2}
    assert len(final.runs) == 1
    [row] = await task_rows(dsn, "render")
    assert row["priority"] == 10


async def test_debounce_pushes_the_start_on_each_duplicate_and_runs_once(dsn: str) -> None:
    app = Durable(dsn)
    debounce_s = 1.0
    gap_s = 0.25
    duplicates = 5  # 1.25 s of duplicates: without the pushes the task would start amid them
    executed: list[uuid.UUID] = []

    @app.task(unique=Unique(debounce=debounce_s))
    async def reindex(ctx: TaskContext, params: Any) -> None:
        executed.append(ctx.run_id)

    async with running_worker(app):
        first = await reindex.spawn({"index": "a"})
        record = await app.get_task(first.task_id)
        assert record.runs[-1].available_at == record.created_at + timedelta(seconds=debounce_s)
        starts = [record.runs[-1].available_at]
        for _ in range(duplicates):
            await anyio.sleep(gap_s)
            duplicate = await reindex.spawn({"index": "a"})
            assert (duplicate.created, duplicate.task_id) == (False, first.task_id)
            record = await app.get_task(first.task_id)
            assert record.state is TaskState.PENDING
            assert len(record.runs) == 1
            assert executed == []
            starts.append(record.runs[-1].available_at)
        done = await wait_finished(app.client, first.task_id, timeout=10)

    assert starts == sorted(starts)
    assert len(set(starts)) == len(starts)  # each duplicate moved it forward
    assert starts[-1] - starts[0] >= timedelta(seconds=gap_s * duplicates)
    assert done.state is TaskState.COMPLETED
    [run] = done.runs
    assert run.started_at is not None
    assert run.started_at >= starts[-1]
    assert executed == [run.run_id]
    assert len(await task_rows(dsn, "reindex")) == 1


async def test_concurrent_duplicates_create_exactly_one_task(dsn: str) -> None:
    app = Durable(dsn, pool_size=10)
    spawners = 20

    @app.task
    async def import_feed(ctx: TaskContext, params: Any) -> None:
        return None

    handles: list[TaskHandle[Any]] = []

    async def spawn_one(i: int) -> None:
        handles.append(await import_feed.spawn({"feed": "f", "i": i}, unique=Unique(keys=["feed"])))

    async with app:
        async with anyio.create_task_group() as tg:
            for i in range(spawners):
                tg.start_soon(spawn_one, i)
        record = await app.get_task(handles[0].task_id)

    assert len(handles) == spawners
    assert sum(h.created for h in handles) == 1
    assert {h.task_id for h in handles} == {record.task_id}
    rows = await task_rows(dsn, "import_feed")
    assert [row["task_id"] for row in rows] == [record.task_id]
    # the task holds the params of the spawn that created it
    assert record.params["feed"] == "f"


# --- priority and delay ---------------------------------------------------------------------------


async def test_higher_priority_runs_first_on_a_busy_worker(dsn: str) -> None:
    app = Durable(dsn)
    started = anyio.Event()
    release = anyio.Event()
    order: list[str] = []

    @app.task
    async def blocker(ctx: TaskContext, params: Any) -> None:
        started.set()
        await release.wait()

    @app.task
    async def job(ctx: TaskContext, params: Any) -> None:
        order.append(params["name"])

    @app.task(priority=7)
    async def urgent(ctx: TaskContext, params: Any) -> None:
        order.append("urgent")

    async with running_worker(app, concurrency=1):
        await blocker.spawn()
        with anyio.fail_after(10):
            await started.wait()
        handles = [
            await job.spawn({"name": name}, priority=priority)
            for name, priority in [("low", 0), ("mid-a", 5), ("neg", -3), ("high", 10)]
        ]
        handles.append(await urgent.spawn())  # priority 7, from @app.task
        handles.append(await job.spawn({"name": "mid-b"}, priority=5))
        release.set()
        for handle in handles:
            await handle.result(timeout=10)

    # higher first; equal priorities in the order they were spawned
    assert order == ["high", "urgent", "mid-a", "mid-b", "low", "neg"]


async def test_a_delayed_task_is_not_claimed_before_its_time(dsn: str) -> None:
    app = Durable(dsn)
    delay_s = 1.5

    @app.task
    async def later(ctx: TaskContext, params: Any) -> Any:
        return params

    async with running_worker(app):
        delayed = await later.spawn({"n": "delay"}, delay=delay_s)
        at = datetime.now(UTC) + timedelta(seconds=delay_s)
        scheduled = await later.spawn({"n": "at"}, at=at)
        immediate = await later.spawn({"n": "now"})
        await immediate.result(timeout=10)
        await delayed.result(timeout=10)
        await scheduled.result(timeout=10)
        records = {
            h.task_id: await app.get_task(h.task_id) for h in (delayed, scheduled, immediate)
        }

    [now_run] = records[immediate.task_id].runs
    [delayed_run] = records[delayed.task_id].runs
    [at_run] = records[scheduled.task_id].runs
    created = records[delayed.task_id].created_at
    assert delayed_run.available_at == created + timedelta(seconds=delay_s)
    assert at_run.available_at == at
    assert records[scheduled.task_id].scheduled_at == at
    # the worker was free (it ran the immediate task) well before, and still waited
    assert now_run.finished_at is not None
    assert now_run.finished_at < delayed_run.available_at
    for run in (delayed_run, at_run):
        assert run.state is RunState.COMPLETED
        assert run.started_at is not None
        assert run.started_at >= run.available_at


# --- cron -----------------------------------------------------------------------------------------


async def database_now(dsn: str) -> datetime:
    async with side_connection(dsn) as conn:
        now: datetime = await conn.fetchval("select durable.now()")
    return now


async def wait_published(app: Durable, names: set[str]) -> None:
    """Until the workers wrote the code's schedules to the database."""

    async def published() -> bool:
        return names <= {s.name for s in await app.cron_schedules()}

    await wait_until(published, timeout=10, what=f"cron schedules {sorted(names)} published")


def fired_events(logs: list[MutableMapping[str, Any]]) -> dict[str, list[MutableMapping[str, Any]]]:
    """The ``cron.fired`` events by slot."""
    fired: dict[str, list[MutableMapping[str, Any]]] = {}
    for event in logs:
        if event["event"] == "cron.fired":
            fired.setdefault(event["slot"], []).append(event)
    return fired


async def test_cron_slots_fire_once_each_across_three_workers_on_a_fake_clock(dsn: str) -> None:
    app = Durable(dsn)
    executed: list[uuid.UUID] = []

    @app.task
    async def beat(ctx: TaskContext, params: Any) -> Any:
        executed.append(ctx.task_id)
        return params

    app.cron("* * * * *", beat, {"from": "cron"}, name="fast")
    clock = FakeClock(await database_now(dsn))
    slots_wanted = 4
    workers = 3

    with structlog.testing.capture_logs() as logs:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(workers):
                await stack.enter_async_context(running_worker(app, cron_clock=clock))
            await wait_published(app, {"fast"})
            for n in range(1, slots_wanted + 1):
                slot = EVERY_MINUTE.next_after(clock.now())
                clock.advance(slot - clock.now())

                async def fired_by_all(slot: datetime = slot) -> bool:
                    return len(fired_events(logs).get(slot.isoformat(), [])) == workers

                # every worker reaches the slot before the clock moves on
                await wait_until(fired_by_all, timeout=10, what=f"slot {n} fired by {workers}")
        async with app:
            rows = await task_rows(dsn, "beat")
            records = [await app.get_task(row["task_id"]) for row in rows]

    prefix = "durable:cron:fast:"
    slots = sorted(
        datetime.fromisoformat(row["idempotency_key"].removeprefix(prefix)) for row in rows
    )
    assert all(row["idempotency_key"].startswith(prefix) for row in rows)
    # one task per slot, and no slot skipped between the first and the last
    assert len(set(slots)) == len(slots) == slots_wanted
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(slots))
    assert all(r.params == {"from": "cron"} for r in records)
    finished = [r for r in records if r.state.finished]
    assert all(r.state is TaskState.COMPLETED for r in finished)
    # each ran once (the last slot may have been left pending when the workers stopped)
    assert len(executed) == len(set(executed))
    assert {r.task_id for r in finished} <= set(executed)
    # every worker fired every slot; the database kept one spawn each
    fired = fired_events(logs)
    assert set(fired) == {s.isoformat() for s in slots}
    for events in fired.values():
        assert len(events) == workers
        assert sum(e["created"] for e in events) == 1
        assert len({e["task_id"] for e in events}) == 1


async def test_after_downtime_each_schedule_catches_up_as_its_missed_policy_says(
    dsn: str,
) -> None:
    """Three hourly schedules, one per policy. The workers stop; three new ones start two and a
    half hours of (fake) time later: skip fires nothing of the three missed slots, latest the
    newest one, all every one; then the next slot fires on time for all three."""
    app = Durable(dsn)
    hourly = CronExpr.parse("0 * * * *")

    @app.task
    async def report(ctx: TaskContext, params: Any) -> Any:
        return params

    for missed in ("skip", "latest", "all"):
        app.cron("0 * * * *", report, {"missed": missed}, name=missed, missed=missed)
    start = await database_now(dsn)
    async with running_worker(app, cron_clock=FakeClock(start)):
        await wait_published(app, {"skip", "latest", "all"})
    first = hourly.next_after(start)
    missed_slots = [first, first + timedelta(hours=1), first + timedelta(hours=2)]
    clock = FakeClock(missed_slots[-1] + timedelta(minutes=30))  # the newest is 30 min late

    async def keys(name: str) -> list[str]:
        rows = await task_rows(dsn, "report")
        prefix = f"durable:cron:{name}:"
        return sorted(r["idempotency_key"] for r in rows if r["idempotency_key"].startswith(prefix))

    def key(name: str, slot: datetime) -> str:
        return f"durable:cron:{name}:{slot.isoformat()}"

    with structlog.testing.capture_logs() as logs:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(3):  # three schedulers race for the same catch-up
                await stack.enter_async_context(running_worker(app, cron_clock=clock))

            async def caught_up() -> bool:
                skipped = {e["cron"] for e in logs if e["event"] == "cron.missed"}
                return len(await keys("all")) == 3 and skipped >= {"skip", "latest"}

            await wait_until(caught_up, timeout=15, what="the catch-up")
            after_downtime = {name: await keys(name) for name in ("skip", "latest", "all")}
            on_time = clock.advance(missed_slots[-1] + timedelta(hours=1) - clock.now())

            async def fired_on_time() -> bool:
                for name in ("skip", "latest", "all"):
                    if key(name, on_time) not in await keys(name):
                        return False
                return True

            await wait_until(fired_on_time, timeout=15, what="the next slot")
            final = {name: await keys(name) for name in ("skip", "latest", "all")}

    assert after_downtime == {
        "skip": [],
        "latest": [key("latest", missed_slots[-1])],
        "all": [key("all", slot) for slot in missed_slots],
    }
    assert final == {
        "skip": [key("skip", on_time)],
        "latest": [key("latest", slot) for slot in (missed_slots[-1], on_time)],
        "all": [key("all", slot) for slot in (*missed_slots, on_time)],
    }
    # every fire of a schedule's slot returned the one task of that slot
    for name in ("latest", "all"):
        schedule_logs = [e for e in logs if e.get("cron") == name]
        for events in fired_events(schedule_logs).values():
            assert sum(e["created"] for e in events) == 1
            assert len({e["task_id"] for e in events}) == 1


async def test_after_a_stall_a_slot_more_than_a_minute_late_is_skipped(dsn: str) -> None:
    """A scheduler that stalled five minutes between reading the time and firing (its clock is
    five minutes behind the database's) chooses a slot that looks on time to it: under ``skip``
    the database refuses it (more than a minute late by its clock) and the schedule moves past it;
    ``latest`` fires it, as that policy says. The next slot fires on time."""
    app = Durable(dsn)
    minutely = CronExpr.parse("* * * * *")

    @app.task
    async def tick(ctx: TaskContext, params: Any) -> Any:
        return params

    app.cron("* * * * *", tick, {"missed": "skip"}, name="skip")
    app.cron("* * * * *", tick, {"missed": "latest"}, name="latest", missed="latest")
    now = await database_now(dsn)
    late_slot = minutely.next_after(now - timedelta(minutes=6))  # 5 to 6 minutes ago
    clock = FakeClock(late_slot - timedelta(seconds=1))

    def key(name: str, slot: datetime) -> str:
        return f"durable:cron:{name}:{slot.isoformat()}"

    async def keys() -> set[str]:
        return {r["idempotency_key"] for r in await task_rows(dsn, "tick")}

    with structlog.testing.capture_logs() as logs:
        async with running_worker(app, cron_clock=clock):
            await wait_published(app, {"skip", "latest"})
            async with side_connection(dsn) as side:  # dealt with up to ten minutes ago
                await side.execute(
                    "update durable.cron_schedules set fired_through = $1",
                    now - timedelta(minutes=10),
                )
            clock.advance(timedelta(seconds=2))  # the stalled scheduler reaches late_slot

            async def latest_fired() -> bool:
                return key("latest", late_slot) in await keys()

            await wait_until(latest_fired, timeout=15, what="the latest policy's late slot")

            async def skip_refused() -> bool:
                return any(
                    e["event"] == "cron.not_fired" and e["cron"] == "skip" for e in list(logs)
                )

            await wait_until(skip_refused, timeout=15, what="the late slot refused")
            assert key("skip", late_slot) not in await keys()
            [skip] = [s for s in await app.cron_schedules() if s.name == "skip"]
            assert skip.fired_through >= late_slot  # dealt with: skipped, not fired later

            on_time = minutely.next_after(await database_now(dsn))  # not yet passed
            clock.advance(on_time + timedelta(seconds=1) - clock.now())

            async def fired_on_time() -> bool:
                return key("skip", on_time) in await keys()

            await wait_until(fired_on_time, timeout=15, what="the next slot on time")
    assert key("skip", late_slot) not in await keys()


async def test_a_schedule_added_at_run_time_fires_and_can_be_paused_and_removed(
    dsn: str,
) -> None:
    """An hourly schedule added by API on a worker's fake clock: it fires, it fires nothing
    while paused (a second schedule, later in name order, marks the scheduler's pass), after
    resuming the next slot fires (the paused one, an hour late, stays skipped), and once removed
    nothing more fires."""
    app = Durable(dsn)
    hourly = CronExpr.parse("0 * * * *")

    @app.task(name="digest", queue="mail")
    async def digest(ctx: TaskContext, params: Any) -> Any:
        return params

    @app.task(name="marker", queue="mail")
    async def marker(ctx: TaskContext, params: Any) -> Any:
        return params

    def key(name: str, slot: datetime) -> str:
        return f"durable:cron:{name}:{slot.isoformat()}"

    async def keys(task_name: str) -> list[str]:
        return [r["idempotency_key"] for r in await task_rows(dsn, task_name)]

    clock = FakeClock(await database_now(dsn))

    async def next_slot_passed() -> datetime:
        """Move the clock to the next slot; wait until the marker schedule fired it."""
        slot = clock.advance(hourly.next_after(clock.now()) - clock.now())

        async def marked() -> bool:
            return key("zz-marker", slot) in await keys("marker")

        await wait_until(marked, timeout=10, what=f"the scheduler's pass at {slot}")
        return slot

    async with running_worker(app, queues=["mail"], cron_clock=clock):
        # added by name, as a service that does not register the task would
        created = await app.add_cron("digest-eu", "0 * * * *", "digest", {"n": 1}, queue="mail")
        again = await app.add_cron(
            "digest-eu", "0 * * * *", "digest", {"n": 2}, queue="mail", timezone="Europe/Paris"
        )
        await app.add_cron("zz-marker", "0 * * * *", marker)
        [schedule, _] = await app.cron_schedules(["mail"])
        first = await next_slot_passed()
        await app.pause_cron("digest-eu")
        paused_slot = await next_slot_passed()
        [paused, _] = await app.cron_schedules()
        await app.resume_cron("digest-eu")
        resumed_slot = await next_slot_passed()
        await app.remove_cron("digest-eu")
        await next_slot_passed()
        digest_keys = await keys("digest")
        records = [await app.get_task(r["task_id"]) for r in await task_rows(dsn, "digest")]
        with pytest.raises(ScheduleNotFound, match="digest-eu"):
            await app.pause_cron("digest-eu")

    assert (created, again) == (True, False)
    assert (schedule.name, schedule.queue, schedule.task_name) == ("digest-eu", "mail", "digest")
    assert (schedule.params, schedule.timezone, str(schedule.source)) == (
        {"n": 2},
        "Europe/Paris",
        "api",
    )
    assert paused.paused
    assert paused.last_slot == first
    assert digest_keys == [key("digest-eu", first), key("digest-eu", resumed_slot)]
    assert key("digest-eu", paused_slot) not in digest_keys
    assert all(r.params == {"n": 2} and r.queue == "mail" for r in records)


@pytest.mark.slow
async def test_a_cron_slot_fires_once_across_three_worker_processes(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    """The required 3-process test: up to a minute, as cron slots are minutes."""
    [job] = scheduling_app.crons
    every_minute = CronExpr.parse("* * * * *")
    args = ("-q", CRON_QUEUE, "-c", "2", *SUBPROCESS_ARGS)
    async with side_connection(dsn, create_tables=True) as side, contextlib.AsyncExitStack() as st:
        workers: list[WorkerProcess] = [
            await st.enter_async_context(
                worker_process(SCRIPT, dsn, tmp_path / f"w{i}.log", f"cron-{i}", *args)
            )
            for i in range(3)
        ]
        for worker in workers:
            await wait_event(worker, "worker.started", timeout=20)
        # the first slot every scheduler surely waits for (each starts just after its log line)
        slot = every_minute.next_after(datetime.now(UTC) + timedelta(seconds=1))
        wait_s = (slot - datetime.now(UTC)).total_seconds() + 20
        events = [
            await wait_event(worker, "cron.fired", timeout=wait_s, slot=slot.isoformat())
            for worker in workers
        ]
        creators = [e for e in events if e["created"]]
        assert len(creators) == 1, "\n".join(w.log_text() for w in workers)
        creator = creators[0]
        task_id = uuid.UUID(creator["task_id"])
        record = await wait_finished(client, task_id, timeout=20)
        done = await side.fetch("select pid from done_exec where task_id = $1", task_id)
        rows = await task_rows(dsn, TICK)
        logs = "\n".join(w.log_text() for w in workers)

    assert {e["task_id"] for e in events} == {creator["task_id"]}, logs
    assert sorted(e["created"] for e in events) == [False, False, True]
    assert record.state is TaskState.COMPLETED
    assert record.queue == CRON_QUEUE
    assert record.idempotency_key == job.idempotency_key(slot)
    assert record.idempotency_key == f"durable:cron:{CRON_NAME}:{slot.isoformat()}"
    assert record.params == {"source": "cron"}
    assert len(done) == 1
    assert done[0]["pid"] in {w.pid for w in workers}
    # one task per slot (a slot may have passed while the workers started: also once)
    keys = [row["idempotency_key"] for row in rows]
    assert len(keys) == len(set(keys))
    assert [row["task_id"] for row in rows if row["idempotency_key"] == record.idempotency_key] == [
        task_id
    ]
    prefix = f"durable:cron:{CRON_NAME}:"
    assert all(key.startswith(prefix) for key in keys)
    assert all(datetime.fromisoformat(key.removeprefix(prefix)) <= slot for key in keys)


# --- snooze ---------------------------------------------------------------------------------------


async def test_raising_snooze_runs_the_task_again_later_without_spending_an_attempt(
    dsn: str,
) -> None:
    app = Durable(dsn)
    snooze_s = 0.5
    attempts: list[int] = []

    @app.task
    async def poll(ctx: TaskContext, params: Any) -> dict[str, int]:
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            raise Snooze(snooze_s)
        return {"calls": len(attempts)}

    async with running_worker(app):
        handle = await poll.spawn()
        result = await handle.result(timeout=10)
        record = await app.get_task(handle.task_id)

    assert result.result == {"calls": 2}
    assert attempts == [1, 1]
    assert (record.state, record.attempt) == (TaskState.COMPLETED, 1)
    first, second = record.runs
    assert [(r.state, r.attempt) for r in record.runs] == [
        (RunState.RELEASED, 1),
        (RunState.COMPLETED, 1),
    ]
    assert (first.failure_reason, first.error) == (None, None)
    assert first.finished_at is not None
    assert first.started_at is not None
    assert second.started_at is not None
    assert second.available_at - first.finished_at >= timedelta(seconds=snooze_s) - CLOCK_SLACK
    assert second.started_at - first.started_at >= timedelta(seconds=snooze_s)


@pytest.mark.parametrize("how", ["raise", "return"])
async def test_a_task_with_one_attempt_can_snooze_and_still_complete(dsn: str, how: str) -> None:
    app = Durable(dsn)
    snoozes = 2
    calls: list[int] = []

    @app.task(max_attempts=1)
    async def wait_for_upstream(ctx: TaskContext, params: Any) -> Any:
        calls.append(ctx.attempt)
        if len(calls) <= snoozes:
            if how == "raise":
                raise Snooze(timedelta(seconds=0.1))
            return Snooze(0.1)
        return "ready"

    async with running_worker(app):
        handle = await wait_for_upstream.spawn()
        result = await handle.result(timeout=10)
        record = await app.get_task(handle.task_id)

    assert result.result == "ready"
    assert calls == [1, 1, 1]
    assert (record.state, record.attempt, record.max_attempts) == (TaskState.COMPLETED, 1, 1)
    assert [r.state for r in record.runs] == [
        RunState.RELEASED,
        RunState.RELEASED,
        RunState.COMPLETED,
    ]
    assert {r.attempt for r in record.runs} == {1}


# --- retry hooks ----------------------------------------------------------------------------------


async def test_a_backoff_callable_sets_each_retry_delay(dsn: str) -> None:
    app = Durable(dsn)
    delays = {1: 0.3, 2: 0.6}
    seen: list[tuple[int, BaseException]] = []

    def backoff(attempt: int, error: BaseException) -> float:
        seen.append((attempt, error))
        return delays[attempt]

    @app.task(max_attempts=3, backoff=backoff)
    async def flaky(ctx: TaskContext, params: Any) -> int:
        if ctx.attempt < 3:
            raise ValueError(f"boom {ctx.attempt}")
        return ctx.attempt

    async with running_worker(app):
        handle = await flaky.spawn()
        result = await handle.result(timeout=10)
        record = await app.get_task(handle.task_id)

    assert result.result == 3
    assert [(a, type(e), str(e)) for a, e in seen] == [
        (1, ValueError, "boom 1"),
        (2, ValueError, "boom 2"),
    ]
    first, second, third = record.runs
    assert [(r.attempt, r.state) for r in record.runs] == [
        (1, RunState.FAILED),
        (2, RunState.FAILED),
        (3, RunState.COMPLETED),
    ]
    for failed, retried, delay_s in ((first, second, delays[1]), (second, third, delays[2])):
        assert failed.finished_at is not None
        gap = retried.available_at - failed.finished_at
        assert abs(gap - timedelta(seconds=delay_s)) <= CLOCK_SLACK
        assert retried.started_at is not None
        assert retried.started_at >= retried.available_at


async def test_on_discard_gets_the_timeout_that_ended_the_last_attempt(dsn: str) -> None:
    app = Durable(dsn)
    discarded: list[tuple[uuid.UUID, int, str, DiscardReason, Any]] = []

    def on_discard(ctx: TaskContext, error: BaseException) -> None:  # a plain def works too
        assert isinstance(error, TaskDiscarded)
        assert error.failure is not None
        assert error.failure.error is not None
        failed = error.failure.error["type"]
        discarded.append((ctx.task_id, ctx.attempt, failed, error.reason, ctx.params))

    @app.task(max_attempts=1, timeout=0.2, on_discard=on_discard)
    async def too_slow(ctx: TaskContext, params: Any) -> None:
        await anyio.sleep(30)

    with structlog.testing.capture_logs() as logs:
        async with running_worker(app):
            handle = await too_slow.spawn({"order": 7})
            record = await wait_finished(app.client, handle.task_id, timeout=10)

            async def hook_called() -> bool | None:
                return True if discarded else None

            await wait_for(hook_called, timeout=5, what="on_discard")

    assert record.state is TaskState.FAILED
    assert record.failure is not None
    assert record.failure.reason is FailureReason.JOB_TIMEOUT
    assert discarded == [(handle.task_id, 1, "JobTimeout", DiscardReason.EXHAUSTED, {"order": 7})]
    assert [e["task_id"] for e in logs if e["event"] == "task.on_discard_called"] == [
        str(handle.task_id)
    ]


async def discard_rows(side: Any, task_id: uuid.UUID) -> list[str]:
    rows = await side.fetch(
        "select step from step_exec where task_id = $1 and step like $2 order by at",
        task_id,
        f"{DISCARD_STEP}:%",
    )
    return [row["step"] for row in rows]


async def test_on_discard_is_called_once_when_the_last_attempt_fails(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    """Two worker processes: whichever runs the last attempt calls the hook, once."""
    async with side_connection(dsn, create_tables=True) as side:
        info = await client.spawn(QUEUE, ALWAYS_FAILS, {}, always_fails.options())
        async with (
            worker_process(SCRIPT, dsn, tmp_path / "a.log", "worker-a", *SUBPROCESS_ARGS) as a,
            worker_process(SCRIPT, dsn, tmp_path / "b.log", "worker-b", *SUBPROCESS_ARGS) as b,
        ):
            record = await wait_finished(client, info.task_id, timeout=20)

            async def hook_logged() -> dict[str, Any] | None:
                for worker in (a, b):
                    for event in worker.events("task.on_discard_called"):
                        if event["task_id"] == str(info.task_id):
                            return event
                return None

            await wait_for(hook_logged, timeout=10, what="on_discard to be called")
            steps = await side.fetch(
                "select step from step_exec where task_id = $1 order by at", info.task_id
            )
            called = [
                e
                for w in (a, b)
                for e in w.events("task.on_discard_called")
                if e["task_id"] == str(info.task_id)
            ]
            logs = a.log_text() + b.log_text()

    assert record.state is TaskState.FAILED, logs
    assert record.attempt == ALWAYS_FAILS_ATTEMPTS
    assert record.failure is not None
    assert record.failure.reason is FailureReason.ERRORED
    assert [s["step"] for s in steps] == [
        "attempt-1",
        "attempt-2",
        f"{DISCARD_STEP}:exhausted:RuntimeError:failed attempt {ALWAYS_FAILS_ATTEMPTS}",
    ]
    assert len(called) == 1
    assert called[0]["attempt"] == ALWAYS_FAILS_ATTEMPTS


async def test_on_discard_is_not_called_after_a_successful_retry_but_once_per_cancellation(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        cancelled_pending = await client.spawn(QUEUE, GATED, {}, gated.options())
        await client.cancel(QUEUE, cancelled_pending.task_id)
        retried = await client.spawn(QUEUE, FAILS_ONCE, {}, fails_once.options())
        running = await client.spawn(QUEUE, GATED, {}, gated.options())

        async with worker_process(
            SCRIPT, dsn, tmp_path / "w.log", "worker", *SUBPROCESS_ARGS
        ) as worker:
            completed = await wait_finished(client, retried.task_id, timeout=20)
            await wait_entered(
                side, running.task_id, "start", timeout=20, what="the gated task to start"
            )
            await client.cancel(QUEUE, running.task_id)
            # the worker finds out at its next lease renewal and stops the handler
            await wait_event(worker, "lease.lost", timeout=10, task_id=str(running.task_id))
            cancelled_running = await client.get_task(QUEUE, running.task_id)
            never_ran = await client.get_task(QUEUE, cancelled_pending.task_id)
            for cancelled in (cancelled_pending, running):
                await wait_event(
                    worker, "task.on_discard_called", timeout=10, task_id=str(cancelled.task_id)
                )
            hooks = worker.events("task.on_discard_called")
            logs = worker.log_text()
        discarded = {
            task_id: await discard_rows(side, task_id)
            for task_id in (cancelled_pending.task_id, retried.task_id, running.task_id)
        }

    assert (completed.state, completed.attempt) == (TaskState.COMPLETED, 2), logs
    assert cancelled_running.state is TaskState.CANCELLED
    assert cancelled_running.failure is not None
    assert cancelled_running.failure.reason is FailureReason.CANCELLED
    assert never_ran.state is TaskState.CANCELLED
    assert never_ran.runs[0].started_at is None
    # a cancelled task ended unsuccessfully: its hook ran once (a cancel records no error)
    assert sorted(e["task_id"] for e in hooks) == sorted(
        str(t.task_id) for t in (cancelled_pending, running)
    )
    assert {e["reason"] for e in hooks} == {"cancelled"}
    assert discarded == {
        cancelled_pending.task_id: [f"{DISCARD_STEP}:cancelled:None:None"],
        retried.task_id: [],
        running.task_id: [f"{DISCARD_STEP}:cancelled:None:None"],
    }


@pytest.mark.parametrize("bad", ["raises", "negative"])
async def test_a_broken_backoff_does_not_take_the_worker_down(dsn: str, bad: str) -> None:
    app = Durable(dsn)

    def backoff(attempt: int, error: BaseException) -> float:
        if bad == "raises":
            raise KeyError("no delay for you")
        return -1.0

    @app.task(max_attempts=2, retry=Fixed(0), backoff=backoff)
    async def flaky(ctx: TaskContext, params: Any) -> int:
        if ctx.attempt == 1:
            raise ValueError("boom 1")
        return ctx.attempt

    @app.task
    async def after(ctx: TaskContext, params: Any) -> str:
        return "still serving"

    async with running_worker(app, claim_timeout=1.0):
        handle = await flaky.spawn()
        record = await wait_finished(app.client, handle.task_id, timeout=10)
        served = await (await after.spawn()).result(timeout=10)

    # the handler's error is what the run records; the task goes on to its next attempt
    first = record.runs[0]
    assert (first.state, first.failure_reason) == (RunState.FAILED, FailureReason.ERRORED)
    assert first.error is not None
    assert first.error["type"] == "ValueError"
    assert (record.state, record.result) == (TaskState.COMPLETED, 2)
    assert served.result == "still serving"


async def test_on_discard_is_called_when_the_last_attempt_crashed(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        info = await client.spawn(QUEUE, GATED, {}, gated.options())  # one attempt

        async with worker_process(
            SCRIPT, dsn, tmp_path / "a.log", "worker-a", *SUBPROCESS_ARGS
        ) as a:
            await wait_entered(
                side, info.task_id, "start", timeout=20, what="the gated task to start"
            )
            a.kill()
            assert await a.wait(timeout=10) < 0
        async with worker_process(
            SCRIPT, dsn, tmp_path / "b.log", "worker-b", *SUBPROCESS_ARGS
        ) as b:
            record = await wait_finished(client, info.task_id, timeout=20)

            async def discarded() -> list[str] | None:
                return (await discard_rows(side, info.task_id)) or None

            try:
                rows = await wait_for(discarded, timeout=5, what="on_discard after a crash")
            finally:
                logs = b.log_text()

    assert record.state is TaskState.FAILED, logs
    assert record.failure is not None
    assert record.failure.reason is FailureReason.CRASH
    assert len(rows) == 1


async def test_replace_leaves_a_task_waiting_for_its_retry_alone(dsn: str) -> None:
    app = Durable(dsn)
    latest = Unique(keys=["doc"], replace=["params", "priority"])

    @app.task(max_attempts=2, retry=Fixed(60))
    async def publish(ctx: TaskContext, params: Any) -> None:
        raise ValueError("not yet")

    async with running_worker(app):
        first = await publish.spawn({"doc": 1, "v": 1}, unique=latest)

        async def waiting_for_retry() -> bool | None:
            record = await app.get_task(first.task_id)
            return True if len(record.runs) == 2 else None

        await wait_for(waiting_for_retry, timeout=10, what="the first attempt to fail")
        duplicate = await publish.spawn({"doc": 1, "v": 2}, unique=latest, priority=9)
        record = await app.get_task(first.task_id)
        await app.cancel(first.task_id)

    assert (duplicate.created, duplicate.task_id) == (False, first.task_id)
    assert record.runs[0].started_at is not None  # it has started: attempt 1 ran
    # what attempt 1 ran with (and checkpointed against) stays the task's params
    assert record.params == {"doc": 1, "v": 1}


async def test_debounce_by_default_joins_only_a_task_that_has_not_started(dsn: str) -> None:
    """A debounced task that completed (or runs) is not a duplicate: the next burst runs again."""
    app = Durable(dsn)
    entered, release = anyio.Event(), anyio.Event()
    seen: list[Any] = []

    @app.task(unique=Unique(keys=["doc"], debounce=0.1, replace=["params"]))
    async def reindex(ctx: TaskContext, params: Any) -> None:
        seen.append(params)
        if params["rev"] == 2:
            entered.set()
            await release.wait()

    async with running_worker(app):
        first = await reindex.spawn({"doc": 1, "rev": 1})
        assert (await wait_finished(app.client, first.task_id, timeout=10)).state is (
            TaskState.COMPLETED
        )
        second = await reindex.spawn({"doc": 1, "rev": 2})  # after a completed one: a new task
        assert second.created
        assert second.task_id != first.task_id
        with anyio.fail_after(10):
            await entered.wait()
        slow = Unique(keys=["doc"], debounce=2, replace=["params"])  # not started for 2 s
        third = await reindex.spawn({"doc": 1, "rev": 3}, unique=slow)  # rev 2 runs: a new task
        assert third.created
        assert third.task_id != second.task_id
        joined = await reindex.spawn({"doc": 1, "rev": 4}, unique=slow)  # not started: joined
        assert (joined.created, joined.task_id) == (False, third.task_id)
        release.set()
        done = await wait_finished(app.client, third.task_id, timeout=10)

    assert done.state is TaskState.COMPLETED
    assert [p["rev"] for p in seen] == [1, 2, 4]  # the edit made while rev 2 ran was not lost
