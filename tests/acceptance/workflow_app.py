"""The app of the long-running workflow tests (fan-out and fan-in, messages, patches), run as a
worker script like ``parking_app.py`` (:mod:`support.worker_script`)::

    APP_VERSION=2 python workflow_app.py [-q QUEUE]... [-c N] [--claim-timeout S] ...

``APP_VERSION`` (1 or 2, default 2) picks the code of ``versioned``: version 1 is the handler
before a change, version 2 the handler with the change behind ``ctx.patched("courier")``; the
app declares it as its code version (``v1``, ``v2``), which every run records. Its tasks record
every step body they execute in the side tables of :mod:`support.side_tables` (``step_exec``,
``done_exec``; a ``gate`` row releases a step that waits on it), so a test counts executions
across worker processes and SIGKILLs. Importing it connects to nothing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import durable
from durable import Fixed, SyncTaskContext, TaskContext

SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(SCRIPT.parents[1]))  # tests/, for `support`, when run as a script

from support.side_tables import record_done, record_step, side_pool, wait_gate  # noqa: E402
from support.worker_script import run_worker_script  # noqa: E402

#: Which code of ``versioned`` this process runs.
APP_VERSION = os.environ.get("APP_VERSION", "2")

app = durable.Durable(
    pool_size=int(os.environ.get("WORKER_POOL_SIZE", "4")), version=f"v{APP_VERSION}"
)


async def _gated(ctx: TaskContext, step: str, params: Any) -> Any:
    """Step ``step``: it waits on the task's gate when ``params["gate"]`` names it."""
    if params.get("gate") == step:
        return await ctx.step(step, wait_gate, ctx.task_id, step)
    return await ctx.step(step, record_step, ctx.task_id, step, step.upper())


# --- fan-out and fan-in -------------------------------------------------------------------------


@app.task(name="leaf", max_attempts=3, retry=Fixed(0))
async def leaf(ctx: TaskContext, params: Any) -> dict[str, Any]:
    """Records ``leaf``; waits on its gate if ``params["gate"]``; fails for good (its error says
    so) if ``params["fail"]``; else returns ten times ``params["x"]``."""
    await record_step(ctx.task_id, "leaf", None)
    if params.get("gate"):
        await wait_gate(ctx.task_id, "leaf-gate")
    if params.get("fail"):
        raise ValueError(f"leaf {params['x']} refuses")
    return {"x": 10 * params["x"], **await record_done(ctx)}


@app.task(name="fan_out")
async def fan_out(ctx: TaskContext, params: Any) -> dict[str, Any]:
    """Spawns a ``leaf`` per item of ``params["leaves"]`` (its params), records ``spawned``, then
    gathers them all; returns each one's state and result (or failure message)."""
    children = [
        await ctx.spawn(leaf, p, name=f"leaf-{i}", max_attempts=p.get("attempts", 3))
        for i, p in enumerate(params["leaves"])
    ]
    await ctx.step("spawned", record_step, ctx.task_id, "spawned", len(children))
    results = await ctx.gather(children, timeout=params.get("timeout"))
    return {
        "children": [str(c.task_id) for c in children],
        "results": [
            {
                "state": str(r.state),
                "x": r.result["x"] if r.result else None,
                "failure": r.failure.message if r.failure else None,
            }
            for r in results
        ],
        **await record_done(ctx),
    }


@app.task(name="batch_done")
async def batch_done(ctx: TaskContext, params: Any) -> dict[str, Any]:
    """A batch's callback: returns what the batch gave it."""
    return {"got": params, **await record_done(ctx)}


@app.task(name="load")
async def load(ctx: TaskContext, params: Any) -> dict[str, Any]:
    """Spawned with ``depends_on``: returns its dependencies' names and results, in order."""
    deps = await ctx.dependency_results()
    return {"inputs": [[d.task_name, str(d.state), d.result] for d in deps]}


# --- messages -----------------------------------------------------------------------------------


@app.task(name="listener", max_attempts=3, retry=Fixed(0))
async def listener(ctx: TaskContext, params: Any) -> dict[str, Any]:
    """Step ``before``, publishes state ``stage``, receives ``params["count"]`` (default 1)
    messages on topic ``cmd`` (``params.get("timeout")``), each followed by step ``after``
    (``after#2``, ...; one of them may be gated), and returns them."""
    await _gated(ctx, "before", params)
    await ctx.set_state("stage", "listening")
    got = []
    for n in range(params.get("count", 1)):
        got.append(await ctx.recv("cmd", timeout=params.get("timeout")))
        await ctx.set_state("stage", f"received {n + 1}")
        await _gated(ctx, "after" if n == 0 else f"after#{n + 1}", params)
    return {"messages": got, **await record_done(ctx)}


# --- versioning in flight -----------------------------------------------------------------------


@app.task(name="versioned", max_attempts=3, retry=Fixed(0))
async def versioned(ctx: TaskContext, params: Any) -> dict[str, Any]:
    """Version 1: step ``charge``, wait for event ``params["event"]``, step ``ship``. Version 2
    adds, behind the patch ``courier``, step ``pack`` before the wait and ships with step
    ``courier`` instead; tasks that went past that point under version 1 keep its path."""
    await _gated(ctx, "charge", params)
    if APP_VERSION == "1":
        await ctx.await_event(params["event"])
        await _gated(ctx, "ship", params)
        return {"path": "old", **await record_done(ctx)}
    if await ctx.patched("courier"):
        await _gated(ctx, "pack", params)
        await ctx.await_event(params["event"])
        await _gated(ctx, "courier", params)
        return {"path": "new", **await record_done(ctx)}
    await ctx.await_event(params["event"])
    await _gated(ctx, "ship", params)
    return {"path": "old", **await record_done(ctx)}


@app.task(name="retired")
async def retired(ctx: TaskContext, params: Any) -> dict[str, Any]:
    """A patch retired from the code: only the new path is left."""
    await ctx.deprecate_patch("courier")
    return {"path": "new"}


# --- the same from a plain def ------------------------------------------------------------------


@app.task(name="sync_workflow")
def sync_workflow(ctx: SyncTaskContext, params: Any) -> dict[str, Any]:
    """The blocking twins: a patch, a gather of two leaves, a message and published state."""
    new = ctx.patched("sync-change")
    children = [ctx.spawn(leaf, {"x": x}, name=f"leaf-{x}") for x in (1, 2)]
    results = ctx.gather(children)
    ctx.set_state("stage", "gathered")
    message = ctx.recv("cmd", timeout=60)
    return {
        "new": new,
        "xs": [r.result["x"] for r in results],
        "message": message,
        "dependencies": len(ctx.dependency_results()),
    }


if __name__ == "__main__":
    run_worker_script(app, side=side_pool, description="a worker of the workflow tests' app")
