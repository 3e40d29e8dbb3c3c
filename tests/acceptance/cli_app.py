"""The app the CLI acceptance tests run ``durable worker cli_app:app`` on.

``Durable()`` without a dsn: the worker's ``--dsn`` (or ``$DURABLE_DSN``) decides the database.
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio

from durable import Durable, Fixed, TaskContext

app = Durable()

not_an_app = 42


@app.task
async def add(ctx: TaskContext, params: dict[str, int]) -> int:
    return params["a"] + params["b"]


def _prepare(name: str) -> str:
    return f"prepared {name}"


@app.task(max_attempts=1)
async def boom(ctx: TaskContext, params: dict[str, Any]) -> None:
    await ctx.step("prepare", _prepare, params.get("name", "?"))
    raise RuntimeError(f"boom on {params.get('name', '?')}")


@app.task
async def wait_for(ctx: TaskContext, params: dict[str, Any]) -> Any:
    """Reports progress, then parks until event ``params["event"]``; returns its payload."""
    await ctx.progress(50, "waiting for the event")
    payload = await ctx.await_event(params["event"])
    await ctx.progress(100)
    return payload


def _fetch() -> dict[str, float]:
    return {"pid": os.getpid(), "at": time.time()}


@app.task(max_attempts=1)
async def flaky(ctx: TaskContext, params: Any) -> dict[str, float]:
    """Fails while the worker runs with ``$FLAKY_BROKEN`` set, after its checkpointed step."""
    fetched: dict[str, float] = await ctx.step("fetch", _fetch)
    if os.environ.get("FLAKY_BROKEN"):
        raise ConnectionError("payment gateway unreachable")
    return fetched


@app.task(max_attempts=5, retry=Fixed(3600))
async def unlucky(ctx: TaskContext, params: Any) -> None:
    """Fails every attempt; the next one is an hour away (it stays retrying)."""
    raise TimeoutError("upstream too slow")


def _stamp(step: str) -> list[Any]:
    return [step, time.time()]


@app.task
async def pipeline(ctx: TaskContext, params: Any) -> list[Any]:
    """Three checkpointed steps, each recording when it ran."""
    return [await ctx.step(step, _stamp, step) for step in ("a", "b", "c")]


@app.task
async def linger(ctx: TaskContext, params: dict[str, float]) -> None:
    """Runs (holding a slot, without a checkpoint) for ``params["seconds"]``."""
    await anyio.sleep(params["seconds"])
