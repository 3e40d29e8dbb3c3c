"""Writing tasks: steps, a step name used again, heartbeats, progress, and a plain ``def`` handler.

    python examples/tasks.py                 # the embedded PostgreSQL under ./.durable
    DURABLE_DSN=postgresql://... python examples/tasks.py

``import_file`` splits a file into chunks in one step and loads each chunk in a step of the same
name (recorded as ``load``, ``load#2``, ...), reporting progress as it goes. ``thumbnail`` is a
plain ``def``: it runs in a worker thread, and its context's calls block. The program prints what
each returned and the steps each recorded: a later attempt would return those values instead of
running the steps again.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import structlog

from durable import Durable, SyncTaskContext, TaskContext

app = Durable()

loaded: list[str] = []  # what load_chunk did, to show each chunk loaded once


def split_file(name: str) -> list[str]:
    return [f"{name}[{i}]" for i in range(3)]


async def load_chunk(chunk: str) -> int:
    loaded.append(chunk)
    return len(chunk)


# --8<-- [start:async]
@app.task(name="import_file", queue="imports", max_attempts=5, timeout=600, heartbeat_timeout=60)
async def import_file(ctx: TaskContext, params: dict[str, str]) -> dict[str, Any]:
    chunks = await ctx.step("split", split_file, params["file"])  # checkpointed: runs once
    rows = 0
    for i, chunk in enumerate(chunks):
        rows += await ctx.step("load", load_chunk, chunk)  # recorded as load, load#2, load#3
        await ctx.progress(100 * (i + 1) / len(chunks), f"chunk {i + 1} of {len(chunks)}")
    await ctx.heartbeat()  # "still alive": only needed between long stretches without a step
    ctx.log.info("import.done", rows=rows)  # structlog, bound to task_id, run_id, attempt
    return {"file": params["file"], "chunks": len(chunks), "rows": rows}


# --8<-- [end:async]


def make_thumbnail(image: str, size: int) -> str:
    return f"{image}@{size}px"  # blocking work: a plain def runs in a worker thread


# --8<-- [start:sync]
@app.task(name="thumbnail", queue="imports")
def thumbnail(ctx: SyncTaskContext, params: dict[str, Any]) -> str:
    # the same calls as TaskContext's, blocking: each runs on the worker's event loop
    small = ctx.step("small", make_thumbnail, params["image"], 64)
    ctx.progress(50)
    large = ctx.step("large", make_thumbnail, params["image"], 512)
    return f"{small}, {large}"


# --8<-- [end:sync]


async def main() -> None:
    async with app, anyio.create_task_group() as tg:
        worker = await tg.start(
            lambda task_status: app.run_worker(
                poll_interval=0.2, handle_signals=False, task_status=task_status
            )
        )
        # --8<-- [start:spawn]
        imported = await import_file.spawn({"file": "orders.csv"}, tags=["tenant-a"])
        thumb = await thumbnail.spawn({"image": "cat.png"})
        print("import_file:", (await imported.result(timeout=30)).result)
        print("thumbnail:", (await thumb.result(timeout=30)).result)
        # --8<-- [end:spawn]
        record = await app.get_task(imported.task_id)
        steps = await app.client.get_checkpoints("imports", imported.task_id)
        print("steps:", [c.step_name for c in steps])
        print("progress:", record.progress.pct if record.progress else None, "tags:", record.tags)
        print("chunks loaded:", loaded)
        worker.drain()


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
