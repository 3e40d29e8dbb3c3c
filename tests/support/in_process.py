"""A worker of an app in the test's own event loop, with short polls and grace for tests."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio

import durable
from durable.runtime.worker import Worker


@contextlib.asynccontextmanager
async def running_worker(
    app: durable.Durable,
    *,
    queues: Sequence[str] = ("default",),
    concurrency: int = 4,
    claim_timeout: float = 5.0,
    **options: Any,
) -> AsyncIterator[Worker]:
    """An in-process worker of ``app`` (entered for the block) on ``queues``; drained on exit.
    ``options`` go to ``app.run_worker`` (they override ``poll_interval=0.1, grace_period=1.0``).
    """
    options = {"poll_interval": 0.1, "grace_period": 1.0, **options}
    async with app, anyio.create_task_group() as tg:
        worker: Worker = await tg.start(
            functools.partial(
                app.run_worker,
                list(queues),
                concurrency,
                claim_timeout,
                handle_signals=False,
                **options,
            )
        )
        try:
            yield worker
        finally:
            worker.drain()
