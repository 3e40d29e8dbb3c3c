"""The app the worker acceptance tests run in subprocesses.

As a script (``cwd`` = this directory, ``DURABLE_DSN`` = the test's database)::

    python worker_app.py [-q QUEUE]... [-c N] [--claim-timeout S] [--grace-period S]
                         [--poll-interval S] [--worker-id ID]

runs a worker of :data:`app` (see :mod:`support.worker_script`: each option also reads a
``WORKER_*`` environment variable) until SIGTERM/SIGINT (drain) or SIGKILL, logging JSON lines to
stderr. The tests start it with :func:`support.processes.worker_process` on :data:`SCRIPT`.

The tasks record what they execute in the side tables of :mod:`support.side_tables` (``step_exec``
before a step returns its value, ``done_exec`` just before a task returns; ``gate`` rows let a test
release a waiting task), so that a test counts executions across processes. Importing this module
connects to nothing.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio

import durable

SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(SCRIPT.parents[1]))  # tests/, for `support`, when run as a script

from support.side_tables import (  # noqa: E402 — tests/ is on sys.path from here
    gate_open,
    record_done,
    record_done_sync,
    record_step,
    side_pool,
    wait_gate,
)
from support.worker_script import run_worker_script  # noqa: E402

QUEUE = "default"

app = durable.Durable(pool_size=int(os.environ.get("WORKER_POOL_SIZE", "4")))


@app.task(name="three_steps")
async def three_steps(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Step ``two`` waits on the gate, so a test can kill the worker inside it."""
    one = await ctx.step("one", record_step, ctx.task_id, "one", 1)
    two = await ctx.step("two", wait_gate, ctx.task_id, "two")
    three = await ctx.step("three", record_step, ctx.task_id, "three", 3)
    return {"steps": [one, two, three], **await record_done(ctx)}


@app.task(name="three_steps_sync")
def three_steps_sync(ctx: durable.SyncTaskContext, params: Any) -> dict[str, Any]:
    """:func:`three_steps` as a plain ``def`` handler: its context's calls block its thread."""
    one = ctx.step("one", record_step, ctx.task_id, "one", 1)
    two = ctx.step("two", wait_gate, ctx.task_id, "two")
    three = ctx.step("three", record_step, ctx.task_id, "three", 3)
    return {"steps": [one, two, three], **record_done_sync(ctx)}


@app.task(name="block_loop")
async def block_loop(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Attempt 1 blocks the event loop for ``params["block_s"]``; later attempts finish at once."""
    if ctx.attempt == 1:
        await record_step(ctx.task_id, "block", None)
        time.sleep(params["block_s"])  # noqa: ASYNC251 — blocking the event loop is the point
    return await record_done(ctx)


@app.task(name="slow_unless_gated")
async def slow_unless_gated(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Sleeps ``params["sleep_s"]`` unless the task's gate is already open when it starts."""
    await record_step(ctx.task_id, "start", None)
    if not await gate_open(ctx.task_id):
        await anyio.sleep(params["sleep_s"])
    return await record_done(ctx)


@app.task(name="gated")
async def gated(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Runs until the test opens the task's gate."""
    await wait_gate(ctx.task_id, "start")
    return await record_done(ctx)


@app.task(name="noop")
async def noop(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    return await record_done(ctx)


if __name__ == "__main__":
    run_worker_script(app, side=side_pool, description="a worker of the acceptance tests' app")
