"""End-to-end workloads through the worker pool: spawn N tasks, run one worker, time the drain.

One in-process worker at concurrency 50 claims, runs and completes every task; the clock stops
when the last task is completed (counted with ``queue_counts``). ``noop`` returns at once;
``three_steps`` checkpoints three steps, so each task commits five times (claim share, three
checkpoints, complete).
"""

from __future__ import annotations

from typing import Any

import anyio
from harness import Bench, Measurement, Stopwatch, Workload

from durable import Durable, TaskContext
from durable.records import TaskState

CONCURRENCY = 50
POLL_S = 0.05


def _app(dsn: str) -> Durable:
    app = Durable(dsn, pool_size=20)

    @app.task(name="noop")
    async def noop(ctx: TaskContext, params: Any) -> None:
        return None

    @app.task(name="three_steps")
    async def three_steps(ctx: TaskContext, params: Any) -> int:
        total = 0
        for name in ("a", "b", "c"):
            total += await ctx.step(name, _value, params)
        return total

    return app


async def _value(params: Any) -> int:
    return 1


async def _completed(app: Durable, queue: str) -> int:
    counts = await app.client.queue_counts()
    return sum(c.count for c in counts if c.queue == queue and c.state is TaskState.COMPLETED)


async def _through_worker(bench: Bench, task_name: str, label: str) -> Measurement:
    queue = bench.queue(task_name)
    app = _app(bench.dsn)
    async with app:
        for start in range(0, bench.n, bench.batch):
            size = min(bench.n, start + bench.batch) - start
            await app.client.spawn_many(queue, [(task_name, {"i": start + i}) for i in range(size)])
        async with anyio.create_task_group() as tg:
            with Stopwatch() as sw:
                worker = await tg.start(
                    lambda task_status: app.run_worker(
                        [queue],
                        concurrency=CONCURRENCY,
                        claim_timeout=60,
                        handle_signals=False,
                        task_status=task_status,
                    )
                )
                while await _completed(app, queue) < bench.n:  # noqa: ASYNC110 — polls a count
                    await anyio.sleep(POLL_S)
            worker.drain()
    return Measurement(label, bench.n, sw.seconds)


async def worker_noop(bench: Bench) -> Measurement:
    return await _through_worker(bench, "noop", f"worker, no-op, concurrency {CONCURRENCY}")


async def worker_three_steps(bench: Bench) -> Measurement:
    return await _through_worker(
        bench, "three_steps", f"worker, 3 steps, concurrency {CONCURRENCY}"
    )


WORKLOADS: list[Workload] = [worker_noop, worker_three_steps]
