"""Paused queues and cron schedules through the client and in SQL: the claim skips a paused
queue, a slot is spawned once however many callers fire it, and bad input gets its typed error
and changes nothing."""

from __future__ import annotations

import uuid
import zoneinfo
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import pytest
from support.database import table_counts

from durable import Client, SpawnOptions
from durable.protocol.cron import Missed, ScheduleSource
from durable.protocol.errors import (
    InvalidArgument,
    InvalidQueueName,
    InvalidTimeZone,
    ScheduleNotFound,
)

pytestmark = pytest.mark.anyio

Q = "jobs"
SLOT = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)


def at(dsn: str, when: datetime) -> Client:
    """A client whose database clock (durable.now()) reads ``when``."""
    return Client(dsn, pool_size=4, server_settings={"durable.fake_now": when.isoformat()})


# --- paused queues ----------------------------------------------------------------------------


async def test_a_paused_queue_accepts_spawns_and_hands_out_nothing(client: Client) -> None:
    assert await client.pause_queue(Q) is True
    assert await client.pause_queue(Q) is False  # paused already
    info = await client.spawn(Q, "job", {"n": 1})
    other = await client.spawn("other", "job", None)

    assert info.created
    assert await client.claim(Q, "w1", 60, 10) == []
    # another queue is claimed as usual
    assert [c.task_id for c in await client.claim("other", "w1", 60, 10)] == [other.task_id]
    [paused] = await client.list_paused_queues()
    assert paused.queue == Q

    assert await client.resume_queue(Q) is True
    assert await client.resume_queue(Q) is False
    assert await client.list_paused_queues() == []
    assert [c.task_id for c in await client.claim(Q, "w1", 60, 10)] == [info.task_id]


async def test_a_paused_queue_still_reaps_its_lapsed_leases(dsn: str, client: Client) -> None:
    info = await client.spawn(Q, "job", None)
    [claim] = await client.claim(Q, "gone-worker", 1)
    await client.pause_queue(Q)
    async with at(dsn, datetime.now(UTC) + timedelta(minutes=5)) as later:
        assert await later.claim(Q, "w2", 60) == []
        record = await later.get_task(Q, info.task_id)
    first, second = record.runs
    assert first.run_id == claim.run_id
    assert str(first.failure_reason) == "crash"
    assert str(second.state) == "pending"


async def test_resuming_wakes_the_queue_s_workers(client: Client) -> None:
    await client.pause_queue(Q)
    woken: list[str] = []
    listener = await client.listen({"durable_work": woken.append})
    try:
        await client.resume_queue(Q)
        with anyio.fail_after(5):
            while Q not in woken:  # noqa: ASYNC110 — a NOTIFY arrives through the callback
                await anyio.sleep(0.01)
    finally:
        await listener.close()


@pytest.mark.parametrize("queue", ["My Queue", "", "q" * 49])
async def test_a_bad_queue_name_is_refused_by_pause_and_resume(
    client: Client, raw: asyncpg.Connection, queue: str
) -> None:
    with pytest.raises(InvalidQueueName):
        await client.pause_queue(queue)
    with pytest.raises(InvalidQueueName):
        await client.resume_queue(queue)
    with pytest.raises(asyncpg.PostgresError) as caught:
        await raw.fetchval("select durable.pause_queue($1)", queue)
    assert caught.value.sqlstate == "DU004"
    assert await raw.fetchval("select count(*) from durable.paused_queues") == 0


# --- cron schedules ---------------------------------------------------------------------------


async def test_a_schedule_is_stored_with_its_definition(dsn: str) -> None:
    async with at(dsn, SLOT - timedelta(hours=1)) as client:
        created = await client.set_cron_schedule(
            "report",
            "0 9 * * MON-FRI",
            "build_report",
            {"kind": "daily"},
            queue=Q,
            timezone="Europe/Paris",
            missed="latest",
            options=SpawnOptions(max_attempts=7, tags=["cron"]),
        )
        listed = await client.list_cron_schedules([Q])

    assert created
    assert listed.now == SLOT - timedelta(hours=1)
    [schedule] = listed.schedules
    assert (schedule.name, schedule.expr, schedule.timezone) == (
        "report",
        "0 9 * * MON-FRI",
        "Europe/Paris",
    )
    assert (schedule.queue, schedule.task_name, schedule.params) == (
        Q,
        "build_report",
        {"kind": "daily"},
    )
    assert schedule.options == {"max_attempts": 7, "tags": ["cron"]}
    assert (schedule.missed, schedule.source) == (Missed.LATEST, ScheduleSource.API)
    assert schedule.fired_through == SLOT - timedelta(hours=1)
    assert (schedule.paused_at, schedule.last_slot, schedule.last_task_id) == (None, None, None)


async def test_a_slot_fired_by_many_at_once_is_spawned_once(client: Client) -> None:
    await client.set_cron_schedule(
        "tick", "0 * * * *", "tick", {"n": 1}, queue=Q, options=SpawnOptions(priority=3)
    )
    fired: list[tuple[uuid.UUID, bool] | None] = []

    async def fire() -> None:
        fired.append(await client.fire_cron("tick", SLOT))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(fire)
    task_ids = {f[0] for f in fired if f is not None}
    [task_id] = task_ids
    record = await client.get_task(Q, task_id)
    [schedule] = (await client.list_cron_schedules()).schedules

    assert sorted(f[1] for f in fired if f is not None) == [False] * 7 + [True]
    assert record.idempotency_key == f"durable:cron:tick:{SLOT.isoformat()}"
    assert (record.task_name, record.params) == ("tick", {"n": 1})
    assert (schedule.fired_through, schedule.last_slot, schedule.last_task_id) == (
        SLOT,
        SLOT,
        task_id,
    )


