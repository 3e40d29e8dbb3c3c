"""The app of the parking acceptance tests (durable sleep, events, child tasks), run as a worker
script like ``worker_app.py`` (:mod:`support.worker_script`)::

    python parking_app.py [-q QUEUE]... [-c N] [--claim-timeout S] [--poll-interval S] ...

Its tasks record every step body they execute in the side tables of :mod:`support.side_tables`
(``step_exec``, ``done_exec``; ``gate`` rows release a waiting step), so a test counts executions
across worker processes and SIGKILLs. Importing it connects to nothing.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import durable
from durable import EventTimeout, Fixed, TaskContext, TaskFailed

SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(SCRIPT.parents[1]))  # tests/, for `support`, when run as a script

from support.side_tables import record_done, record_step, side_pool, wait_gate  # noqa: E402
from support.worker_script import run_worker_script  # noqa: E402

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


@app.task(name="branch")
async def branch(ctx: TaskContext, params: Any) -> dict[str, Any]:
    """Spawns a gated ``child_task`` (its ``leaf``), then waits on its own gate."""
    leaf = await ctx.spawn(child_task, {"x": 1, "gate": True}, name="leaf")
    await ctx.step("spawned", record_step, ctx.task_id, "spawned", str(leaf.task_id))
    await wait_gate(ctx.task_id, "branch-gate")
    return await record_done(ctx)


@app.task(name="family")
async def family(ctx: TaskContext, params: Any) -> dict[str, Any]:
    """Spawns a ``branch`` (cancelled with this task, the default) and a gated ``child_task`` it
    abandons (``on_parent_cancel="abandon"``), then waits for the branch."""
    kept = await ctx.spawn(branch, {})
    loose = await ctx.spawn(child_task, {"x": 2, "gate": True}, on_parent_cancel="abandon")
    await ctx.step(
        "spawned", record_step, ctx.task_id, "spawned", [str(kept.task_id), str(loose.task_id)]
    )
    outcome = await ctx.result(kept)
    return {"branch": outcome.result, **await record_done(ctx)}


if __name__ == "__main__":
    run_worker_script(app, side=side_pool, description="a worker of the parking tests' app")
