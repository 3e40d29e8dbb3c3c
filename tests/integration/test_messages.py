"""Messages to one task (``send_message``, ``receive_message``) and the state a task publishes
(``set_state``, ``get_state``), driven through ``Client`` against a real PostgreSQL."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from support.waiting import wait_for

from durable.client import Client
from durable.protocol.codec import MAX_PAYLOAD_BYTES
from durable.protocol.errors import (
    InvalidArgument,
    InvalidState,
    LeaseLost,
    PayloadTooLarge,
    TaskNotFound,
)
from durable.protocol.records import RunState

pytestmark = pytest.mark.anyio

Q = "inbox"


async def _running(client: Client) -> tuple[uuid.UUID, uuid.UUID]:
    """A task of its own, claimed: (task_id, run_id)."""
    info = await client.spawn(Q, "listener", None)
    (claim,) = await client.claim(Q, "w1", 30)
    assert claim.task_id == info.task_id
    return info.task_id, claim.run_id


async def _claim_when_due(client: Client) -> uuid.UUID:
    async def probe() -> uuid.UUID | None:
        claims = await client.claim(Q, "w1", 30)
        return claims[0].run_id if claims else None

    return await wait_for(probe, timeout=10, what="the parked run to be due")


async def test_messages_are_received_in_the_order_sent_each_once_per_topic(
    client: Client,
) -> None:
    task_id, run_id = await _running(client)
    assert await client.send_message(task_id, "orders", {"n": 1}) is False  # stored
    assert await client.send_message(task_id, "orders", {"n": 2}) is False
    assert await client.send_message(task_id, "other", "elsewhere") is False

    assert await client.receive_message(Q, run_id, "$recv:orders", "orders") == (
        "received",
        {"n": 1},
    )
    # the step is recorded: asked again, it answers the same, and takes nothing more
    assert await client.receive_message(Q, run_id, "$recv:orders", "orders") == (
        "received",
        {"n": 1},
    )
    assert await client.receive_message(Q, run_id, "$recv:orders#2", "orders") == (
        "received",
        {"n": 2},
    )
    assert await client.receive_message(Q, run_id, "$recv:other", "other") == (
        "received",
        "elsewhere",
    )
    checkpoints = await client.get_checkpoints(Q, task_id)
    assert [(c.step_name, c.value) for c in checkpoints] == [
        ("$recv:orders", {"payload": {"n": 1}}),
        ("$recv:orders#2", {"payload": {"n": 2}}),
        ("$recv:other", {"payload": "elsewhere"}),
    ]
    # nothing left: the next receive parks the run
    assert await client.receive_message(Q, run_id, "$recv:orders#3", "orders") == (
        "suspended",
        None,
    )


async def test_a_receive_parks_until_a_message_is_sent_to_the_task(client: Client) -> None:
    task_id, run_id = await _running(client)
    assert await client.receive_message(Q, run_id, "$recv:go", "go") == ("suspended", None)
    parked = await client.get_task(Q, task_id)
    assert [r.state for r in parked.runs] == [RunState.SUSPENDED, RunState.SLEEPING]
    (wait,) = parked.waiting_for
    assert (wait["topic"], wait["step_name"], wait["event_name"]) == ("go", "$recv:go", None)
    assert await client.claim(Q, "w1", 30) == []

    assert await client.send_message(task_id, "nope", 1) is False  # another topic: stored
    assert await client.claim(Q, "w1", 30) == []
    assert await client.send_message(task_id, "go", ["now"]) is True  # woke it

    (claim,) = await client.claim(Q, "w1", 30)
    assert await client.receive_message(Q, claim.run_id, "$recv:go", "go") == (
        "received",
        ["now"],
    )
    assert (await client.get_task(Q, task_id)).waiting_for == []


async def test_a_receive_times_out_and_a_later_message_waits_for_the_next(client: Client) -> None:
    task_id, run_id = await _running(client)
    assert await client.receive_message(Q, run_id, "$recv:t", "t", timeout=0.2) == (
        "suspended",
        None,
    )
    woken = await _claim_when_due(client)
    assert await client.receive_message(Q, woken, "$recv:t", "t", timeout=0.2) == (
        "timeout",
        None,
    )
    assert await client.send_message(task_id, "t", "late") is False  # stored, not delivered
    assert await client.receive_message(Q, woken, "$recv:t#2", "t") == ("received", "late")


async def test_sending_refuses_bad_input_and_writes_nothing(client: Client) -> None:
    task_id, run_id = await _running(client)
    unknown = uuid.uuid4()
    with pytest.raises(TaskNotFound) as caught:
        await client.send_message(unknown, "t", None)
    assert caught.value.task_id == unknown
    with pytest.raises(InvalidArgument, match="topic must be a string of 1 to 255"):
        await client.send_message(task_id, "t" * 256, None)
    with pytest.raises(InvalidArgument, match="topic"):
        await client.send_message(task_id, "", None)
    with pytest.raises(PayloadTooLarge):
        await client.send_message(task_id, "t", "x" * MAX_PAYLOAD_BYTES)
    with pytest.raises(InvalidArgument, match="topic"):
        await client.receive_message(Q, run_id, "$recv:", "")
    await client.complete(Q, run_id, None)
    with pytest.raises(InvalidState, match="ended"):
        await client.send_message(task_id, "t", None)
    with pytest.raises(LeaseLost):
        await client.receive_message(Q, run_id, "$recv:t", "t")
    assert await client.get_checkpoints(Q, task_id) == []


async def test_a_sent_message_wakes_a_receive_in_sql_too(
    client: Client, raw: asyncpg.Connection
) -> None:
    """Any language can send: the protocol function with the JSON payload as text."""
    task_id, run_id = await _running(client)
    await client.receive_message(Q, run_id, "$recv:sql", "sql")
    assert await raw.fetchval(
        "select durable.send_message($1, 'sql', '{\"from\": \"psql\"}'::jsonb)", task_id
    )
    (claim,) = await client.claim(Q, "w1", 30)
    assert await client.receive_message(Q, claim.run_id, "$recv:sql", "sql") == (
        "received",
        {"from": "psql"},
    )


# --- published state -----------------------------------------------------------------------------


async def test_a_task_publishes_its_state_and_anyone_reads_it(client: Client) -> None:
    task_id, run_id = await _running(client)
    assert await client.get_state(Q, task_id) == {}
    await client.set_state(Q, run_id, "stage", "download")
    await client.set_state(Q, run_id, "rows", 10)
    await client.set_state(Q, run_id, "stage", {"name": "upload", "pct": 40})
    assert await client.get_state(None, task_id) == {
        "rows": 10,
        "stage": {"name": "upload", "pct": 40},
    }
    assert await client.get_state(None, task_id, "rows") == {"rows": 10}
    assert await client.get_state(None, task_id, "missing") == {}

    await client.complete(Q, run_id, None)
    with pytest.raises(LeaseLost):  # a write of the run: fenced
        await client.set_state(Q, run_id, "stage", "late")
    assert (await client.get_state(None, task_id, "stage"))["stage"]["name"] == "upload"
    with pytest.raises(TaskNotFound):
        await client.get_state(None, uuid.uuid4())
    with pytest.raises(InvalidArgument, match="key"):
        await client.set_state(Q, run_id, "", 1)
