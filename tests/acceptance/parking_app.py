"""The app of the parking acceptance tests (durable sleep, events, child tasks), run as a worker
script like :mod:`worker_app`::

    python parking_app.py [-q QUEUE]... [-c N] [--claim-timeout S] [--poll-interval S] ...

Its tasks record every step body they execute in :mod:`worker_app`'s side tables (``step_exec``,
``done_exec``; ``gate`` rows release a waiting step), so a test counts executions across worker
processes and SIGKILLs. Importing it connects to nothing.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from worker_app import main, record_done, record_step, wait_gate

import durable
from durable import EventTimeout, Fixed, TaskContext, TaskFailed

app = durable.Durable(pool_size=int(os.environ.get("WORKER_POOL_SIZE", "4")))


@app.task(name="sleeper")
async def sleeper(ctx: TaskContext, params: Any) -> dict[str, Any]:
    """Step ``a``, a durable sleep ``nap`` (``params["sleep_s"]`` seconds, or until the ISO time
    ``params["until"]``), then step ``b``."""
    a = await ctx.step("a", record_step, ctx.task_id, "a", "A")
    if "until" in params:
        await ctx.sleep_until("nap", datetime.fromisoformat(params["until"]))
    else:
        await ctx.sleep("nap", params["sleep_s"])
    b = await ctx.step("b", record_step, ctx.task_id, "b", "B")
    return {"steps": [a, b], **await record_done(ctx)}


@app.task(name="quick")
async def quick(ctx: TaskContext, params: Any) -> dict[str, Any]:
    return await record_done(ctx)


@app.task(name="event_waiter")
async def event_waiter(ctx: TaskContext, params: Any) -> dict[str, Any]:
    """Step ``before``, wait for event ``params["event"]`` (``params.get("timeout")``), step
    ``after``. A timeout is caught: the task returns the step that timed out."""
    before = await ctx.step("before", record_step, ctx.task_id, "before", "BEFORE")
    try:
        payload = await ctx.await_event(params["event"], timeout=params.get("timeout"))
    except EventTimeout as exc:
        return {"timed_out": exc.step, **await record_done(ctx)}
    after = await ctx.step("after", record_step, ctx.task_id, "after", "AFTER")
    return {"steps": [before, after], "payload": payload, **await record_done(ctx)}


@app.task(name="child_task")
async def child_task(ctx: TaskContext, params: Any) -> dict[str, Any]:
    """Records ``child``; waits on its gate if ``params["gate"]``; fails if ``params["fail"]``;
    else returns twice ``params["x"]``."""
    await record_step(ctx.task_id, "child", None)
    if params.get("gate"):
        await wait_gate(ctx.task_id, "child-gate")
    if params.get("fail"):
        raise ValueError(f"child refuses {params['x']}")
    return {"doubled": 2 * params["x"], **await record_done(ctx)}


@app.task(name="parent")
async def parent(ctx: TaskContext, params: Any) -> dict[str, Any]:
    """Spawns ``child_task`` with ``params["child"]``, records step ``spawned``, waits on its own
    gate if ``params["gate"]``, then awaits the child's result. A failed child is caught: the
    task returns how it failed."""
    child = await ctx.spawn(
        child_task, params["child"], max_attempts=params.get("child_attempts", 3), retry=Fixed(0)
    )
    await ctx.step("spawned", record_step, ctx.task_id, "spawned", str(child.task_id))
    if params.get("gate"):
        await ctx.step("gate", wait_gate, ctx.task_id, "gate")
    try:
        outcome = await ctx.result(child)
    except TaskFailed as exc:
        failure = exc.failure
        return {
            "child": str(child.task_id),
            "child_failed": {
                "state": exc.state,
                "reason": str(failure.reason) if failure else None,
                "message": failure.message if failure else None,
            },
            **await record_done(ctx),
        }
    return {"child": str(child.task_id), "child_result": outcome.result, **await record_done(ctx)}


if __name__ == "__main__":
    main(serve_app=app)
