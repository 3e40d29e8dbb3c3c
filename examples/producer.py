"""A producer service that spawns tasks by name, with idempotency keys, and awaits their results.

    python examples/producer.py                 # the embedded PostgreSQL under ./.durable
    DURABLE_DSN=postgresql://... python examples/producer.py

``service`` is the producer: it registers no handler and spawns by name, so it names the queue.
``app`` holds the handler; in production it runs elsewhere (``cd examples && durable worker
producer:app -q payments``), here it runs in the same process for the demo.

A webhook is delivered twice. The idempotency key is the event id, so the second spawn returns the
task the first one created (``created=False``) and the card is charged once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from typing import Any

import anyio
import structlog

from durable import Durable, TaskContext, TaskHandle

# --8<-- [start:apps]
service = Durable()  # the producer's side
app = Durable()  # the worker's side

executions: Counter[str] = Counter()  # event id -> how often the handler ran for it
# --8<-- [end:apps]


@app.task(name="charge_card", queue="payments")
async def charge_card(ctx: TaskContext, event: dict[str, Any]) -> dict[str, Any]:
    executions[event["id"]] += 1
    await anyio.sleep(0.05)  # the payment provider's round trip
    return {
        "customer": event["customer"],
        "charged": event["amount"],
        "charge_id": f"ch_{ctx.task_id.hex[-10:]}",
    }


# --8<-- [start:on_webhook]
async def on_webhook(event: dict[str, Any]) -> TaskHandle[Any]:
    """What the service does per delivery: spawn by name, keyed by the event id.

    Options are stored with the task when it is spawned. ``service`` does not register
    ``charge_card``, so options set on ``@app.task`` would not apply here: pass them.
    """
    handle = await service.spawn(
        "charge_card",
        event,
        queue="payments",
        idempotency_key=f"webhook:{event['id']}",
        max_attempts=5,
    )
    print(f"delivery of {event['id']}: task {handle.task_id} created={handle.created}")
    return handle


# --8<-- [end:on_webhook]


async def main() -> None:
    started = time.perf_counter()
    batch = uuid.uuid4().hex[:6]  # fresh event ids on every run of the demo
    first = {"id": f"evt_{batch}_1", "customer": "ada", "amount": 30}
    second = {"id": f"evt_{batch}_2", "customer": "grace", "amount": 12}
    deliveries = [first, second, first]  # the provider retried the first webhook

    async with service, app, anyio.create_task_group() as tg:
        worker = await tg.start(
            lambda task_status: app.run_worker(
                queues=["payments"],
                poll_interval=0.2,
                handle_signals=False,
                task_status=task_status,
            )
        )
        home = service.client.embedded_home
        print(f"database: {f'embedded PostgreSQL, data in {home}' if home else '$DURABLE_DSN'}")
        # --8<-- [start:results]
        handles = [await on_webhook(event) for event in deliveries]
        for handle in handles:
            outcome = await handle.result(timeout=30)
            print(f"task {handle.task_id}: {outcome.state} {outcome.result}")
        # --8<-- [end:results]
        worker.drain()

    distinct = len({handle.task_id for handle in handles})
    print(
        f"{len(deliveries)} deliveries, {distinct} tasks,"
        f" charge_card ran {sum(executions.values())} times: {dict(executions)}"
    )
    print(f"took {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    # The library logs through structlog and never configures it: show warnings and errors only.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
