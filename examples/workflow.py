"""A workflow that waits: children gathered at once, a child's result, a message, a durable sleep
and an event, none holding a worker slot; and a code change behind a patch.

    python examples/workflow.py              # the embedded PostgreSQL under ./.durable
    DURABLE_DSN=postgresql://... python examples/workflow.py

``ship_order`` spawns a ``pick`` child per item and gathers them (it parks once, and wakes once
when the last pick ended), spawns a ``charge`` child and waits for its result, then waits for a
message with the delivery address that the program sends to this one task, sleeps through a
cooling-off period and waits for a warehouse to emit ``packed:<order>``. While it waits, its run
is parked (the task shows ``sleeping``) and the worker is free for other work; every wait is
recorded, so a worker that crashed meanwhile would resume the task where it stopped, without
charging twice. Gift wrapping is a change made while orders are in flight: it sits behind
``ctx.patched("gift-wrap")``, so an order that went past that point under the old code keeps the
old path, and new orders take the new one.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import anyio
import structlog

from durable import Durable, TaskContext, TaskRecord, TaskState

app = Durable(version="2024-06-01")  # recorded with every run (default: derived from the code)


def say(text: str) -> None:
    print(text, flush=True)


@app.task(name="pick", queue="orders")
async def pick(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    say(f"  pick: {params['item']}")
    return {"item": params["item"], "shelf": f"S-{len(params['item'])}"}


@app.task(name="charge", queue="orders")
async def charge(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    say(f"  charge: {params['amount']} for {params['order']}")
    return {"receipt": f"R-{params['order']}"}


def gift_wrap(items: int) -> str:
    return f"wrapped {items} items"


# --8<-- [start:handler]
@app.task(name="ship_order", queue="orders")
async def ship_order(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    order = params["order"]
    # fan-out, fan-in: a child per item, one wait for all of them (results in order)
    picks = [
        await ctx.spawn("pick", {"item": item}, name=f"pick-{item}") for item in params["items"]
    ]
    picked = await ctx.gather(picks)
    child = await ctx.spawn("charge", {"order": order, "amount": params["amount"]})
    paid = await ctx.result(child)  # parked until the child ends
    await ctx.set_state("stage", "waiting for the address")
    address = await ctx.recv("address", timeout=30)  # a message sent to this task
    await ctx.set_state("stage", "cooling off")
    await ctx.sleep("cooling-off", 1.0)  # parked: the worker slot is free meanwhile
    packed = await ctx.await_event(f"packed:{order}", timeout=30)
    # --8<-- [start:patch]
    wrapped = None
    if await ctx.patched("gift-wrap"):  # the change; tasks that went past here before keep
        wrapped = await ctx.step("gift-wrap", gift_wrap, len(picked))
    # --8<-- [end:patch]
    # each wake-up replays the handler from the top: the recorded children, results, message
    # and sleep return at once, so charge ran once however often ship_order resumed
    return {
        "receipt": paid.result["receipt"],
        "shelves": [p.result["shelf"] for p in picked],
        "address": address["city"],
        "packed_by": packed["by"],
        "wrapped": wrapped,
    }


# --8<-- [end:handler]


async def wait_until_waiting(task_id: uuid.UUID, what: str) -> TaskRecord:
    """The task once it waits for ``what`` (a topic or an event); the demo polls the task's
    state, a service would not."""
    with anyio.fail_after(30):
        while True:
            record = await app.get_task(task_id)
            waits = record.waiting_for
            if any(what in (w.get("topic"), w.get("event_name")) for w in waits):
                return record
            await anyio.sleep(0.05)


async def main() -> None:
    started = time.perf_counter()
    async with app, anyio.create_task_group() as tg:
        worker = await tg.start(
            lambda task_status: app.run_worker(
                poll_interval=0.1, handle_signals=False, task_status=task_status
            )
        )
        order = f"order-{uuid.uuid4().hex[:6]}"
        items = ["kettle", "mug", "teapot"]
        handle = await app.spawn("ship_order", {"order": order, "amount": 42, "items": items})
        say(f"spawned ship_order for {order}")

        record = await wait_until_waiting(handle.task_id, "address")
        # --8<-- [start:send]
        stage = await app.get_state(handle.task_id, "stage")  # what ctx.set_state published
        say(f"task is {record.state}, {stage}")
        woke = await app.send(handle.task_id, "address", {"city": "Lyon"})
        say(f"sent the address to the task: {'woke it' if woke else 'stored'}")
        # --8<-- [end:send]

        record = await wait_until_waiting(handle.task_id, f"packed:{order}")
        say(f"task is {record.state}, waiting for {record.waiting_for[0]['event_name']}")
        # --8<-- [start:emit]
        woken = await app.emit_event(f"packed:{order}", {"by": "warehouse-3"})  # how many woke
        # --8<-- [end:emit]
        say(f"emitted packed:{order}, woke {woken} task")

        outcome = await handle.result(timeout=30)
        record = await app.get_task(handle.task_id)
        steps = await app.client.get_checkpoints("orders", handle.task_id)
        worker.drain()
    assert record.state is TaskState.COMPLETED
    say(f"ship_order completed: {outcome.result}")
    say("runs: " + ", ".join(f"{run.state}" for run in record.runs))
    decision = next(step.value for step in steps if step.step_name == "$patch:gift-wrap")
    say(f"patch 'gift-wrap': {'new' if decision else 'old'} path, recorded as $patch:gift-wrap")
    versions = sorted({str(run.code_version) for run in record.runs})
    say(f"code version of every run: {versions}")
    say(f"took {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
