"""The app the flow-control acceptance tests (cancellation policies, tags and progress,
dependencies, partitions, limits) run in worker subprocesses.

As a script (``cwd`` = this directory, ``DURABLE_DSN`` = the test's database)::

    python flow_app.py [-q QUEUE]... [-c N] [--claim-timeout S] [--poll-interval S] ...

runs a worker of :data:`app` like ``worker_app.py`` (:mod:`support.worker_script`: same options,
JSON log lines on stderr). Its tasks record what they execute in the side tables of
:mod:`support.side_tables` (``step_exec`` rows with the database's time, ``done_exec`` when they
return) and wait on ``gate`` rows the test writes, so a test observes executions across processes.

The tasks with limits live on queues of their own (:data:`LIMITS_QUEUE`, :data:`RATED_QUEUE`):
a worker records the limits of the tasks of the queues it serves, and the other tests' claims
stay on the plain path of the default queue.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio

import durable

SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(SCRIPT.parents[1]))  # tests/, for `support`, when run as a script

from support.side_tables import record_done, record_step, side_pool, wait_gate  # noqa: E402
from support.worker_script import run_worker_script  # noqa: E402

LIMITS_QUEUE = "limits"
RATED_QUEUE = "rated"

#: The cluster-wide limit of ``limited``: runs at once.
GLOBAL_LIMIT = 2
#: The rate limit of ``rated``: starts per period.
RATE_PERIOD_S = 1.0
RATE = durable.RateLimit(allowed=3, period=RATE_PERIOD_S)

app = durable.Durable(pool_size=4)


@app.task(name="noop")
async def noop(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Notes that it started (step ``start``), then returns."""
    await record_step(ctx.task_id, "start", None)
    return await record_done(ctx)


@app.task(name="gated")
async def gated(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Runs until the test opens the task's gate (forever if it never does)."""
    await wait_gate(ctx.task_id, "start")
    return await record_done(ctx)


@app.task(name="fails")
async def fails(ctx: durable.TaskContext, params: Any) -> None:
    """Raises (after its gate opens when ``params["gated"]``). Spawn it with ``max_attempts=1``:
    the tests spawn through the client, which knows nothing of ``@app.task`` defaults."""
    if params and params.get("gated"):
        await wait_gate(ctx.task_id, "start")
    else:
        await record_step(ctx.task_id, "start", None)
    raise RuntimeError("fails on purpose")


@app.task(name="reports_progress")
async def reports_progress(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Reports 40 % with a detail, waits on its gate, then tries each out-of-range value of
    ``params["bad"]`` (returning what each raised) and ends at 100 %."""
    await ctx.progress(40, {"step": "x"})
    await wait_gate(ctx.task_id, "start")
    refused = []
    for pct in params["bad"]:
        try:
            await ctx.progress(pct)
        except durable.InvalidArgument as exc:
            refused.append({"pct": pct, "error": type(exc).__name__, "message": str(exc)})
        else:
            refused.append({"pct": pct, "error": None, "message": None})
    await ctx.progress(100, "done")
    return {"refused": refused, **await record_done(ctx)}


@app.task(name="tenant_job")
async def tenant_job(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Notes its start as step ``start:<tenant>`` and returns."""
    await record_step(ctx.task_id, f"start:{params['tenant']}", params["i"])
    return await record_done(ctx)


@app.task(name="limited", queue=LIMITS_QUEUE, global_limit=GLOBAL_LIMIT)
async def limited(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Holds ``params["hold_s"]`` between a ``start`` and an ``end`` record."""
    await record_step(ctx.task_id, "start", None)
    await anyio.sleep(params["hold_s"])
    await record_step(ctx.task_id, "end", None)
    return await record_done(ctx)


@app.task(name="rated", queue=RATED_QUEUE, rate_limit=RATE)
async def rated(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Notes its start and returns."""
    await record_step(ctx.task_id, "start", None)
    return await record_done(ctx)


if __name__ == "__main__":
    run_worker_script(app, side=side_pool, description="a worker of the flow-control tests' app")