async def test_the_slot_key_is_the_slot_in_utc_as_isoformat_writes_it(client: Client) -> None:
    await client.set_cron_schedule("k", "* * * * *", "k", queue=Q)
    paris = datetime(2030, 6, 1, 11, 0, 0, 500_000, tzinfo=UTC).astimezone(
        zoneinfo.ZoneInfo("Europe/Paris")
    )
    fired = await client.fire_cron("k", paris)
    assert fired is not None
    record = await client.get_task(Q, fired[0])
    assert record.idempotency_key == "durable:cron:k:2030-06-01T11:00:00.500000+00:00"


async def test_an_earlier_slot_never_moves_fired_through_back(client: Client) -> None:
    await client.set_cron_schedule("t", "0 * * * *", "t", queue=Q)
    later = await client.fire_cron("t", SLOT)
    earlier = await client.fire_cron("t", SLOT - timedelta(hours=1))
    [schedule] = (await client.list_cron_schedules()).schedules
    assert later is not None
    assert earlier is not None
    assert earlier[1]  # a slot that was never fired is spawned (a worker that lagged)
    assert (schedule.fired_through, schedule.last_task_id) == (SLOT, later[0])


async def test_a_paused_or_removed_schedule_fires_nothing(dsn: str, client: Client) -> None:
    await client.set_cron_schedule("p", "0 * * * *", "p", queue=Q, missed=Missed.ALL)
    await client.pause_cron_schedule("p")
    assert await client.fire_cron("p", SLOT) is None
    [paused] = (await client.list_cron_schedules()).schedules
    assert paused.paused
    # resuming later does not catch up the paused time: fired_through moves to now
    async with at(dsn, SLOT + timedelta(hours=5)) as later:
        await later.resume_cron_schedule("p")
        [resumed] = (await later.list_cron_schedules()).schedules
    assert not resumed.paused
    assert resumed.fired_through == SLOT + timedelta(hours=5)
    await client.remove_cron_schedule("p")
    assert await client.fire_cron("p", SLOT + timedelta(hours=6)) is None
    assert (await client.list_cron_schedules()).schedules == []
    assert await client.queue_counts() == []


async def test_a_code_schedule_keeps_its_pause_when_its_definition_changes(
    client: Client,
) -> None:
    await client.set_cron_schedule("c", "0 * * * *", "c", queue=Q, source="code")
    await client.pause_cron_schedule("c")
    created = await client.set_cron_schedule(
        "c", "30 * * * *", "c", {"v": 2}, queue=Q, source="code"
    )
    [schedule] = (await client.list_cron_schedules()).schedules
    assert not created
    assert (schedule.expr, schedule.params, schedule.paused) == ("30 * * * *", {"v": 2}, True)
    # a schedule added at run time cannot take the name of one declared in code
    with pytest.raises(InvalidArgument, match="declared in code"):
        await client.set_cron_schedule("c", "0 * * * *", "c", queue=Q)


async def test_unknown_schedules_raise_schedule_not_found(client: Client) -> None:
    for call in (
        client.remove_cron_schedule,
        client.pause_cron_schedule,
        client.resume_cron_schedule,
    ):
        with pytest.raises(ScheduleNotFound, match="'nope'") as caught:
            await call("nope")
        assert caught.value.name == "nope"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"expr": "61 * * * *"}, InvalidArgument, "bad minute field"),
        ({"expr": "@reboot"}, InvalidArgument, "unknown nickname"),
        ({"timezone": "Mars/Olympus_Mons"}, InvalidTimeZone, "Mars/Olympus_Mons"),
        ({"timezone": ""}, InvalidTimeZone, "IANA"),
        ({"queue": "Bad Queue"}, InvalidQueueName, "Bad Queue"),
        ({"missed": "never"}, InvalidArgument, "missed 'never' is not one of"),
        ({"source": "ui"}, InvalidArgument, "source 'ui' is not one of"),
        ({"name": ""}, InvalidArgument, "1 to 200 characters"),
        ({"name": "x" * 201}, InvalidArgument, "1 to 200 characters"),
        ({"task_name": ""}, InvalidArgument, "needs a task name"),
    ],
)
async def test_a_bad_schedule_is_refused_and_stores_nothing(
    client: Client,
    raw: asyncpg.Connection,
    kwargs: dict[str, str],
    error: type[Exception],
    message: str,
) -> None:
    args = {"name": "s", "expr": "0 * * * *", "task_name": "t", "queue": Q, "timezone": "UTC"}
    args |= {"missed": "skip", "source": "api", **kwargs}
    before = await table_counts(raw)
    with pytest.raises(error, match=message):
        await client.set_cron_schedule(
            args["name"],
            args["expr"],
            args["task_name"],
            queue=args["queue"],
            timezone=args["timezone"],
            missed=args["missed"],
            source=args["source"],
        )
    assert await raw.fetchval("select count(*) from durable.cron_schedules") == 0
    assert await table_counts(raw) == before


async def test_sql_refuses_a_bad_time_zone_with_du005(raw: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.PostgresError, match="invalid time zone 'Mars/Base'") as caught:
        await raw.fetchval(
            "select durable.set_cron_schedule('s', '* * * * *', 'Mars/Base', 'q', 't', null,"
            " '{}', 'skip', 'api')"
        )
    assert caught.value.sqlstate == "DU005"
