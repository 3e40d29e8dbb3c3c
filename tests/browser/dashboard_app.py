"""The app the dashboard's browser tests run in-process, with a worker and the dashboard beside it.

``fetch_feed`` fails with a transport error (``ConnectionError``) while its :class:`Upstream` is
down, after checkpointing its download and reporting progress; a test brings the upstream up
before it clicks Retry, so the retried run completes (replaying the checkpointed step).
``always_down`` keeps failing and waits an hour between attempts (it stays ``retrying``);
``send_digest`` is spawned with a delay (it stays ``pending``); ``nap`` runs a step, sleeps
0.3 s durably and runs another (a timeline with two runs, two steps and a sleep).
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from support import waiting
from support.in_process import running_worker

from durable import Durable, Fixed, RunState, TaskContext, TaskRecord, TaskState
from durable.dashboard import serve

QUEUE = "default"


class Upstream:
    """The service ``fetch_feed`` talks to; a test flips ``up`` (from any thread)."""

    def __init__(self) -> None:
        self.up = False


def make_app(dsn: str, upstream: Upstream) -> Durable:
    app = Durable(dsn)

    def download(url: str) -> str:
        return f"<rss><item>{url}</item><item>2</item></rss>"

    @app.task(name="fetch_feed", queue=QUEUE, max_attempts=1)
    async def fetch_feed(ctx: TaskContext, params: Any) -> dict[str, Any]:
        body = await ctx.step("download", download, params["url"])
        await ctx.progress(50, "downloaded, parsing")
        if not upstream.up:
            raise ConnectionError(f"{params['url']}: the upstream is down (on purpose)")
        await ctx.progress(100, "parsed")
        return {"items": body.count("<item>")}

    @app.task(name="always_down", queue=QUEUE, max_attempts=3, retry=Fixed(3600))
    async def always_down(ctx: TaskContext, params: Any) -> None:
        raise ConnectionError("the mail server refused the connection (on purpose)")

    @app.task(name="send_digest", queue=QUEUE)
    async def send_digest(ctx: TaskContext, params: Any) -> None:
        return None

    @app.task(name="nap", queue=QUEUE)
    async def nap(ctx: TaskContext, params: Any) -> str:
        await ctx.step("prepare", download, "prepared")
        await ctx.sleep("rest", 0.3)
        await ctx.step("finish", download, "finished")
        return "rested"

    return app


@contextlib.asynccontextmanager
async def running(app: Durable, *, read_only: bool = False) -> AsyncIterator[str]:
    """A worker of ``app`` on :data:`QUEUE` and the dashboard on a free port; yields its URL."""
    async with running_worker(app, queues=[QUEUE]), anyio.create_task_group() as web:
        port = await web.start(functools.partial(serve, app.client, port=0, read_only=read_only))
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            web.cancel_scope.cancel()


async def wait_task(
    app: Durable,
    task_id: uuid.UUID,
    state: TaskState,
    *,
    failed_runs: int = 0,
    timeout: float = 15.0,
) -> TaskRecord:
    """Poll the task until it is in ``state`` with at least ``failed_runs`` failed runs."""

    def reached(record: TaskRecord) -> bool:
        failed = sum(run.state is RunState.FAILED for run in record.runs)
        return record.state is state and failed >= failed_runs

    return await waiting.wait_task(
        app.client,
        task_id,
        reached,
        timeout=timeout,
        what=f"task {task_id} to be {state} with {failed_runs} failed runs",
    )
