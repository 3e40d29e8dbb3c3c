"""Versioning in flight through the protocol: ``decide_patch`` (what ``ctx.patched`` calls) and the
code version each claim records, driven through ``Client`` against a real PostgreSQL."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from support.waiting import wait_for

from durable.client import Client
from durable.protocol.errors import InvalidArgument, LeaseLost

pytestmark = pytest.mark.anyio

Q = "versions"


async def _running(
    client: Client, *, code_version: str | None = None
) -> tuple[uuid.UUID, uuid.UUID]:
    info = await client.spawn(Q, "job", None)
    (claim,) = await client.claim(Q, "w1", 30, code_version=code_version)
    return info.task_id, claim.run_id


async def _step(client: Client, run_id: uuid.UUID, name: str) -> None:
    await client.set_checkpoint(Q, run_id, name, name.upper())


async def test_a_task_at_the_end_of_its_history_takes_the_new_path(client: Client) -> None:
    task_id, run_id = await _running(client)
    await _step(client, run_id, "a")
    assert await client.decide_patch(Q, run_id, "$patch:fix", ["a", "$patch:fix"]) is True
    # decided once: recorded, whatever the history says later
    await _step(client, run_id, "b")
    assert await client.decide_patch(Q, run_id, "$patch:fix", []) is True
    checkpoints = {c.step_name: c.value for c in await client.get_checkpoints(Q, task_id)}
    assert checkpoints == {"a": "A", "$patch:fix": True, "b": "B"}


async def test_a_task_whose_history_goes_beyond_the_point_keeps_the_old_path(
    client: Client,
) -> None:
    task_id, run_id = await _running(client)
    for name in ("a", "b", "c"):
        await _step(client, run_id, name)
    # the new code's replay passed a, and finds b and c beyond: recorded without the patch
    assert await client.decide_patch(Q, run_id, "$patch:fix", ["a"]) is False
    assert await client.decide_patch(Q, run_id, "$patch:fix", ["a", "b", "c"]) is False
    assert {c.step_name: c.value for c in await client.get_checkpoints(Q, task_id)}[
        "$patch:fix"
    ] is False


async def test_a_wait_beyond_the_point_is_history_too(client: Client) -> None:
    task_id, run_id = await _running(client)
    await _step(client, run_id, "a")
    # the old code parked on an event after a; its timeout woke the task, and the new code
    # replays: the wait, which records nothing until it is asked again, is beyond the patch
    assert await client.await_event(Q, run_id, "$event:ok", "ok", timeout=0.1) == (
        "suspended",
        None,
    )

    async def due() -> uuid.UUID | None:
        claims = await client.claim(Q, "w1", 30)
        return claims[0].run_id if claims else None

    woken = await wait_for(due, timeout=10, what="the wait's timeout")
    assert [w["step_name"] for w in (await client.get_task(Q, task_id)).waiting_for] == [
        "$event:ok"
    ]
    assert await client.decide_patch(Q, woken, "$patch:fix", ["a"]) is False


async def test_other_patches_decisions_are_not_history(client: Client) -> None:
    _, run_id = await _running(client)
    await _step(client, run_id, "a")
    assert await client.decide_patch(Q, run_id, "$patch:later", ["a", "$patch:later"]) is True
    # a patch the code retired left its decision behind: it does not hold a new patch back
    assert await client.decide_patch(Q, run_id, "$patch:new", ["a", "$patch:new"]) is True


async def test_a_patch_refuses_bad_input_and_a_lost_lease(client: Client) -> None:
    task_id, run_id = await _running(client)
    for bad in ("fix", "$patch:", ""):
        with pytest.raises(InvalidArgument, match=r"\$patch:<change id>"):
            await client.decide_patch(Q, run_id, bad, [])
    await client.complete(Q, run_id, None)
    with pytest.raises(LeaseLost):
        await client.decide_patch(Q, run_id, "$patch:fix", [])
    assert await client.get_checkpoints(Q, task_id) == []


# --- the code version of each run ---------------------------------------------------------------


async def test_each_claim_records_the_code_version_on_its_runs(
    client: Client, raw: asyncpg.Connection
) -> None:
    task_id, run_id = await _running(client, code_version="v1")
    await client.schedule_run(Q, run_id, 0)
    (claim,) = await client.claim(Q, "w2", 30, code_version="2024-06-01.3")
    await client.schedule_run(Q, claim.run_id, 0)
    # a caller of the old signature (four arguments) still resolves, and records no version
    assert await raw.fetchval("select count(*) from durable.claim($1, 'w3', 30, 1)", Q) == 1
    runs = (await client.get_task(Q, task_id)).runs
    assert [r.code_version for r in runs] == ["v1", "2024-06-01.3", None]
    with pytest.raises(InvalidArgument, match="code version"):
        await client.claim(Q, "w1", 30, code_version="v" * 256)
