"""A worker claims short tasks ahead of its free slots, yet never runs more handlers at once
than its concurrency, and a drain hands the runs it claimed ahead straight back. Completions
are queued for the batcher without the runner waiting: a worker cancelled outright still
writes the ones it queued."""

from __future__ import annotations

import uuid
from collections import Counter

import anyio
import pytest

from durable import Durable, RunState, TaskContext, TaskState, Worker

pytestmark = pytest.mark.anyio

QUEUE = "ahead"


class Watch:
    """What the handlers saw: calls per task, handlers running at once, runs waiting for a slot."""

    def __init__(self) -> None:
        self.calls: Counter[int] = Counter()
        self.returned: Counter[int] = Counter()
        self.running = 0
        self.most_running = 0
        self.saw_waiting = False
        self.worker: Worker | None = None
        self.enough = anyio.Event()
        self.stop_after = 0


def short_task_app(dsn: str, watch: Watch) -> Durable:
    app = Durable(dsn)

    @app.task(name="short", queue=QUEUE)
    async def short(ctx: TaskContext, params: dict[str, int]) -> None:
        watch.calls[params["i"]] += 1
        watch.running += 1
        watch.most_running = max(watch.most_running, watch.running)
        if watch.worker is not None and any(
            not control.started for control in watch.worker.active.values()
        ):
            watch.saw_waiting = True
        try:
            await anyio.sleep(0.001)
            watch.returned[params["i"]] += 1
        finally:
            watch.running -= 1
        if sum(watch.calls.values()) >= watch.stop_after:
            watch.enough.set()

    return app


async def spawn_short(app: Durable, n: int) -> list[uuid.UUID]:
    infos = await app.client.spawn_many(QUEUE, [("short", {"i": i}) for i in range(n)])
    return [info.task_id for info in infos]


async def run_until(app: Durable, watch: Watch, concurrency: int, handler_calls: int) -> None:
    """One worker until the handlers were called ``handler_calls`` times in all, then drained
    (``drain`` returns at once; the worker stops when its runs are done)."""
    watch.stop_after = handler_calls
    watch.enough = anyio.Event()
    async with anyio.create_task_group() as tg:
        worker: Worker = await tg.start(
            lambda task_status: app.run_worker(
                [QUEUE], concurrency, handle_signals=False, task_status=task_status
            )
        )
        watch.worker = worker
        with anyio.fail_after(60):
            await watch.enough.wait()
        worker.drain()


async def test_short_tasks_are_claimed_ahead_but_never_run_beyond_the_concurrency(
    dsn: str,
) -> None:
    watch = Watch()
    app = short_task_app(dsn, watch)
    n, concurrency = 600, 4
    async with app:
        await spawn_short(app, n)
        await run_until(app, watch, concurrency, n)
        counts = await app.client.queue_counts()
    assert watch.most_running <= concurrency
    assert watch.saw_waiting, "no run was ever claimed ahead of a free slot"
    assert sorted(watch.calls) == list(range(n))
    assert set(watch.calls.values()) == {1}
    assert {c.state: c.count for c in counts if c.queue == QUEUE} == {TaskState.COMPLETED: n}


async def test_a_drain_hands_back_runs_claimed_ahead_without_running_them(dsn: str) -> None:
    watch = Watch()
    app = short_task_app(dsn, watch)
    n, concurrency = 400, 2
    async with app:
        task_ids = await spawn_short(app, n)
        await run_until(app, watch, concurrency, 100)
        ran_before_drain = dict(watch.calls)
        records = [await app.client.get_task(None, task_id) for task_id in task_ids]
        released = 0
        for record in records:
            i = record.params["i"]
            if record.state is TaskState.COMPLETED:
                assert ran_before_drain.get(i) == 1, record
            else:
                # not run at all: pending, with any run it had handed back (released)
                assert record.state is TaskState.PENDING, record
                assert i not in ran_before_drain, record
                assert all(r.state in (RunState.RELEASED, RunState.PENDING) for r in record.runs)
                assert all(r.failure_reason is None for r in record.runs)
                released += any(r.state is RunState.RELEASED for r in record.runs)
        assert released, "the drain found no run claimed ahead to hand back"

        # another worker finishes the rest: every task's handler ran exactly once in all
        await run_until(app, watch, concurrency, n)
    assert set(watch.calls.values()) == {1}
    assert len(watch.calls) == n


async def test_a_cancelled_worker_writes_the_completions_it_queued(dsn: str) -> None:
    watch = Watch()
    app = short_task_app(dsn, watch)
    n, concurrency = 1000, 20
    async with app:
        task_ids = await spawn_short(app, n)
        watch.stop_after = 300
        async with anyio.create_task_group() as tg:  # cancelled below: no drain
            await tg.start(
                lambda task_status: app.run_worker(
                    [QUEUE], concurrency, handle_signals=False, task_status=task_status
                )
            )
            with anyio.fail_after(60):
                await watch.enough.wait()
            tg.cancel_scope.cancel()
        returned = set(watch.returned)
        assert returned
        for task_id in task_ids:
            record = await app.client.get_task(None, task_id)
            if record.params["i"] in returned:  # its handler returned: its completion is written
                assert record.state is TaskState.COMPLETED, record
            else:  # cancelled mid-handler or never started: handed back, no attempt spent
                assert record.state is TaskState.PENDING, record
                assert all(r.failure_reason is None for r in record.runs), record

        await run_until(app, watch, concurrency, n + len(watch.calls) - len(returned))
    assert sorted(watch.returned) == list(range(n))
    assert set(watch.returned.values()) == {1}, "a completed task ran again"
