"""EXPLAIN guards: the claim and reap scans are served by their partial indexes, not a table scan.

The statements below mirror the scans inside ``durable.claim`` and ``durable.reap_runs``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.database import connection

from durable.client import Client

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
