"""``durable.testing``: crash a run after a checkpoint, expire its lease, drop the connections,
move the clock, drain a queue — and see each side effect happen the number of times it should.

This file is also the example of ``docs/guides/testing.md``, which includes its marked sections:
a checkout task in three steps, whose side effects (a card charge, an email, a shipment) are
counted by a fake shop.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog

from durable import (
    DiscardReason,
    Durable,
    FailureReason,
    Fixed,
    LeaseLost,
    RunState,
    TaskContext,
    TaskDiscarded,
    TaskState,
    UnknownTask,
)
from durable.testing import Harness

pytestmark = pytest.mark.anyio

RETRY_S = 30.0


# --8<-- [start:shop]
@dataclass
class Shop:
    """The outside world the task talks to: every call is counted per order."""

    charges: Counter[str] = field(default_factory=Counter)
    emails: Counter[str] = field(default_factory=Counter)
    shipments: Counter[str] = field(default_factory=Counter)

    async def charge_card(self, order_id: str, amount: int) -> str:
        self.charges[order_id] += 1
        return f"ch_{order_id}"

    async def send_receipt(self, order_id: str, charge_id: str) -> bool:
        self.emails[order_id] += 1
        return True

    async def ship(self, order_id: str) -> str:
        self.shipments[order_id] += 1
        return f"parcel_{order_id}"


def make_app(dsn: str) -> tuple[Durable, Shop]:
    app = Durable(dsn)
    shop = Shop()

    @app.task(name="checkout", queue="orders", retry=Fixed(RETRY_S), max_attempts=3)
    async def checkout(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
        order_id = params["order_id"]
        charge_id = await ctx.step("charge", shop.charge_card, order_id, params["amount"])
        await ctx.step("receipt", shop.send_receipt, order_id, charge_id)
        parcel = await ctx.step("ship", shop.ship, order_id)
        return {"charge": charge_id, "parcel": parcel}

    return app, shop


# --8<-- [end:shop]


# --8<-- [start:crash]
async def test_a_crash_after_the_charge_never_charges_twice(dsn: str) -> None:
    app, shop = make_app(dsn)
    async with Harness(app) as harness:
        handle = await app.spawn("checkout", {"order_id": "o1", "amount": 42})

        # the worker dies right after the charge's checkpoint committed
        with structlog.testing.capture_logs() as logs:
            crashed = await harness.run_once(crash_after_checkpoint=1)
        assert [e["event"] for e in logs] == ["run.claimed", "run.abandoned"]
        assert crashed is not None
        assert crashed.crashed
        assert crashed.checkpoints == ("charge",)
        assert crashed.state is RunState.RUNNING  # nobody knows yet: its lease still holds
        assert shop.charges == {"o1": 1}
        assert shop.emails == {}

        # its lease (and the dead worker's liveness) lapse; the next claim reaps it as a crash
        await harness.advance_clock(harness.claim_timeout)
        assert await harness.run_once() is None  # the retry waits for its backoff
        await harness.advance_clock(RETRY_S)

        done = await harness.run_once()
        assert done is not None
        assert done.attempt == 2
        assert done.state is RunState.COMPLETED
        assert done.checkpoints == ("receipt", "ship")  # "charge" was replayed, not run
        assert done.result == {"charge": "ch_o1", "parcel": "parcel_o1"}
        assert shop.charges == {"o1": 1}
        assert shop.emails == {"o1": 1}
        assert shop.shipments == {"o1": 1}
        first_run = done.task.runs[0]
        assert first_run.failure_reason is FailureReason.CRASH
        assert (await handle.result(timeout=10)).result == done.result


# --8<-- [end:crash]


async def test_a_crash_right_after_the_claim_runs_nothing(dsn: str) -> None:
    app, shop = make_app(dsn)
    async with Harness(app, claim_timeout=5) as harness:
        await app.spawn("checkout", {"order_id": "o2", "amount": 1})
        crashed = await harness.run_once(crash_after_checkpoint=0)
        assert crashed is not None
        assert (crashed.crashed, crashed.checkpoints) == (True, ())
        assert shop.charges == {}

        await harness.expire_lease(crashed.run_id)
        await harness.reap()
        await harness.advance_clock(RETRY_S)
        outcomes = await harness.drain()
        assert [o.state for o in outcomes] == [RunState.COMPLETED]
        assert shop.charges == {"o2": 1}


async def test_a_lapsed_lease_refuses_the_stale_runs_writes(dsn: str) -> None:
    app, shop = make_app(dsn)
    async with Harness(app) as harness:
        await app.spawn("checkout", {"order_id": "o3", "amount": 7})

        # the worker stalls past its lease after the charge, then wakes up and goes on
        stale = await harness.run_once(expire_lease_after_checkpoint=1)
        assert stale is not None
        assert stale.lease_lost
        assert not stale.crashed
        assert stale.checkpoints == ("charge",)  # the receipt's checkpoint was refused
        assert stale.state is RunState.RUNNING  # and no outcome was written
        assert shop.emails == {"o3": 1}  # ... but the email went out

        # every write of the stale run is refused: it can never overwrite newer state
        with pytest.raises(LeaseLost):
            await harness.client.set_checkpoint("orders", stale.run_id, "receipt", True)
        with pytest.raises(LeaseLost):
            await harness.client.complete("orders", stale.run_id, {"late": True})

        assert await harness.run_once() is None  # reaped; the retry waits for its backoff
        await harness.advance_clock(RETRY_S)
        done = await harness.run_once()
        assert done is not None
        assert done.state is RunState.COMPLETED
        assert done.checkpoints == ("receipt", "ship")
        # the charge is checkpointed: once. The step in flight when the lease lapsed ran again:
        # at least once, so sending a receipt must be idempotent (or tolerated twice).
        assert shop.charges == {"o3": 1}
        assert shop.emails == {"o3": 2}


async def test_a_task_survives_its_connections_being_dropped(dsn: str) -> None:
    app, shop = make_app(dsn)
    async with Harness(app) as harness:
        handle = await app.spawn("checkout", {"order_id": "o4", "amount": 3})
        with structlog.testing.capture_logs() as logs:
            done = await harness.run_once(drop_connection_after_checkpoint=1)
        [dropped] = [e for e in logs if e["event"] == "testing.connections_dropped"]
        assert dropped["count"] >= 1
        assert done is not None
        assert done.state is RunState.COMPLETED
        assert done.checkpoints == ("charge", "receipt", "ship")
        assert shop.charges == {"o4": 1}

        # between operations too: the app's own pool and listener reconnect
        assert await harness.drop_connection() >= 1
        assert (await handle.result(timeout=10)).state is TaskState.COMPLETED
        again = await app.spawn("checkout", {"order_id": "o5", "amount": 3})
        await harness.drain()
        assert (await again.result(timeout=10)).state is TaskState.COMPLETED


async def test_drain_with_retries_moves_the_clock_past_each_backoff(dsn: str) -> None:
    app = Durable(dsn)
    calls: Counter[int] = Counter()

    @app.task(queue="feeds", retry=Fixed(RETRY_S), max_attempts=3)
    async def fetch_feed(ctx: TaskContext, params: dict[str, Any]) -> str:
        calls[params["n"]] += 1
        if ctx.attempt < 3:
            raise ConnectionError(f"upstream hung up on attempt {ctx.attempt}")
        return "fetched"

    async with Harness(app) as harness:
        handles = [await fetch_feed.spawn({"n": n}) for n in range(3)]
        later = await fetch_feed.spawn({"n": 99}, delay=3600)

        first = await harness.drain()
        assert [o.state for o in first] == [RunState.FAILED] * 3
        assert {o.error["type"] for o in first if o.error} == {"ConnectionError"}
        assert all(o.task.state is TaskState.PENDING for o in first)  # retries are scheduled
        assert await harness.drain() == []  # ... RETRY_S from now

        await harness.advance_clock(RETRY_S)
        assert [o.attempt for o in await harness.drain()] == [2, 2, 2]
        await harness.advance_clock(RETRY_S)
        last = await harness.drain()
        assert [(o.attempt, o.state, o.result) for o in last] == [
            (3, RunState.COMPLETED, "fetched")
        ] * 3
        for handle in handles:
            assert (await handle.result(timeout=10)).result == "fetched"
        assert calls == {0: 3, 1: 3, 2: 3}

        # the delayed task comes due when the clock says so; what the app spawns now, at once
        await harness.advance_clock(3600)
        now = await fetch_feed.spawn({"n": 100})
        assert {o.task_id for o in await harness.drain()} == {later.task_id, now.task_id}


async def test_a_task_the_app_does_not_know_is_handed_back(dsn: str) -> None:
    app, _shop = make_app(dsn)
    async with Harness(app) as harness:
        await app.spawn("refund", {"order_id": "o6"}, queue="orders")
        with pytest.raises(UnknownTask):
            await harness.run_once()
        assert await harness.client.queue_counts()


async def test_drain_runs_the_on_discard_hook_of_a_task_that_ended(dsn: str) -> None:
    app = Durable(dsn)
    ended: list[tuple[Any, str, str]] = []

    async def alert(ctx: TaskContext, error: BaseException) -> None:
        assert isinstance(error, TaskDiscarded)
        ended.append((ctx.params, error.state, error.reason))

    @app.task(queue="orders", max_attempts=1, on_discard=alert)
    async def refund(ctx: TaskContext, params: dict[str, Any]) -> None:
        raise ValueError("no such order")

    async with Harness(app) as harness:
        failing = await refund.spawn({"order_id": "o7"})
        cancelled = await refund.spawn({"order_id": "o8"}, delay=3600)
        await app.cancel(cancelled.task_id)

        outcomes = await harness.drain()

    # the failed run, then the hook of each end, run like a worker runs them
    assert [(o.claim.task_name, o.task.state) for o in outcomes] == [
        ("refund", TaskState.FAILED),
        ("durable.on_discard", TaskState.COMPLETED),
        ("durable.on_discard", TaskState.COMPLETED),
    ]
    assert outcomes[0].task_id == failing.task_id
    assert sorted(ended, key=str) == [
        ({"order_id": "o7"}, "failed", DiscardReason.EXHAUSTED),
        ({"order_id": "o8"}, "cancelled", DiscardReason.CANCELLED),
    ]
