"""A workflow that waits: a child task, a durable sleep and an event, none holding a worker slot.

    python examples/workflow.py              # the embedded PostgreSQL under ./.durable
    DURABLE_DSN=postgresql://... python examples/workflow.py

``ship_order`` spawns a ``charge`` child and waits for its result, sleeps through a cooling-off
period, then waits for a warehouse to emit ``packed:<order>``. While it waits, its run is parked
(the task shows ``sleeping``) and the worker is free for other work; every wait is recorded, so a
worker that crashed meanwhile would resume the task where it stopped, without charging twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import anyio
import structlog

from durable import Durable, TaskContext, TaskState

app = Durable()


def say(text: str) -> None:
    print(text, flush=True)


@app.task(name="charge", queue="orders")
async def charge(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    say(f"  charge: {params['amount']} for {params['order']}")
    return {"receipt": f"R-{params['order']}"}


@app.task(name="ship_order", queue="orders")
async def ship_order(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    order = params["order"]
    child = await ctx.spawn("charge", {"order": order, "amount": params["amount"]})
    paid = await ctx.result(child)  # parked until the child ends
    await ctx.sleep("cooling-off", 1.0)  # parked: the worker slot is free meanwhile
    packed = await ctx.await_event(f"packed:{order}", timeout=30)
    # each wake-up replays the handler from the top: the recorded child, result and sleep
    # return at once, so charge ran once however often ship_order resumed
    return {"receipt": paid.result["receipt"], "packed_by": packed["by"]}


async def main() -> None:
    started = time.perf_counter()
    async with app, anyio.create_task_group() as tg:
        worker = await tg.start(
            lambda task_status: app.run_worker(
                poll_interval=0.1, handle_signals=False, task_status=task_status
            )
        )
        order = f"order-{uuid.uuid4().hex[:6]}"
        handle = await app.spawn("ship_order", {"order": order, "amount": 42})
        say(f"spawned ship_order for {order}")

        with anyio.fail_after(30):  # wait until the task is parked on the event
            while not (await app.get_task(handle.task_id)).waiting_for:  # noqa: ASYNC110
                await anyio.sleep(0.05)  # the demo polls the task's state; a service would not
        record = await app.get_task(handle.task_id)
        say(f"task is {record.state}, waiting for {record.waiting_for[0]['event_name']}")
        woken = await app.emit_event(f"packed:{order}", {"by": "warehouse-3"})
        say(f"emitted packed:{order}, woke {woken} task")

        outcome = await handle.result(timeout=30)
        record = await app.get_task(handle.task_id)
        worker.drain()
    assert record.state is TaskState.COMPLETED
    say(f"ship_order completed: {outcome.result}")
    say("runs: " + ", ".join(f"{run.state}" for run in record.runs))
    say(f"took {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
