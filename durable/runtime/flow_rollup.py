"""The flow over time, kept by the workers: every worker adds the runs that ended to the
per-minute rollup the console charts (``Client.roll_up_flow``), every ``interval_s`` seconds
(jittered). The rollup skips a call while another worker's holds it, so many workers cost one
rollup at a time; each call reads only the runs that ended since the last one.
"""

from __future__ import annotations

import random

import anyio

from durable.client import Client
from durable.protocol.errors import DurableError
from durable.protocol.log import get_logger
from durable.runtime.deadlines import within

log = get_logger()

#: How often a worker rolls the flow up (the console reads the newer runs live meanwhile).
ROLLUP_INTERVAL_S = 10.0


async def run_flow_rollup(
    client: Client, db_timeout: float, *, interval_s: float = ROLLUP_INTERVAL_S
) -> None:
    """Roll the flow up every ``interval_s`` seconds (jittered), until cancelled; a rollup that
    is behind (no worker ran for a while) catches up an hour of runs per call, back to back."""
    while True:
        await anyio.sleep(interval_s * random.uniform(0.5, 1.0))  # jitter: workers spread out
        try:
            while await within(db_timeout, client.roll_up_flow()):
                pass  # more to catch up
        except DurableError as exc:
            log.warning("flow.rollup_failed", error=str(exc))
