"""Scheduling and flow control: unique tasks, priority and start times, cron schedules, a paused
queue, dependencies, limits and fair partitions, cancellation policies and bulk cancel.

    python examples/scheduling.py            # the embedded PostgreSQL under ./.durable
    DURABLE_DSN=postgresql://... python examples/scheduling.py

Each section spawns a few tasks and prints what the database made of them; one worker in the
same process runs what can run now.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import structlog

from durable import Cancellation, Durable, RateLimit, TaskContext, Unique

app = Durable()


# --8<-- [start:unique]
@app.task(name="sync_account", queue="sync", unique=Unique(keys=["account"], period=300))
async def sync_account(ctx: TaskContext, params: dict[str, Any]) -> str:
    return f"synced {params['account']}"


# --8<-- [end:unique]


@app.task(name="report", queue="reports")
async def report(ctx: TaskContext, params: dict[str, str]) -> str:
    return f"report of {params['day']}"


# --8<-- [start:dependencies]
@app.task(name="extract", queue="etl")
async def extract(ctx: TaskContext, params: dict[str, str]) -> dict[str, int]:
    return {"rows": 3}


@app.task(name="transform", queue="etl")
async def transform(ctx: TaskContext, params: dict[str, str]) -> dict[str, int]:
    return {"rows": 2}


@app.task(name="load", queue="etl")
async def load(ctx: TaskContext, params: dict[str, str]) -> int:
    inputs = await ctx.dependency_results()  # every dependency, completed, in spawn order
    return sum(d.result["rows"] for d in inputs)


# --8<-- [end:dependencies]


# --8<-- [start:limits]
@app.task(name="call_partner", queue="partners", global_limit=5, rate_limit=RateLimit(100, 60))
async def call_partner(ctx: TaskContext, params: dict[str, Any]) -> str:
    return f"called for {params['tenant']}"


# at most 2 runs per tenant at once, across every worker and queue, while other tenants run
@app.task(name="sync_tenant", queue="partners", concurrency_key=lambda p: p["tenant"], key_limit=2)
async def sync_tenant(ctx: TaskContext, params: dict[str, Any]) -> str:
    return f"synced {params['tenant']}"


# --8<-- [end:limits]


# --8<-- [start:cancellation]
@app.task(name="quote", queue="quotes", cancellation=Cancellation(max_delay=60, max_duration=600))
async def quote(ctx: TaskContext, params: dict[str, Any]) -> dict[str, int]:
    return {"price": 42}


# --8<-- [end:cancellation]


# --8<-- [start:cron]
app.cron("*/15 * * * *", sync_account, {"account": "all"})  # every 15 minutes, UTC
app.cron("@daily", "report", {"day": "yesterday"}, name="nightly", queue="reports")
app.cron("30 8 * * MON-FRI", report, {"day": "today"}, timezone="Europe/Paris", missed="latest")
# --8<-- [end:cron]


async def main() -> None:
    async with app, anyio.create_task_group() as tg:
        worker = await tg.start(
            lambda task_status: app.run_worker(
                poll_interval=0.1, handle_signals=False, task_status=task_status
            )
        )
        # --8<-- [start:unique_spawn]
        first = await sync_account.spawn({"account": 7, "reason": "webhook"})  # created
        again = await sync_account.spawn({"account": 7, "reason": "cron"})  # the same task

        # debounce: start 10 s after the last of a burst of edits, with the latest params
        edit = Unique(keys=["doc"], states=["pending"], debounce=10, replace=["params"])
        await app.spawn("reindex", {"doc": 9, "rev": 3}, queue="search", unique=edit)
        burst = await app.spawn("reindex", {"doc": 9, "rev": 4}, queue="search", unique=edit)
        # --8<-- [end:unique_spawn]
        print(
            f"unique: created={first.created}, then created={again.created}, same task:",
            first.task_id == again.task_id,
        )
        debounced = await app.get_task(burst.task_id)
        print(f"debounce: created={burst.created}, params now {debounced.params}")

        # --8<-- [start:start_times]
        urgent = await report.spawn({"day": "2030-01-01"}, priority=10)  # higher first
        later = await report.spawn({"day": "2030-01-02"}, delay=timedelta(minutes=5))
        planned = await report.spawn(
            {"day": "2030-01-03"}, at=datetime(2030, 1, 3, 6, tzinfo=UTC), tags=["planned"]
        )
        # --8<-- [end:start_times]
        print("priority:", (await urgent.result(timeout=30)).result)
        for handle in (later, planned):
            record = await app.get_task(handle.task_id)
            print(f"scheduled: {record.state}, starts {record.scheduled_at:%Y-%m-%d}")

        # --8<-- [start:runtime_cron]
        added = await app.add_cron(
            "digest-eu",
            "0 7 * * *",
            "report",
            {"day": "today"},
            queue="reports",
            timezone="Europe/Paris",
        )  # True: added (False: updated)
        await app.pause_cron("digest-eu")  # fires nothing until resumed
        await app.resume_cron("digest-eu")  # from now on: paused slots are not caught up
        schedules = await app.cron_schedules()  # the ones from code and from run time
        await app.remove_cron("digest-eu")
        # --8<-- [end:runtime_cron]
        print(f"cron: added={added},", sorted(s.name for s in schedules))

        # --8<-- [start:pause]
        await app.pause_queue("reports")  # spawns are kept, no worker claims from it
        held = await report.spawn({"day": "2030-01-04"})
        await anyio.sleep(0.5)
        state = (await app.get_task(held.task_id)).state  # still pending
        await app.resume_queue("reports")  # its workers wake at once
        # --8<-- [end:pause]
        print(f"paused queue: {state} while paused, then {(await held.result(timeout=30)).state}")

        # --8<-- [start:depends_on]
        day = {"day": "2030-01-01"}
        extracted = await extract.spawn(day)
        transformed = await transform.spawn(day, depends_on=[extracted.task_id])
        loaded = await load.spawn(day, depends_on=[extracted.task_id, transformed.task_id])
        # --8<-- [end:depends_on]
        print("dependencies: load got", (await loaded.result(timeout=30)).result, "rows")

        # --8<-- [start:partitions]
        calls = [
            await call_partner.spawn({"tenant": tenant}, partition_key=tenant)  # round-robin
            for tenant in ("tenant-a",) * 5 + ("tenant-b",)
        ]
        # --8<-- [end:partitions]

        # --8<-- [start:cancel_by]
        cancelled = await app.cancel_by(queue="reports", tags=["planned"])  # how many
        # --8<-- [end:cancel_by]
        print("cancel_by:", cancelled, (await app.get_task(planned.task_id)).state)
        await app.cancel(later.task_id)
        await quote.spawn({"item": "mug"})
        syncs = [await sync_tenant.spawn({"tenant": t}) for t in ("acme", "acme", "acme", "globex")]
        for call in calls:
            await call.result(timeout=30)
        for sync in syncs:
            await sync.result(timeout=30)
        keyed = await app.get_task(syncs[0].task_id)
        print(f"key_limit: {len(syncs)} syncs ran, concurrency key {keyed.concurrency_key!r}")
        print("partners: every call ran")
        worker.drain()


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
