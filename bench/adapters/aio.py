"""What the asyncio adapters share (``pgqueuer_bench.py``, ``procrastinate_bench.py``,
``absurd_bench.py``); stdlib only, like ``contract.py``, as each adapter runs in its system's own
virtual environment.

A worker here is an ``asyncio.Task`` running the system's worker loop in this process; an
adapter hands it over as an async context manager that starts it on entry and stops it on exit
(the system's own way). Handlers report to a ``Hits``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

from contract import (
    LATENCY_PAUSE_S,
    LATENCY_TASKS,
    Returns,
    now,
    parse_args,
    service_result,
    skip,
)

T = TypeVar("T")
START_S = 60.0  # for one latency task to start

Worker = AbstractAsyncContextManager[asyncio.Task[None]]


async def within(seconds: float, aw: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(aw, seconds)
    except TimeoutError:
        raise RuntimeError(f"{what}: no result after {seconds:.0f} s") from None


class Hits(Returns[asyncio.Event]):
    """What the handlers report: when each awaited task started, and when the target-th returned
    (``contract.Returns``). Every handler runs on the one event loop, so plain attributes are
    enough."""

    def __init__(self, target: int = 0, out: Path | None = None) -> None:
        super().__init__(target, asyncio.Event(), out)
        self.waiting: dict[int, asyncio.Future[float]] = {}

    def started(self, i: int) -> None:
        at = now()
        if (future := self.waiting.pop(i, None)) is not None:
            future.set_result(at)

    async def handle(self, i: int) -> None:
        """A no-op task's whole body."""
        self.started(i)
        self.returned(i)


async def until_done(
    hits: Hits, worker: asyncio.Task[None], seconds: float, window: bool = False
) -> bool:
    """Wait for ``hits.done``; fail if the worker ends first. False if ``seconds`` ran out and
    they are a ``window``; else that fails too."""
    waiter = asyncio.create_task(hits.done.wait())
    done, _ = await asyncio.wait(
        {waiter, worker}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
    )
    waiter.cancel()
    if waiter in done:
        return True
    if worker in done:
        worker.result()
        raise RuntimeError("the worker stopped before the last task ran")
    if window:
        return False
    raise RuntimeError(f"{hits.count}/{hits.target} tasks ran within {seconds:.0f} s")


async def timed_drain(
    hits: Hits, worker: Worker, budget_s: float, window_s: float = math.inf
) -> tuple[int, float]:
    """Start ``worker`` and run it until ``hits.target`` handlers returned (within ``budget_s``)
    or ``window_s`` passed; how many returned, and the seconds from its start until the last of
    them returned or the window closed. The worker is stopped before this returns."""
    n = hits.target
    start = now()
    async with worker as task:
        if await until_done(hits, task, min(window_s, budget_s), window_s < math.inf):
            returned, seconds = n, hits.done_at - start
        else:
            returned, seconds = hits.count, now() - start
    return returned, seconds


async def probe_latency(hits: Hits, enqueue: Callable[[int], Awaitable[object]]) -> list[float]:
    """``latency``'s probes, with a worker already running: ``enqueue(i)`` one task at a time,
    each after the previous one started plus ``LATENCY_PAUSE_S``; the spawn-to-start seconds
    of tasks ``0 .. LATENCY_TASKS - 1`` (task -1 warms up: the worker is up and waiting)."""
    samples: list[float] = []
    for i in range(-1, LATENCY_TASKS):
        future = hits.waiting[i] = asyncio.get_running_loop().create_future()
        sent = now()
        await enqueue(i)
        started = await within(START_S, future, f"latency task {i} to start")
        if i >= 0:
            samples.append(started - sent)
        await asyncio.sleep(LATENCY_PAUSE_S)
    return samples


async def service(
    enqueue: Callable[[int], Awaitable[object]], n: int, c: int, **extra: Any
) -> None:
    """``service``: C coroutines, each awaiting ``enqueue(i)`` one at a time, N in all."""
    numbers = iter(range(n))
    samples: list[float] = []

    async def caller() -> None:
        for i in numbers:  # shared: each number once, whichever coroutine is free
            sent = now()
            await enqueue(i)
            samples.append(now() - sent)

    start = now()
    await asyncio.gather(*(caller() for _ in range(c)))
    service_result(n, now() - start, samples, concurrency=c, **extra)


def main(
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
    worker: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
    scale: Callable[[argparse.Namespace], None],
    skips: dict[str, str] | None = None,
) -> None:
    """An adapter's entry point: ``worker`` for a ``scale`` worker process, ``scale`` for that
    workload, ``skip`` for those in ``skips`` (workload: why), else ``run``."""
    args = parse_args()
    if skips and args.workload in skips:
        skip(skips[args.workload])
    elif args.workload == "worker":
        asyncio.run(worker(args))
    elif args.workload == "scale":
        scale(args)
    else:
        asyncio.run(run(args))
