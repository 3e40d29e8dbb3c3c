"""The app the fault tests run in worker subprocesses, and the helpers those tests share.

As a script (``DURABLE_DSN`` = the database, through a proxy or not)::

    python fault_app.py

runs ``app.run_worker`` on :data:`QUEUE` until killed, logging JSON lines to stderr. Settings come
from the environment: ``WORKER_ID``, ``WORKER_CLAIM_TIMEOUT`` (1), ``WORKER_CONCURRENCY`` (4),
``WORKER_POLL_INTERVAL`` (0.2), and ``FAULT_CLOCK_SKEW_S``: an offset added to ``time.time()`` and
``datetime.datetime.now()`` *before durable is imported*, so the worker's wall clock is wrong while
the database's is right.

The tests import it for :func:`fault_worker` and the wait helpers; importing it connects to nothing.
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
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc
import structlog

import durable
from durable.cli.logs import configure_logging

QUEUE = "default"
HERE = Path(__file__).resolve().parent

app = durable.Durable(pool_size=4)


@app.task(name="steps")
async def steps(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """``params["n"]`` checkpointed steps of ``params["step_s"]`` seconds each."""
    for i in range(params["n"]):
        await ctx.step(f"s{i}", anyio.sleep, params["step_s"])
    return {"attempt": ctx.attempt, "run_id": str(ctx.run_id)}


@app.task(name="clock")
async def clock(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """What this worker's wall clock says."""
    return {"time": time.time(), "now": _dt.datetime.now(_dt.UTC).isoformat()}


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
    configure_logging(json=True)
    structlog.get_logger("durable").info("fault_app.clock", skew_s=_SKEW_S, time=time.time())
    anyio.run(_serve)


async def _serve() -> None:
    await app.run_worker(
        [QUEUE],
        int(os.environ.get("WORKER_CONCURRENCY") or 4),
        float(os.environ.get("WORKER_CLAIM_TIMEOUT") or 1),
        poll_interval=float(os.environ.get("WORKER_POLL_INTERVAL") or 0.2),
        grace_period=1.0,
        worker_id=os.environ.get("WORKER_ID"),
    )


# --- helpers for the tests (they run in the test process) ----------------------------------------

T = TypeVar("T")


@dataclass
class FaultWorker:
    """A worker subprocess whose JSON log lines go to ``log_path``."""

    process: anyio.abc.Process
    log_path: Path
    worker_id: str

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The JSON log events so far (``event``: only those with that name and ``match``)."""
        found = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if not isinstance(doc, dict) or (event is not None and doc.get("event") != event):
                continue
            if all(doc.get(k) == v for k, v in match.items()):
                found.append(doc)
        return found

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)


@contextlib.asynccontextmanager
async def fault_worker(
    dsn: str,
    log_path: Path,
    worker_id: str,
    *,
    claim_timeout: float = 1.0,
    poll_interval: float = 0.2,
    concurrency: int = 4,
    skew_s: float = 0.0,
) -> AsyncIterator[FaultWorker]:
    """Start this module as a worker on ``dsn``; SIGKILL it on exit if it still runs."""
    env = {
        **os.environ,
        "DURABLE_DSN": dsn,
        "WORKER_ID": worker_id,
        "WORKER_CLAIM_TIMEOUT": str(claim_timeout),
        "WORKER_POLL_INTERVAL": str(poll_interval),
        "WORKER_CONCURRENCY": str(concurrency),
        "FAULT_CLOCK_SKEW_S": str(skew_s),
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("wb") as log:
        process = await anyio.open_process(
            [sys.executable, str(HERE / "fault_app.py")],
            stdin=None,
            stdout=log,
            stderr=log,
            cwd=HERE,
            env=env,
        )
        try:
            yield FaultWorker(process, log_path, worker_id)
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()
                await process.aclose()


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll ``probe`` until it returns a value (not None); fail naming ``what`` on timeout.

    :class:`durable.DatabaseUnavailable` from the probe counts as "not yet" (the faults tests
    poll through outages).
    """
    deadline = anyio.current_time() + timeout
    last: object = None
    while True:
        try:
            value = await probe()
        except durable.DatabaseUnavailable as exc:
            value, last = None, exc
        else:
            last = value
        if value is not None:
            return value
        if anyio.current_time() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last: {last!r})"
            )
        await anyio.sleep(interval)


async def wait_all_finished(
    client: durable.Client, task_ids: list[Any], *, timeout: float
) -> list[durable.TaskRecord]:
    """Every task's record once all of them reached a final state."""

    async def probe() -> list[durable.TaskRecord] | None:
        records = [await client.get_task(None, task_id) for task_id in task_ids]
        return records if all(r.state.finished for r in records) else None

    return await wait_for(probe, timeout=timeout, what=f"{len(task_ids)} tasks to finish")


async def wait_event(
    worker: FaultWorker, event: str, *, timeout: float, **match: Any
) -> dict[str, Any]:
    """The first log event ``event`` of ``worker`` whose fields include ``match``."""

    async def probe() -> dict[str, Any] | None:
        found = worker.events(event, **match)
        return found[0] if found else None

    return await wait_for(probe, timeout=timeout, what=f"{event} {match} from {worker.worker_id}")


if __name__ == "__main__":
    main()
