"""A batch: members spawned in one transaction, and exactly one callback once every member ended.

    python examples/batches.py               # the embedded PostgreSQL under ./.durable
    DURABLE_DSN=postgresql://... python examples/batches.py

An album's images are resized as a batch. When every member completed, ``publish_album`` runs;
had any failed or been cancelled, ``report_failures`` would run instead. No worker does the
bookkeeping: SQL counts the members as they end and spawns the callback in the transaction that
ends the last one.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import structlog

from durable import Durable, TaskContext

app = Durable()
published: list[dict[str, Any]] = []
album_published = anyio.Event()


@app.task(name="resize", queue="media")
async def resize(ctx: TaskContext, params: dict[str, str]) -> str:
    return f"{params['image']}@1024"


# --8<-- [start:callbacks]
@app.task(name="publish_album", queue="media")
async def publish_album(ctx: TaskContext, params: dict[str, Any]) -> None:
    # {"batch_id", "total", "counts": {"completed", "failed", "cancelled"}, "params": ...}
    published.append(params)
    album_published.set()


@app.task(name="report_failures", queue="media")
async def report_failures(ctx: TaskContext, params: dict[str, Any]) -> None:
    print("some images failed:", params["counts"])


# --8<-- [end:callbacks]


async def main() -> None:
    images = ["a.png", "b.png", "c.png"]
    async with app, anyio.create_task_group() as tg:
        worker = await tg.start(
            lambda task_status: app.run_worker(
                poll_interval=0.1, handle_signals=False, task_status=task_status
            )
        )
        # --8<-- [start:batch]
        batch = await app.batch(
            [(resize, {"image": image}) for image in images],  # (task or name, params) pairs
            on_complete=publish_album,  # every member completed
            on_exhausted=report_failures,  # every member ended, some failed or were cancelled
            callback_params={"album": 7},
            idempotency_key="album-7",  # a second call returns this batch: created=False
        )
        # --8<-- [end:batch]
        print(f"batch of {len(batch.members)}, created={batch.created}")
        with anyio.fail_after(30):
            await album_published.wait()
        # --8<-- [start:get_batch]
        record = await app.get_batch(batch.batch_id)  # total, pending, counts, callback
        # --8<-- [end:get_batch]
        print(f"finished={record.finished} total={record.total} pending={record.pending}")
        print("publish_album got:", published[0]["counts"], published[0]["params"])
        again = await app.batch([(resize, {"image": "a.png"})], idempotency_key="album-7")
        print("same key again: created =", again.created)
        worker.drain()


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
