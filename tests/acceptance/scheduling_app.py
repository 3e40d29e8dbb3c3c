"""The app the scheduling acceptance tests run in worker subprocesses: a cron job, and tasks with
an ``on_discard`` hook.

As a script (``cwd`` = this directory, ``DURABLE_DSN`` = the test's database), it takes the
options of ``worker_app.py`` (:mod:`support.worker_script`)::

    python scheduling_app.py [-q QUEUE]... [-c N] [--claim-timeout S] [--poll-interval S] ...

A worker serving :data:`CRON_QUEUE` runs the cron job :data:`CRON_NAME`: every minute (UTC) it
spawns :data:`TICK` there, once per slot however many workers run it. The tasks of the default
queue fail on purpose; their ``on_discard`` hook inserts a ``step_exec`` row (see
:mod:`support.side_tables`) whose step says why the task ended and how:
``discard:<reason>:<error type>:<message>``, and ``:<note>`` when the task's params carry a
``note``. A task spawned with ``{"hook_gate": true}`` has a hook that first notes ``hook-start``
and waits for the task's gate.

The tests import the names below; importing this module connects to nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import durable

SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(SCRIPT.parents[1]))  # tests/, for `support`, when run as a script

from support.side_tables import record_done, record_step, side_pool, wait_gate  # noqa: E402
from support.worker_script import run_worker_script  # noqa: E402

#: The queue of the cron job (only workers serving it run the scheduler).
CRON_QUEUE = "cron"
CRON_NAME = "every-minute"
TICK = "sched_tick"
#: Fails every attempt (2 of them): ``on_discard`` is called once, after the second.
ALWAYS_FAILS = "discard_always_fails"
ALWAYS_FAILS_ATTEMPTS = 2
#: Fails its first attempt, completes the second: ``on_discard`` is never called.
FAILS_ONCE = "discard_fails_once"
#: One attempt, waiting on its gate: a test cancels it (pending or running).
GATED = "discard_gated"
#: Spawns a :data:`GATED` child and waits for it; cancelling it cancels the child.
PARENT = "discard_parent"
#: The prefix of the ``step_exec`` rows the ``on_discard`` hook writes.
DISCARD_STEP = "discard"
#: The retry delay of the failing tasks (their own backoff): short, so tests stay fast.
RETRY_S = 0.05

app = durable.Durable(pool_size=4)


async def record_discard(ctx: durable.TaskContext, error: BaseException) -> None:
    """The ``on_discard`` hook: note why the task ended, the error that ended it and the note of
    its params (after its gate, if its params ask for one)."""
    assert isinstance(error, durable.TaskDiscarded), error
    params = ctx.params or {}
    if params.get("hook_gate"):
        await wait_gate(ctx.task_id, "hook-start")
    doc = (error.failure.error if error.failure else None) or {}
    step = f"{DISCARD_STEP}:{error.reason}:{doc.get('type')}:{doc.get('message')}"
    if params.get("note"):
        step += f":{params['note']}"
    await record_step(ctx.task_id, step, None)


def quick_retry(attempt: int, error: BaseException) -> float:
    return RETRY_S


@app.task(name=TICK, queue=CRON_QUEUE)
async def tick(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    return {"params": params, **await record_done(ctx)}


app.cron("* * * * *", tick, {"source": "cron"}, name=CRON_NAME)


@app.task(
    name=ALWAYS_FAILS,
    max_attempts=ALWAYS_FAILS_ATTEMPTS,
    backoff=quick_retry,
    on_discard=record_discard,
)
async def always_fails(ctx: durable.TaskContext, params: Any) -> None:
    await record_step(ctx.task_id, f"attempt-{ctx.attempt}", None)
    raise RuntimeError(f"failed attempt {ctx.attempt}")


@app.task(name=FAILS_ONCE, max_attempts=3, backoff=quick_retry, on_discard=record_discard)
async def fails_once(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    await record_step(ctx.task_id, f"attempt-{ctx.attempt}", None)
    if ctx.attempt == 1:
        raise RuntimeError("failed attempt 1")
    return await record_done(ctx)


@app.task(name=GATED, max_attempts=1, on_discard=record_discard)
async def gated(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    await wait_gate(ctx.task_id, "start")
    return await record_done(ctx)


@app.task(name=PARENT, max_attempts=1, on_discard=record_discard)
async def parent(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    child = await ctx.spawn(gated, {"note": "child"})
    await ctx.result(child)
    return await record_done(ctx)


if __name__ == "__main__":
    run_worker_script(app, side=side_pool, description="a worker of the scheduling tests' app")
