"""The app the fault tests run in worker subprocesses, and :func:`fault_worker`, which starts one.

As a script (``DURABLE_DSN`` = the database, through a proxy or not)::

    python fault_app.py [-c N] [--claim-timeout S] [--poll-interval S] [--worker-id ID]

runs ``app.run_worker`` on :data:`QUEUE` until killed, logging JSON lines to stderr (the options
of :mod:`support.worker_script`; here a claim timeout of 1 s and a grace period of 1 s by
default). ``FAULT_CLOCK_SKEW_S`` in the environment is an offset added to ``time.time()`` and
``datetime.datetime.now()`` *before durable is imported*, so the worker's wall clock is wrong
while the database's is right.

Importing this module connects to nothing.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from typing import Any, Self

_SKEW_S = float(os.environ.get("FAULT_CLOCK_SKEW_S") or 0)


def _skew_clock(offset_s: float) -> None:
    """Move this process's wall clock by ``offset_s`` (monotonic time is left alone)."""
    real_time = time.time

    class SkewedDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz: _dt.tzinfo | None = None) -> Self:
            return cls.fromtimestamp(real_time() + offset_s, tz)

        @classmethod
        def utcnow(cls) -> Self:
            return cls.now(_dt.UTC).replace(tzinfo=None)

    time.time = lambda: real_time() + offset_s
    _dt.datetime = SkewedDatetime  # type: ignore[misc]


if __name__ == "__main__" and _SKEW_S:
    _skew_clock(_SKEW_S)

# ruff: noqa: E402 — durable is imported after the clock is skewed, so it sees the skewed clock
import contextlib
from pathlib import Path

import anyio
import structlog

import durable
from durable.cli.logs import configure_logging

SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(SCRIPT.parents[1]))  # tests/, for `support`, when run as a script

from support.processes import WorkerProcess, worker_process
from support.worker_script import Settings, parse_settings, serve

QUEUE = "default"

app = durable.Durable(pool_size=4)


@app.task(name="steps")
async def steps(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """``params["n"]`` checkpointed steps of ``params["step_s"]`` seconds each."""
    for i in range(params["n"]):
        await ctx.step(f"s{i}", anyio.sleep, params["step_s"])
    return {"attempt": ctx.attempt, "run_id": str(ctx.run_id)}


#: A file each ``returns`` handler appends its task id to just before it returns: a task id
#: written twice is a handler body that ran again after it had returned.
RETURNS_FILE = os.environ.get("FAULT_RETURNS_FILE")


@app.task(name="returns", max_attempts=5)
async def returns(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """A step, progress, and code outside any step (run again by any retry), then the mark."""
    await ctx.step("work", anyio.sleep, params["step_s"])
    await ctx.progress(50, {"stage": "after the step"})
    await anyio.sleep(params["tail_s"])  # not a step: a retry runs it again
    if RETURNS_FILE:
        with open(RETURNS_FILE, "a") as marks:  # noqa: ASYNC230 — one short line, O_APPEND
            marks.write(f"{ctx.task_id}\n")
    return {"attempt": ctx.attempt}


@app.task(name="clock")
async def clock(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """What this worker's wall clock says; then holds its slot ``params["hold_s"]`` (if given)."""
    said = {"time": time.time(), "now": _dt.datetime.now(_dt.UTC).isoformat()}
    await anyio.sleep(params.get("hold_s", 0.0))
    return said


@app.task(name="first_hangs")
async def first_hangs(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Attempt 1 sleeps ``params["s"]`` (long enough to be killed in); later ones finish."""
    if ctx.attempt == 1:
        await anyio.sleep(params["s"])
    return {"attempt": ctx.attempt}


@app.task(name="fails_once", backoff=lambda attempt, exc: 0.5)
async def fails_once(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Attempt 1 raises; the worker computes the retry time with the task's backoff callable."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"attempt": ctx.attempt}


def main() -> None:
    settings = parse_settings(
        defaults=Settings(queues=(QUEUE,), claim_timeout=1.0, grace_period=1.0),
        description="a worker of the fault tests' app",
    )
    configure_logging(json=True)
    structlog.get_logger("durable").info("fault_app.clock", skew_s=_SKEW_S, time=time.time())
    anyio.run(serve, app, settings)


# --- in the test process ----------------------------------------------------------------------


def fault_worker(
    dsn: str,
    log_path: Path,
    worker_id: str,
    *,
    claim_timeout: float = 1.0,
    poll_interval: float = 0.2,
    concurrency: int = 4,
    skew_s: float = 0.0,
    metrics_port: int | None = None,
    returns_file: Path | None = None,
) -> contextlib.AbstractAsyncContextManager[WorkerProcess]:
    """This module as a worker on ``dsn`` whose wall clock is ``skew_s`` off (serving its metrics
    and health on ``metrics_port``, 0: a free one, if given); SIGKILLed on exit if it still runs."""
    return worker_process(
        SCRIPT,
        dsn,
        log_path,
        worker_id,
        *("-c", str(concurrency), "--claim-timeout", str(claim_timeout)),
        *("--poll-interval", str(poll_interval)),
        *(() if metrics_port is None else ("--metrics-port", str(metrics_port))),
        env={
            "FAULT_CLOCK_SKEW_S": str(skew_s),
            **({"FAULT_RETURNS_FILE": str(returns_file)} if returns_file else {}),
        },
    )


if __name__ == "__main__":
    main()
