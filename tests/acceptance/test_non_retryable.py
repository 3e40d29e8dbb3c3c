"""Errors that must not retry, through a real worker: ``NonRetryable`` (alone or wrapping its
cause), a task's ``discard_on`` and ``retry_on``, and a result that is not JSON end the task
``failed`` at once, the ``on_discard`` hook is told ``non_retryable``, and the failed-work row's
``retryable`` says what the runtime did. Every other error is retried, as before."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from support.in_process import running_worker
from support.waiting import wait_until

import durable
from durable import (
    DiscardReason,
    Fixed,
    InvalidArgument,
    NonRetryable,
    ReasonClass,
    TaskContext,
    TaskDiscarded,
    TaskFailed,
    TaskRecord,
    TaskState,
)

pytestmark = pytest.mark.anyio

DEADLINE_S = 20.0
#: Attempts enough that a task ending after its first one was surely not retried.
ATTEMPTS = 4


def _app(dsn: str) -> tuple[durable.Durable, list[tuple[Any, TaskDiscarded]]]:
    app = durable.Durable(dsn)
    discarded: list[tuple[Any, TaskDiscarded]] = []

    def on_discard(ctx: TaskContext, error: BaseException) -> None:
        assert isinstance(error, TaskDiscarded)
        discarded.append((ctx.params, error))

    options: dict[str, Any] = {
        "max_attempts": ATTEMPTS,
        "retry": Fixed(0),
        "on_discard": on_discard,
    }

    @app.task(name="refuses", **options)
    async def refuses(ctx: TaskContext, params: Any) -> None:
        if params == "plain":
            raise NonRetryable("the account is closed")
        if params == "from":
            try:
                int("x")
            except ValueError as exc:
                raise NonRetryable("bad input") from exc
        raise NonRetryable(ConnectionRefusedError("gateway gone for good"))

    @app.task(name="discards_value_errors", discard_on=(ValueError, "transport"), **options)
    async def discards(ctx: TaskContext, params: Any) -> None:
        if params == "value":
            raise ValueError("never")
        if params == "transport":
            raise ConnectionResetError("reset")
        raise RuntimeError(f"attempt {ctx.attempt}")  # neither: retried

    @app.task(name="retries_timeouts", retry_on=[TimeoutError], **options)
    async def retries_timeouts(ctx: TaskContext, params: Any) -> str:
        if params == "timeout" and ctx.attempt < 3:
            raise TimeoutError("slow upstream")
        if params == "lookup":
            raise LookupError("not a timeout: not retried")
        return f"done at attempt {ctx.attempt}"

    @app.task(name="validates", **options)
    async def validates(ctx: TaskContext, params: Any) -> None:
        raise ValueError("the same input fails again")  # the default: retried all the same

    @app.task(name="returns_a_set", **options)
    async def returns_a_set(ctx: TaskContext, params: Any) -> Any:
        return {1, 2}

    return app, discarded


async def _failed(app: durable.Durable, task_id: uuid.UUID) -> TaskRecord:
    with pytest.raises(TaskFailed):
        await app.result(task_id, timeout=DEADLINE_S)
    record = await app.get_task(task_id)
    assert record.state is TaskState.FAILED
    return record


async def _error(record: TaskRecord) -> dict[str, Any]:
    assert record.failure is not None
    assert record.failure.error is not None
    return record.failure.error


async def test_non_retryable_ends_the_task_now_and_tells_on_discard(dsn: str) -> None:
    app, discarded = _app(dsn)
    async with running_worker(app):
        ids = {p: (await app.spawn("refuses", p)).task_id for p in ("plain", "from", "wrapped")}
        records = {p: await _failed(app, task_id) for p, task_id in ids.items()}

        for record in records.values():
            assert [run.attempt for run in record.runs] == [1], record.runs
            error = await _error(record)
            assert (error["type"], error["retryable"]) == ("NonRetryable", False)
        plain = await _error(records["plain"])
        assert plain["message"] == "the account is closed"
        assert plain["reason_class"] == "validation"  # no cause: the input is wrong
        assert "cause" not in plain
        from_ = await _error(records["from"])
        assert from_["cause"]["type"] == "ValueError"
        assert from_["reason_class"] == "validation"
        assert "invalid literal" in from_["traceback"]  # the chained cause's traceback
        wrapped = await _error(records["wrapped"])
        assert wrapped["cause"]["type"] == "ConnectionRefusedError"
        assert wrapped["message"] == "ConnectionRefusedError: gateway gone for good"
        assert wrapped["reason_class"] == "transport"  # the cause's class

        async def hooks_ran() -> bool:
            return len(discarded) == 3

        await wait_until(hooks_ran, timeout=DEADLINE_S, what="three on_discard hooks")
        assert sorted(params for params, _ in discarded) == ["from", "plain", "wrapped"]
        assert {error.reason for _, error in discarded} == {DiscardReason.NON_RETRYABLE}

        rows = await app.failed_work(task_name="refuses")
        assert len(rows) == 3
        assert not any(row.retryable for row in rows)
        by_id = {row.task_id: row.reason_class for row in rows}
        assert by_id[ids["wrapped"]] is ReasonClass.TRANSPORT


async def test_discard_on_and_retry_on_choose_by_type_and_reason_class(dsn: str) -> None:
    app, discarded = _app(dsn)
    async with running_worker(app):
        value = (await app.spawn("discards_value_errors", "value")).task_id
        transport = (await app.spawn("discards_value_errors", "transport")).task_id
        other = (await app.spawn("discards_value_errors", "other")).task_id
        timeout = (await app.spawn("retries_timeouts", "timeout")).task_id
        lookup = (await app.spawn("retries_timeouts", "lookup")).task_id

        for task_id in (value, transport, lookup):  # listed (or not retried): ended at once
            record = await _failed(app, task_id)
            assert [run.attempt for run in record.runs] == [1]
            assert (await _error(record))["retryable"] is False
        record = await _failed(app, other)  # RuntimeError: neither listed, retried to the end
        assert [run.attempt for run in record.runs] == list(range(1, ATTEMPTS + 1))
        assert (await _error(record))["retryable"] is True
        done = await app.result(timeout, timeout=DEADLINE_S)  # a TimeoutError: retried
        assert done.result == "done at attempt 3"

        async def hooks_ran() -> bool:
            return len(discarded) == 4

        await wait_until(hooks_ran, timeout=DEADLINE_S, what="four on_discard hooks")
        reasons = {p: e.reason for p, e in discarded}
        assert reasons["value"] is DiscardReason.NON_RETRYABLE
        assert reasons["transport"] is DiscardReason.NON_RETRYABLE
        assert reasons["other"] is DiscardReason.EXHAUSTED
        assert reasons["lookup"] is DiscardReason.NON_RETRYABLE
        rows = {row.task_id: row.retryable for row in await app.failed_work()}
        assert rows == {value: False, transport: False, lookup: False, other: True}


async def test_by_default_every_error_is_retried_but_a_non_json_result_is_not(dsn: str) -> None:
    app, _ = _app(dsn)
    async with running_worker(app):
        validation = (await app.spawn("validates")).task_id
        not_json = (await app.spawn("returns_a_set")).task_id

        record = await _failed(app, validation)
        assert [run.attempt for run in record.runs] == list(range(1, ATTEMPTS + 1))
        error = await _error(record)
        assert (error["reason_class"], error["retryable"]) == ("validation", True)

        record = await _failed(app, not_json)
        assert [run.attempt for run in record.runs] == [1]
        error = await _error(record)
        assert (error["type"], error["reason_class"]) == ("NotSerializable", "validation")
        assert error["retryable"] is False

        rows = {row.task_id: row for row in await app.failed_work()}
        assert rows[validation].retryable  # the runtime did retry it
        assert rows[validation].reason_class is ReasonClass.VALIDATION
        assert not rows[not_json].retryable


async def test_retry_on_and_discard_on_refuse_what_they_cannot_match(dsn: str) -> None:
    app = durable.Durable(dsn)

    async def handler(ctx: TaskContext, params: Any) -> None:
        return None

    with pytest.raises(InvalidArgument, match=r"discard_on takes exception types .*'bogus'"):
        app.task(name="a", discard_on=("bogus",))(handler)
    with pytest.raises(InvalidArgument, match="retry_on takes exception types"):
        app.task(name="b", retry_on=[int])(handler)  # type: ignore[list-item]
    definition = app.task(name="c", discard_on=[ValueError], retry_on=["timeout"])(handler)
    assert definition.discard_on == (ValueError,)
    assert definition.retry_on == (ReasonClass.TIMEOUT,)
