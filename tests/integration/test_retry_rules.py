"""A task's ``retry_on``/``discard_on`` by reason class, stored with the task (a spawn option,
the CLI's ``--retry-on``/``--discard-on``) and applied by ``durable.fail_locked_run`` to every
failure, a crash included: a failure they do not retry ends the task at once, recorded
``retryable`` false."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
from support.database import connection

import durable
from durable import (
    Client,
    FailureReason,
    InvalidArgument,
    SpawnOptions,
    TaskContext,
    TaskRecord,
    TaskState,
)

pytestmark = pytest.mark.anyio

Q = "rules"
TRANSPORT = {"type": "ConnectionError", "message": "refused", "reason_class": "transport"}
VALIDATION = {"type": "ValueError", "message": "bad", "reason_class": "validation"}


async def _fail_once(client: Client, options: SpawnOptions, error: dict[str, Any]) -> TaskRecord:
    info = await client.spawn(Q, "job", None, options)
    [claim] = await client.claim(Q, "w1", 30)
    assert claim.task_id == info.task_id
    await client.fail(Q, claim.run_id, error)
    return await client.get_task(Q, info.task_id)


async def test_discard_on_ends_a_failure_of_a_listed_class_at_once(client: Client) -> None:
    options = SpawnOptions(max_attempts=5, discard_on=["validation"])
    ended = await _fail_once(client, options, VALIDATION)
    assert ended.state is TaskState.FAILED
    assert ended.failure is not None
    assert ended.failure.error == {**VALIDATION, "retryable": False}
    retried = await _fail_once(client, options, TRANSPORT)
    assert (retried.state, retried.attempt) == (TaskState.PENDING, 2)

    rows = {row.task_id: row.retryable for row in await client.failed_work()}
    assert rows == {ended.task_id: False, retried.task_id: True}


async def test_retry_on_retries_only_the_listed_classes(client: Client) -> None:
    options = SpawnOptions(max_attempts=5, retry_on=["transport", "crash"])
    retried = await _fail_once(client, options, TRANSPORT)
    assert (retried.state, retried.attempt) == (TaskState.PENDING, 2)
    ended = await _fail_once(client, options, VALIDATION)
    assert ended.state is TaskState.FAILED
    assert [run.attempt for run in ended.runs] == [1]


async def test_discard_on_crash_ends_a_task_whose_worker_died(client: Client) -> None:
    """A task that kills its worker is reaped as ``crash``; ``discard_on=["crash"]`` ends it
    there instead of handing it to the next worker to kill."""
    info = await client.spawn(
        Q, "job", None, SpawnOptions(max_attempts=5, discard_on=["crash", "timeout"])
    )
    [claim] = await client.claim(Q, "dead-worker", 0.2)  # its worker never renews the lease
    await anyio.sleep(0.4)
    assert await client.claim(Q, "w2", 30) == []  # this claim reaps the lapsed run
    record = await client.get_task(Q, info.task_id)
    assert record.state is TaskState.FAILED
    assert [(run.run_id, run.failure_reason) for run in record.runs] == [
        (claim.run_id, FailureReason.CRASH)
    ]
    assert record.failure is not None
    assert record.failure.error is not None
    assert record.failure.error["retryable"] is False


async def test_a_definition_stores_its_reason_classes_and_keeps_its_types(dsn: str) -> None:
    app = durable.Durable(dsn)

    async def handler(ctx: TaskContext, params: Any) -> None:
        return None

    only_types = app.task(name="only_types", retry_on=[TimeoutError])(handler)
    mixed = app.task(name="mixed", retry_on=["transport"], discard_on=[KeyError, "validation"])(
        handler
    )
    # the worker holds the types; the database gets the classes (retry_on only when it has no
    # type in it: the database cannot tell a TimeoutError from another timeout)
    assert only_types.defaults.retry_on is None
    assert (mixed.defaults.retry_on, mixed.defaults.discard_on) == (["transport"], ["validation"])
    async with app:
        info = await mixed.spawn()
        overridden = await mixed.spawn(discard_on=["exhausted"])
        stored = await _stored_rules(app.client, [info.task_id, overridden.task_id])
    assert stored == [(["transport"], ["validation"]), (["transport"], ["exhausted"])]


async def _stored_rules(
    client: Client, task_ids: list[uuid.UUID]
) -> list[tuple[list[str] | None, list[str] | None]]:
    async with connection(client.store.dsn) as conn:
        rows = await conn.fetch(
            "select retry_on, discard_on from durable.tasks where task_id = any($1)"
            " order by task_id",
            task_ids,
        )
    return [(r["retry_on"], r["discard_on"]) for r in rows]


async def test_bad_reason_classes_are_refused_and_store_nothing(client: Client) -> None:
    with pytest.raises(ValueError, match=r"discard_on takes reason classes .*'bogus'"):
        SpawnOptions(discard_on=["bogus"])
    with pytest.raises(ValueError, match=r"exception types belong on @app\.task"):
        SpawnOptions(retry_on=[ValueError])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument, match="retry_on must be reason classes"):
        await client.store.spawn(Q, "job", None, {"retry_on": ["transport", "bogus"]})
    assert await client.queue_counts() == []
