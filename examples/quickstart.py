"""Quickstart: three tasks, a worker in the same process, and their results.

    make demo                                   # the embedded PostgreSQL under ./.durable
    DURABLE_DSN=postgresql://... python examples/quickstart.py

* ``add`` is a plain ``def``: it runs in a worker thread.
* ``flaky`` raises on its first attempt; the worker records the failure and a second run
  (``retry=Fixed(0.2)``: 0.2 s later) succeeds.
* ``report`` does its work in three ``ctx.step`` checkpoints: a later attempt would replay the
  finished steps from the database instead of running them again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import structlog

from durable import Durable, Fixed, SyncTaskContext, TaskContext, TaskHandle

app = Durable()  # Durable(dsn) > $DURABLE_DSN > the embedded server under $DURABLE_HOME


# --8<-- [start:tasks]
@app.task
def add(ctx: SyncTaskContext, params: dict[str, int]) -> int:
    return params["a"] + params["b"]


@app.task(max_attempts=3, retry=Fixed(0.2))
async def flaky(ctx: TaskContext, params: dict[str, str]) -> str:
    if ctx.attempt == 1:
        raise ConnectionError("the upstream hung up (attempt 1 fails on purpose)")
    return f"fetched {params['url']} on attempt {ctx.attempt}"


def fetch_orders(day: str) -> list[int]:
    return [120, 80, 45]  # pretend this is a slow query


def render(day: str, orders: list[int], total: int) -> str:
    return f"{day}: {len(orders)} orders, {total} in total"


@app.task(name="daily_report")  # name= keeps the stored name stable if the function is renamed
async def report(ctx: TaskContext, params: dict[str, str]) -> dict[str, Any]:
    orders = await ctx.step("fetch", fetch_orders, params["day"])
    total = await ctx.step("total", sum, orders)
    line = await ctx.step("render", render, params["day"], orders, total)
    return {"line": line, "steps": 3}


# --8<-- [end:tasks]


async def main() -> None:
    started = time.perf_counter()
    async with app, anyio.create_task_group() as tg:
        # --8<-- [start:worker]
        worker = await tg.start(
            lambda task_status: app.run_worker(
                concurrency=4,
                claim_timeout=10.0,
                poll_interval=0.2,
                handle_signals=False,
                task_status=task_status,
            )
        )
        # --8<-- [end:worker]
        ready = time.perf_counter()
        where = app.client.embedded_home
        print(f"database: {f'embedded PostgreSQL, data in {where}' if where else '$DURABLE_DSN'}")

        handles: list[TaskHandle[Any]] = [
            await add.spawn({"a": 2, "b": 3}),
            await flaky.spawn({"url": "https://example.com/feed"}),
            await report.spawn({"day": "2024-06-01"}),
        ]
        for handle in handles:
            outcome = await handle.result(timeout=30)
            print(f"{handle.task_name:<13} {outcome.state}: {outcome.result!r}")
            record = await app.get_task(handle.task_id)
            for run in record.runs if len(record.runs) > 1 else ():
                error = f" ({run.failure_reason}: {run.error['message']})" if run.error else ""
                print(f"{'':<13}   run {run.attempt} {run.state}{error}")
        done = time.perf_counter()

        print(
            f"3 tasks done in {done - ready:.2f}s"
            f" (connecting, migrating and starting the worker took {ready - started:.2f}s)"
        )
        worker.drain()  # stop claiming; run_worker returns and the task group ends


if __name__ == "__main__":
    # The library logs through structlog and never configures it: keep the demo's output to
    # warnings and errors.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
