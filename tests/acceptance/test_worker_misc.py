"""What an in-process worker does with unknown tasks, bad step values, errors, sync handlers, and
repeated step names."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
import structlog
from support.in_process import running_worker
from support.waiting import wait_finished, wait_for
from worker_app import QUEUE

from durable import (
    Durable,
    FailureReason,
    Fixed,
    RunState,
    SyncTaskContext,
    TaskContext,
    TaskFailed,
    TaskRecord,
    TaskState,
)

pytestmark = pytest.mark.anyio

UNKNOWN_DEFER_S = 30.0


async def test_unknown_tasks_are_deferred_without_spending_an_attempt_and_logged_once(
    dsn: str,
) -> None:
    app = Durable(dsn)

    @app.task
    async def known(ctx: TaskContext, params: Any) -> str:
        return "ok"

    async with app:  # spawned before the worker starts: its first claim takes all three
        handles = [await app.spawn("deployed_later", {"i": i}, queue=QUEUE) for i in range(3)]
    with structlog.testing.capture_logs() as logs:
        async with running_worker(app, unknown_task_defer=UNKNOWN_DEFER_S):

            async def all_released() -> list[TaskRecord] | None:
                records = [await app.get_task(h.task_id) for h in handles]
                released = all(r.runs[0].state is RunState.RELEASED for r in records)
                return records if released else None

            records = await wait_for(all_released, timeout=10, what="the unknown runs released")
            # the worker goes on with the tasks it knows
            assert (await (await known.spawn()).result(timeout=10)).result == "ok"

    for record in records:
        assert (record.state, record.attempt) == (TaskState.PENDING, 1)
        first, second = record.runs
        assert (first.state, first.attempt, first.failure_reason) == (RunState.RELEASED, 1, None)
        assert (second.state, second.attempt) == (RunState.PENDING, 1)
        assert first.finished_at is not None
        # due at once, for a worker that knows the task; this one skips the name for
        # UNKNOWN_DEFER_S instead (tests/acceptance/test_deferral.py)
        assert second.available_at <= first.finished_at
    deferred = [e for e in logs if e["event"] == "task.unknown_deferred"]
    assert len(deferred) == 1
    assert deferred[0]["task_name"] == "deployed_later"


async def test_a_step_value_that_is_not_json_fails_the_run_naming_the_step(dsn: str) -> None:
    app = Durable(dsn)

    def a_set() -> set[int]:
        return {1, 2}

    @app.task(max_attempts=1)
    async def returns_a_set(ctx: TaskContext, params: Any) -> Any:
        return await ctx.step("make-set", a_set)

    async with running_worker(app):
        handle = await returns_a_set.spawn()
        record = await wait_finished(app.client, handle.task_id, timeout=10)
        checkpoints = await app.client.get_checkpoints(QUEUE, handle.task_id)

    assert record.state is TaskState.FAILED
    [run] = record.runs
    assert (run.state, run.failure_reason) == (RunState.FAILED, FailureReason.ERRORED)
    assert run.error is not None
    assert run.error["type"] == "NotSerializable"
    assert "'make-set'" in run.error["message"]
    assert checkpoints == []


async def test_a_handler_error_is_stored_on_the_run_and_raised_by_result(dsn: str) -> None:
    app = Durable(dsn)

    @app.task(max_attempts=1)
    async def rejects_input(ctx: TaskContext, params: Any) -> None:
        raise ValueError(f"bad input {params['n']}")

    async with running_worker(app):
        handle = await rejects_input.spawn({"n": 42})
        with pytest.raises(TaskFailed) as failed:
            await handle.result(timeout=10)
        record = await app.get_task(handle.task_id)

    failure = failed.value.failure
    assert failure is not None
    assert failure.reason is FailureReason.ERRORED
    assert failure.error is not None
    assert (failure.error["type"], failure.error["message"]) == ("ValueError", "bad input 42")
    assert failed.value.state == "failed"
    [run] = record.runs
    assert (run.state, run.failure_reason) == (RunState.FAILED, FailureReason.ERRORED)
    assert run.error is not None
    assert (run.error["type"], run.error["message"]) == ("ValueError", "bad input 42")
    assert "in rejects_input" in run.error["traceback"]
    assert "ValueError: bad input 42" in run.error["traceback"]


async def test_a_plain_def_handler_runs_in_a_thread(dsn: str) -> None:
    app = Durable(dsn)

    @app.task
    def add(ctx: SyncTaskContext, params: Any) -> dict[str, Any]:
        return {
            "sum": params["a"] + params["b"],
            "in_main_thread": threading.current_thread() is threading.main_thread(),
        }

    async with running_worker(app):
        handle = await add.spawn({"a": 2, "b": 3})
        outcome = await handle.result(timeout=10)

    assert outcome.state is TaskState.COMPLETED
    assert outcome.result == {"sum": 5, "in_main_thread": False}


async def test_repeated_step_names_get_numbered_checkpoints_and_replay_on_retry(dsn: str) -> None:
    app = Durable(dsn)
    executed: list[int] = []

    def tick(i: int) -> int:
        executed.append(i)
        return i * 10

    @app.task(max_attempts=2, retry=Fixed(0))
    async def loop(ctx: TaskContext, params: Any) -> list[int]:
        values = [await ctx.step("tick", tick, i) for i in range(3)]
        if ctx.attempt == 1:
            raise RuntimeError("fail after the steps, so that attempt 2 replays them")
        return values

    async with running_worker(app):
        handle = await loop.spawn()
        outcome = await handle.result(timeout=10)
        record = await app.get_task(handle.task_id)
        checkpoints = await app.client.get_checkpoints(QUEUE, handle.task_id)

    assert outcome.result == [0, 10, 20]
    assert executed == [0, 1, 2]  # once each, in attempt 1 only
    first, second = record.runs
    assert (first.state, first.failure_reason) == (RunState.FAILED, FailureReason.ERRORED)
    assert (second.state, second.attempt) == (RunState.COMPLETED, 2)
    assert {c.step_name: (c.value, c.run_id) for c in checkpoints} == {
        "tick": (0, first.run_id),
        "tick#2": (10, first.run_id),
        "tick#3": (20, first.run_id),
    }


async def test_a_custom_backoff_sets_when_the_next_attempt_runs(dsn: str) -> None:
    app = Durable(dsn)
    seen: list[tuple[int, str]] = []

    def backoff(attempt: int, error: BaseException) -> float:
        seen.append((attempt, type(error).__name__))
        return 0.2

    @app.task(queue=QUEUE, max_attempts=2, backoff=backoff)
    async def shaky(ctx: TaskContext, params: Any) -> int:
        if ctx.attempt == 1:
            raise ConnectionError("upstream reset")
        return ctx.attempt

    async with running_worker(app):
        handle = await shaky.spawn()
        assert (await handle.result(timeout=10)).result == 2
        record = await app.get_task(handle.task_id)

    assert seen == [(1, "ConnectionError")]
    first, second = record.runs
    assert first.finished_at is not None
    gap = (second.available_at - first.finished_at).total_seconds()
    assert 0.1 <= gap <= 0.6  # the callable's 0.2 s, not the default exponential's 0.9-1.1 s


async def test_a_worker_runs_without_prepared_statements_as_behind_pgbouncer(dsn: str) -> None:
    app = Durable(dsn, statement_cache_size=0)

    @app.task(queue=QUEUE)
    async def stepped(ctx: TaskContext, params: Any) -> int:
        return sum([await ctx.step("one", lambda: 1) for _ in range(2)])

    async with running_worker(app):
        handles = [await stepped.spawn(i) for i in range(5)]
        for handle in handles:
            assert (await handle.result(timeout=10)).result == 2


async def test_a_cancelled_run_s_next_batched_checkpoint_is_refused_and_it_stops(dsn: str) -> None:
    """The worker batches checkpoints; one whose run was cancelled meanwhile is refused on its
    own (LeaseLost inside the handler), while the other runs' checkpoints in the batch land."""
    app = Durable(dsn)
    reached = anyio.Event()
    go_on = anyio.Event()
    after: list[int] = []

    @app.task(queue=QUEUE)
    async def paused(ctx: TaskContext, params: int) -> int:
        await ctx.step("first", lambda: params)
        if params == 0:
            reached.set()
            await go_on.wait()
        await ctx.step("second", lambda: params)
        after.append(params)
        return params

    async with running_worker(app):
        victim = await paused.spawn(0)
        with anyio.fail_after(10):
            await reached.wait()
        await app.cancel(victim.task_id)
        others = [await paused.spawn(i) for i in range(1, 6)]
        go_on.set()
        results = [(await h.result(timeout=10)).result for h in others]
        with pytest.raises(TaskFailed):
            await victim.result(timeout=10)
        steps = [c.step_name for c in await app.client.get_checkpoints(QUEUE, victim.task_id)]

    assert results == [1, 2, 3, 4, 5]
    assert steps == ["first"]  # "second" was refused
    assert 0 not in after  # the handler stopped at the refused step


