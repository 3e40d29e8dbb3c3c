"""EXPLAIN guards: the claim and reap scans are served by their partial indexes, not a table scan;
a tag filter by the tags' partial index.

The statements below mirror the scans inside ``durable.claim`` and ``durable.reap_runs``; the tag
filters are the functions' own, counted in the index's statistics.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.database import connection

from durable.client import Client
from durable.protocol.records import SpawnOptions

pytestmark = pytest.mark.anyio

_CLAIM_SCAN = """
explain (format json)
select r.run_id from durable.runs r
 where r.queue = $1 and r.state = 'pending' and r.available_at <= durable.now()
 order by r.priority desc, r.available_at, r.run_id
 limit 10
 for update skip locked
"""
_REAP_SCAN = """
explain (format json)
select r.run_id from durable.runs r
 where r.queue = $1 and r.state = 'running' and r.lease_expires_at <= durable.now()
 limit 100
"""


def _index_names(plan: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(plan, dict):
        if "Index Name" in plan:
            names.add(plan["Index Name"])
        for value in plan.values():
            names |= _index_names(value)
    elif isinstance(plan, list):
        for item in plan:
            names |= _index_names(item)
    return names


async def test_claim_and_reap_use_their_indexes(client: Client, dsn: str) -> None:
    for queue in ("busy", "other"):
        for _ in range(4):
            await client.spawn_many(queue, [("noop", i) for i in range(2_500)])
    await client.claim("busy", "w1", 60, 500)  # some running runs for the reap scan
    async with connection(dsn) as conn:
        await conn.execute("analyze durable.runs")
        claim_plan = json.loads(await conn.fetchval(_CLAIM_SCAN, "busy"))
        reap_plan = json.loads(await conn.fetchval(_REAP_SCAN, "busy"))
    assert "runs_claim" in _index_names(claim_plan)
    assert "runs_lease" in _index_names(reap_plan)


_TAGS_INDEX_SCANS = """
select idx_scan from pg_stat_user_indexes
 where schemaname = 'durable' and indexrelname = 'tasks_browse_tags'
"""


async def test_a_tag_filter_uses_the_tags_partial_index(client: Client, dsn: str) -> None:
    # the index holds only tasks with tags (0022): the filters must say tags <> '{}' to use it
    await client.spawn_many("q", [("noop", i) for i in range(5_000)])
    await client.spawn_many("q", [("noop", i, SpawnOptions(tags=["rare"])) for i in range(20)])
    async with connection(dsn) as conn:
        await conn.execute("analyze durable.tasks")
        for call in (
            "select count(*) from durable.list_tasks(p_tags => array['rare'])",
            "select durable.cancel_by(null, null, array['rare'])",
        ):
            await conn.execute("select pg_stat_force_next_flush()")
            before = await conn.fetchval(_TAGS_INDEX_SCANS)
            await conn.execute(call)
            await conn.execute("select pg_stat_force_next_flush()")
            await conn.execute("select pg_stat_clear_snapshot()")
            assert await conn.fetchval(_TAGS_INDEX_SCANS) > before, call
        cancelled = "select count(*) from durable.tasks where state = 'cancelled'"
        assert await conn.fetchval(cancelled) == 20


_INDEX_SCANS = """
select indexrelname, idx_scan from pg_stat_user_indexes
 where schemaname = 'durable' and indexrelname in ('runs_lease', 'runs_running_group')
"""


async def test_the_reap_uses_the_lease_index_under_stale_statistics(
    client: Client, dsn: str
) -> None:
    # statistics taken while every run was pending count no running runs: the reap must still
    # find the lapsed leases through runs_lease, not read every running run via runs_running_group
    await client.spawn_many("busy", [("noop", i) for i in range(5_000)])
    async with connection(dsn) as conn:
        await conn.execute("analyze durable.runs")
    await client.claim("busy", "w1", 60, 500)
    async with connection(dsn) as conn:
        await conn.execute("select pg_stat_force_next_flush()")
        before = {row["indexrelname"]: row["idx_scan"] for row in await conn.fetch(_INDEX_SCANS)}
        await conn.execute("select durable.reap_runs('busy', durable.now())")
        await conn.execute("select pg_stat_force_next_flush()")
        await conn.execute("select pg_stat_clear_snapshot()")
        after = {row["indexrelname"]: row["idx_scan"] for row in await conn.fetch(_INDEX_SCANS)}
    assert after["runs_lease"] > before["runs_lease"]
    assert after["runs_running_group"] == before["runs_running_group"]


async def test_start_reports_find_their_runs_by_key_under_stale_statistics(
    client: Client, dsn: str
) -> None:
    # the same statistics: recording starts must probe the reported runs by key, not read all
    # of runs_running_group once per report (or per reported run)
    await client.spawn_many("busy", [("noop", i) for i in range(5_000)])
    async with connection(dsn) as conn:
        await conn.execute("analyze durable.runs")
    await client.claim("busy", "w1", 60, 500)
    claimed = await client.claim("busy", "w1", 60, 20, slots=5)
    reserved = [claim.run_id for claim in claimed[5:]]
    async with connection(dsn) as conn:
        await conn.execute("select pg_stat_force_next_flush()")
        before = {row["indexrelname"]: row["idx_scan"] for row in await conn.fetch(_INDEX_SCANS)}
        await conn.execute("select durable.record_starts('w1', $1::uuid[])", reserved)
        await conn.execute("select pg_stat_force_next_flush()")
        await conn.execute("select pg_stat_clear_snapshot()")
        after = {row["indexrelname"]: row["idx_scan"] for row in await conn.fetch(_INDEX_SCANS)}
        still = await conn.fetchval(
            "select count(*) from durable.runs where run_id = any($1::uuid[]) and reserved",
            reserved,
        )
    assert len(reserved) == 15
    assert still == 0
    assert after["runs_running_group"] == before["runs_running_group"]
