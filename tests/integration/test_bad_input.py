"""Bad input raises the typed error and changes nothing."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import anyio
import asyncpg
import pytest
from support.database import table_counts, with_database

from durable.client import Client
from durable.protocol.errors import (
    DatabaseUnavailable,
    DurableError,
    InvalidArgument,
    InvalidQueueName,
    NotSerializable,
    TaskNotFound,
)
from durable.protocol.records import SpawnOptions

pytestmark = pytest.mark.anyio

Q = "jobs"
BAD_QUEUES = ["My Queue", "", "a;drop table x", "q" * 49, "1abc", "_x", "Jobs", "jobs-1"]


async def _running(client: Client) -> uuid.UUID:
    """A task with one running run, claimed by w1."""
    await client.spawn(Q, "job", None)
    [claim] = await client.claim(Q, "w1")
    return claim.run_id


# --- queue names ------------------------------------------------------------------------------


@pytest.mark.parametrize("queue", BAD_QUEUES)
async def test_a_bad_queue_name_is_refused_by_the_client(
    client: Client, raw: asyncpg.Connection, queue: str
) -> None:
    before = await table_counts(raw)
    with pytest.raises(InvalidQueueName) as caught:
        await client.spawn(queue, "job", {})
    assert caught.value.queue == queue
    assert repr(queue) in str(caught.value)
    with pytest.raises(InvalidQueueName):
        await client.spawn_many(queue, [("job", {})])
    with pytest.raises(InvalidQueueName):
        await client.claim(queue, "w1")
    with pytest.raises(InvalidQueueName):
        await client.get_task(queue, uuid.uuid4())
    assert await table_counts(raw) == before


@pytest.mark.parametrize("queue", BAD_QUEUES)
async def test_a_bad_queue_name_is_refused_by_sql_with_du004(
    raw: asyncpg.Connection, queue: str
) -> None:
    before = await table_counts(raw)
    for query in (
        "select durable.spawn($1, 't', '{}'::jsonb, '{}'::jsonb)",
        "select durable.spawn_many($1, '[]'::jsonb)",
        "select durable.claim($1, 'w1', 30, 1)",
    ):
        with pytest.raises(asyncpg.PostgresError) as caught:
            await raw.fetch(query, queue)
        assert caught.value.sqlstate == "DU004"
    assert await table_counts(raw) == before


async def test_a_null_queue_name_is_refused_by_sql(raw: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.PostgresError) as caught:
        await raw.fetch("select durable.spawn(null, 't', '{}'::jsonb, '{}'::jsonb)")
    assert caught.value.sqlstate == "DU004"
    assert await table_counts(raw) == (0, 0, 0, 0)


async def test_a_bad_queue_name_reaching_the_store_maps_du004(
    client: Client, raw: asyncpg.Connection
) -> None:
    with pytest.raises(InvalidQueueName):
        await client.store.spawn("Bad Queue", "job", {}, {})
    assert await table_counts(raw) == (0, 0, 0, 0)


# --- values that are not JSON -----------------------------------------------------------------


class _Opaque:
    pass


@pytest.mark.parametrize(
    "params",
    [
        {1, 2},
        _Opaque(),
        {1: "int key"},
        {"nested": [b"bytes"]},
        2**70,
        "nul \u0000 char",
        {"key \u0000": 1},
        [{"deep": "\u0000"}],
    ],
    ids=["set", "object", "int-key", "bytes", "huge-int", "nul", "nul-key", "nested-nul"],
)
async def test_params_that_are_not_json_raise_not_serializable(
    client: Client, raw: asyncpg.Connection, params: Any
) -> None:
    with pytest.raises(NotSerializable):
        await client.spawn(Q, "job", params)
    with pytest.raises(NotSerializable):
        await client.spawn_many(Q, [("job", "fine"), ("job", params)])
    assert await table_counts(raw) == (0, 0, 0, 0)


async def test_a_result_that_is_not_json_leaves_the_run_running(
    client: Client, raw: asyncpg.Connection
) -> None:
    run_id = await _running(client)
    before = await table_counts(raw)
    for result in ({1, 2}, "nul \u0000"):
        with pytest.raises(NotSerializable):
            await client.complete(Q, run_id, result)
    assert await table_counts(raw) == before
    await client.complete(Q, run_id, "fine")


async def test_a_checkpoint_that_is_not_json_writes_nothing(
    client: Client, raw: asyncpg.Connection
) -> None:
    run_id = await _running(client)
    lease = await raw.fetchval("select lease_expires_at from durable.runs")
    for value in (_Opaque(), "nul \u0000"):
        with pytest.raises(NotSerializable):
            await client.set_checkpoint(Q, run_id, "step", value, extend_by=3600)
    assert await raw.fetchval("select count(*) from durable.checkpoints") == 0
    assert await raw.fetchval("select lease_expires_at from durable.runs") == lease


async def test_an_error_that_is_not_json_fails_nothing(
    client: Client, raw: asyncpg.Connection
) -> None:
    run_id = await _running(client)
    before = await table_counts(raw)
    with pytest.raises(NotSerializable):
        await client.fail(Q, run_id, {"type": "E", "detail": _Opaque()})
    assert await table_counts(raw) == before
    assert await raw.fetchval("select state from durable.runs") == "running"


# --- unknown ids ------------------------------------------------------------------------------


async def test_an_unknown_task_id_raises_task_not_found(
    client: Client, raw: asyncpg.Connection
) -> None:
    await client.spawn(Q, "job", None)
    before = await table_counts(raw)
    missing = uuid.uuid4()
    for call in (
        client.get_task(Q, missing),
        client.get_result(Q, missing),
        client.cancel(Q, missing),
        client.retry(Q, missing),
        client.get_checkpoints(Q, missing),
        client.get_task(None, missing),
    ):
        with pytest.raises(TaskNotFound) as caught:
            await call
        assert caught.value.task_id == missing
    assert await table_counts(raw) == before


async def test_a_task_on_another_queue_is_not_found(client: Client) -> None:
    info = await client.spawn(Q, "job", None)
    with pytest.raises(TaskNotFound):
        await client.get_task("other", info.task_id)
    with pytest.raises(TaskNotFound):
        await client.cancel("other", info.task_id)
    assert (await client.get_task(Q, info.task_id)).state == "pending"


# --- durations and other arguments ------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"delay": -1.0},
        {"delay": timedelta(seconds=-5)},
        {"delay": float("nan")},
        {"timeout": -1.0},
        {"heartbeat_timeout": -0.5},
    ],
    ids=["negative", "negative-timedelta", "nan", "timeout", "heartbeat-timeout"],
)
async def test_a_negative_duration_raises_a_value_error(
    client: Client, raw: asyncpg.Connection, options: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        await client.spawn(Q, "job", None, SpawnOptions(**options))
    assert await table_counts(raw) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    "options",
    [{"delay": -1}, {"timeout": -3}, {"delay": "soon"}, {"heartbeat_timeout": True}],
    ids=["delay", "timeout", "text", "bool"],
)
async def test_a_bad_duration_reaching_sql_raises_invalid_argument(
    client: Client, raw: asyncpg.Connection, options: dict[str, Any]
) -> None:
    with pytest.raises(InvalidArgument):
        await client.store.spawn(Q, "job", None, options)
    assert issubclass(InvalidArgument, DurableError)
    assert issubclass(InvalidArgument, ValueError)
    assert await table_counts(raw) == (0, 0, 0, 0)


async def test_a_duration_beyond_the_timestamp_range_raises_invalid_argument(
    client: Client, raw: asyncpg.Connection
) -> None:
    with pytest.raises(InvalidArgument):
        await client.spawn(Q, "job", None, SpawnOptions(delay=1e15))
    with pytest.raises(InvalidArgument):
        await client.claim(Q, "w1", claim_timeout=1e300)
    assert await table_counts(raw) == (0, 0, 0, 0)
    run_id = await _running(client)
    with pytest.raises(InvalidArgument):
        await client.extend_claim(Q, run_id, 1e300)
    with pytest.raises(InvalidArgument):
        await client.schedule_run(Q, run_id, 1e300)
    assert await raw.fetchval("select state from durable.runs") == "running"


async def test_an_unparsable_option_reaching_sql_raises_invalid_argument(
    client: Client, raw: asyncpg.Connection
) -> None:
    for options in ({"priority": "high"}, {"at": "next tuesday-ish"}, {"max_attempts": 1e20}):
        with pytest.raises(InvalidArgument):
            await client.store.spawn(Q, "job", None, options)
    assert await table_counts(raw) == (0, 0, 0, 0)


async def test_an_infinite_delay_is_refused(client: Client, raw: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        await client.spawn(Q, "job", None, SpawnOptions(delay=float("inf")))
    assert await table_counts(raw) == (0, 0, 0, 0)


@pytest.mark.parametrize("number", [float("nan"), float("inf")], ids=["nan", "inf"])
async def test_a_float_that_is_not_json_raises_not_serializable(
    client: Client, raw: asyncpg.Connection, number: float
) -> None:
    with pytest.raises(NotSerializable):
        await client.spawn(Q, "job", {"x": number})
    assert await table_counts(raw) == (0, 0, 0, 0)


async def test_spawn_options_refuse_contradictions() -> None:
    with pytest.raises(ValueError, match="delay or at"):
        SpawnOptions(delay=1, at=datetime.now().astimezone())
    with pytest.raises(ValueError, match="timezone-aware"):
        SpawnOptions(at=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="max_attempts"):
        SpawnOptions(max_attempts=0)


@pytest.mark.parametrize("name", ["", "x" * 256])
async def test_a_bad_task_name_raises_invalid_argument(
    client: Client, raw: asyncpg.Connection, name: str
) -> None:
    with pytest.raises(InvalidArgument):
        await client.spawn(Q, name, None)
    with pytest.raises(InvalidArgument):
        await client.spawn_many(Q, [("fine", None), (name, None)])
    assert await table_counts(raw) == (0, 0, 0, 0)


async def test_bad_claim_arguments_raise_and_claim_nothing(
    client: Client, raw: asyncpg.Connection
) -> None:
    await client.spawn(Q, "job", None)
    before = await table_counts(raw)
    with pytest.raises(InvalidArgument):
        await client.claim(Q, "w1", claim_timeout=0)
    with pytest.raises(ValueError, match="non-negative"):
        await client.claim(Q, "w1", claim_timeout=-1)
    with pytest.raises(InvalidArgument):
        await client.claim(Q, "", claim_timeout=30)
    assert await table_counts(raw) == before
    assert await raw.fetchval("select state from durable.runs") == "pending"


async def test_bad_run_arguments_raise_and_change_nothing(
    client: Client, raw: asyncpg.Connection
) -> None:
    run_id = await _running(client)
    lease = await raw.fetchval("select lease_expires_at from durable.runs")
    before = await table_counts(raw)
    with pytest.raises(InvalidArgument):
        await client.set_checkpoint(Q, run_id, "", 1)
    with pytest.raises(ValueError, match="non-negative"):
        await client.extend_claim(Q, run_id, -1)
    with pytest.raises(ValueError, match="non-negative"):
        await client.schedule_run(Q, run_id, -1)
    with pytest.raises(ValueError, match="not a valid FailureReason"):
        await client.fail(Q, run_id, None, reason="bogus")
    assert await table_counts(raw) == before
    assert await raw.fetchval("select lease_expires_at from durable.runs") == lease


async def test_an_unknown_failure_reason_is_refused_by_sql(
    client: Client, raw: asyncpg.Connection
) -> None:
    run_id = await _running(client)
    with pytest.raises(asyncpg.PostgresError) as caught:
        await raw.execute("select durable.fail('jobs', $1, null, 'bogus')", run_id)
    assert caught.value.sqlstate == "DU005"
    assert await raw.fetchval("select state from durable.runs") == "running"


# --- DSNs -------------------------------------------------------------------------------------


async def test_an_unreachable_dsn_raises_database_unavailable_promptly() -> None:
    with anyio.fail_after(10):
        with pytest.raises(DatabaseUnavailable) as caught:
            await Client("postgresql://postgres@127.0.0.1:1/x").connect()
    assert "127.0.0.1:1" in str(caught.value)
    assert (caught.value.host, caught.value.port) == ("127.0.0.1", 1)


@pytest.mark.parametrize(
    "dsn", ["not a dsn", "mysql://x", "postgresql://postgres@127.0.0.1:notaport/x"]
)
async def test_a_dsn_that_is_not_a_dsn_raises_database_unavailable(dsn: str) -> None:
    with anyio.fail_after(10), pytest.raises(DatabaseUnavailable):
        await Client(dsn).connect()


async def test_a_missing_database_raises_database_unavailable(server_dsn: str) -> None:
    missing = with_database(server_dsn, f"missing_{uuid.uuid4().hex}")
    with anyio.fail_after(10), pytest.raises(DatabaseUnavailable):
        await Client(missing).connect()


async def test_an_unconnected_client_raises_database_unavailable() -> None:
    with pytest.raises(DatabaseUnavailable, match="not connected"):
        await Client("postgresql://postgres@127.0.0.1:1/x").spawn(Q, "job", None)