async def test_an_empty_step_name_fails_only_its_own_run(dsn: str) -> None:
    """Checkpoints are batched across runs; a bad step name is refused in its own handler, so
    it cannot fail the other runs' checkpoints in the same batch."""
    app = Durable(dsn)

    @app.task(queue=QUEUE, max_attempts=1)
    async def named(ctx: TaskContext, params: str) -> str:
        return str(await ctx.step(params, lambda: params))

    async with running_worker(app):
        good = [await named.spawn(f"s{i}") for i in range(10)]
        bad = await named.spawn("")
        assert [(await h.result(timeout=10)).result for h in good] == [f"s{i}" for i in range(10)]
        with pytest.raises(TaskFailed, match="step name"):
            await bad.result(timeout=10)


async def test_a_plain_def_handler_uses_its_context_synchronously(dsn: str) -> None:
    app = Durable(dsn)
    executed: list[str] = []

    def double(x: int) -> int:
        executed.append(f"double {x}")
        return 2 * x

    async def triple(x: int) -> int:
        executed.append(f"triple {x}")
        return 3 * x

    @app.task(queue=QUEUE, name="child_of_sync")
    async def child(ctx: TaskContext, params: Any) -> int:
        return int(params["n"]) + 1

    @app.task(queue=QUEUE, max_attempts=2, retry=Fixed(0))
    def sync_parent(ctx: SyncTaskContext, params: Any) -> dict[str, Any]:
        a = ctx.step("double", double, 5)
        b = ctx.step("triple", triple, 5)
        ctx.heartbeat()
        ctx.progress(50.0, {"a": a})
        ctx.sleep("nap", 0)  # a time already past returns at once
        spawned = ctx.spawn(child, {"n": a + b})
        got = ctx.result(spawned, timeout=10)
        event = ctx.await_event("sync-test-event", timeout=10)
        if ctx.attempt == 1:
            raise RuntimeError("fail after the steps, so that attempt 2 replays them")
        return {"a": a, "b": b, "child": got.result, "event": event}

    async with running_worker(app):
        await app.emit_event("sync-test-event", {"ok": True})
        handle = await sync_parent.spawn(None)
        outcome = await handle.result(timeout=20)
        record = await app.get_task(handle.task_id)

    assert outcome.result == {"a": 10, "b": 15, "child": 26, "event": {"ok": True}}
    assert executed == ["double 5", "triple 5"]  # attempt 2 replayed both steps
    assert record.progress is not None
    assert record.progress.pct == 50.0
    assert [run.state for run in record.runs][-1] is RunState.COMPLETED


async def test_a_plain_def_handler_past_its_timeout_is_stopped_at_its_next_call(dsn: str) -> None:
    app = Durable(dsn)
    calls_after_timeout: list[str] = []

    @app.task(queue=QUEUE, max_attempts=1, timeout=0.3)
    def slow(ctx: SyncTaskContext, params: Any) -> None:
        import time

        time.sleep(0.6)  # past the timeout: the worker records job_timeout meanwhile
        try:
            ctx.step("after", lambda: 1)
        finally:
            calls_after_timeout.append("unwound")

    async with running_worker(app):
        handle = await slow.spawn(None)
        with pytest.raises(TaskFailed) as failed:
            await handle.result(timeout=10)
        with anyio.fail_after(5):
            while not calls_after_timeout:  # noqa: ASYNC110 — the abandoned thread unwinds
                await anyio.sleep(0.05)
        checkpoints = await app.client.get_checkpoints(QUEUE, handle.task_id)

    assert failed.value.failure is not None
    assert failed.value.failure.reason is FailureReason.JOB_TIMEOUT
    assert checkpoints == []  # the stopped handler wrote nothing more
