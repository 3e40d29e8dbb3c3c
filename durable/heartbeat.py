"""Keeping runs and the worker alive.

* :func:`renew_leases`: one ``extend_claims`` statement per interval extends every lease this
  worker holds and its liveness, whatever the concurrency; runs reported lost are stopped.
* :func:`supervise_heartbeats`: a task declared with ``heartbeat_timeout=S`` that goes S seconds
  without ``ctx.heartbeat()`` or a checkpoint is stopped (recorded ``heartbeat_timeout``).
* :class:`LivenessThread`: the worker's liveness from a thread with its own connection, so a
  handler that blocks the event loop lets its lease lapse (reaped as ``heartbeat_timeout``)
  without the worker looking dead (which would read as ``crash``).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Mapping

import anyio
import structlog

from durable.client import Client
from durable.context import RunControl
from durable.errors import DurableError
from durable.store import Store

log = structlog.get_logger("durable")

SUPERVISE_TICK_S = 0.1


async def renew_leases(
    client: Client,
    worker_id: str,
    active: Mapping[uuid.UUID, RunControl],
    claim_timeout: float,
    interval: float,
) -> None:
    """Forever: extend all leases of ``active`` and the worker's liveness in one statement."""
    while True:
        await anyio.sleep(interval)
        run_ids = [run_id for run_id, control in active.items() if not control.finished]
        try:
            lost = await client.extend_claims(worker_id, run_ids, claim_timeout)
        except DurableError as exc:
            log.warning("heartbeat.failed", worker=worker_id, error=str(exc))
            continue
        for run_id in lost:
            control = active.get(run_id)
            if control is not None and not control.finished:
                control.stop("lease_lost")


async def supervise_heartbeats(active: Mapping[uuid.UUID, RunControl]) -> None:
    """Forever: stop runs whose task-level heartbeat timeout passed."""
    while True:
        await anyio.sleep(SUPERVISE_TICK_S)
        now = time.monotonic()
        for control in list(active.values()):
            limit = control.claim.heartbeat_timeout
            if limit is not None and not control.finished and now - control.last_beat > limit:
                control.stop("heartbeat_timeout")


class LivenessThread:
    """Renews ``workers.expires_at`` every ``interval`` from a thread of its own."""

    def __init__(self, client: Client, worker_id: str, ttl: float, interval: float) -> None:
        self._client = client
        self._worker_id = worker_id
        self._ttl = ttl
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name=f"durable-liveness-{worker_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _main(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        store: Store | None = None
        try:
            while not self._stop.is_set():
                try:
                    if store is None:
                        store = await self._client.open_side_store()
                    await store.worker_heartbeat(self._worker_id, self._ttl)
                except DurableError as exc:
                    log.warning("liveness.failed", worker=self._worker_id, error=str(exc))
                    if store is not None:
                        await store.close()
                        store = None
                # blocking here is fine: nothing else runs on this thread's loop
                self._stop.wait(self._interval)
        finally:
            if store is not None:
                await store.close()
