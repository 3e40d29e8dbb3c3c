"""Keeping runs and the worker alive.

* :func:`renew_leases`: one ``extend_claims`` statement per interval extends every lease this
  worker holds and its liveness, whatever the concurrency; runs reported lost are stopped, and so
  are runs whose lease must have lapsed because renewal has failed for longer than the lease
  (the database is down or cut off: other workers reap them, this one must not write for them).
* :func:`supervise_heartbeats`: a task declared with ``heartbeat_timeout=S`` that goes S seconds
  without ``ctx.heartbeat()`` or a checkpoint is stopped (recorded ``heartbeat_timeout``).
* :class:`StartReports`: the runs claimed ahead of a free slot whose handlers started since the
  worker last told the database; the report rides on the next claim or lease renewal (no
  statement of its own), and until then the run is reserved: if the worker dies, its task goes
  back without spending an attempt (RESERVED in ``sql/protocol/00_model.sql``).
* :class:`LivenessThread`: the worker's liveness from a thread with its own connection, so a
  handler that blocks the event loop lets its lease lapse (reaped as ``heartbeat_timeout``)
  without the worker looking dead (which would read as ``crash``).

Every call here has a deadline (:mod:`durable.runtime.deadlines`).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Mapping

import anyio

from durable.client import Client
from durable.protocol.errors import DurableError
from durable.protocol.log import get_logger
from durable.protocol.store import Store
from durable.runtime.context import RunControl, run_fields
from durable.runtime.deadlines import CLOSE_TIMEOUT_S, db_timeout, within
from durable.runtime.outcome import Outcome

log = get_logger()

SUPERVISE_TICK_S = 0.1


class StartReports:
    """The runs of a worker whose handlers started and that the database does not know of yet:
    until it does, a run is reserved (its worker's death spends no attempt). Whoever sends a
    statement that carries the report (a claim, a lease renewal) takes :meth:`pending` and, once
    the statement succeeded, calls :meth:`reported`."""

    def __init__(self) -> None:
        self._pending: set[uuid.UUID] = set()

    def started(self, run_id: uuid.UUID) -> None:
        self._pending.add(run_id)

    def ended(self, run_id: uuid.UUID) -> None:
        """Its outcome is written (a completion or failure is a start in itself)."""
        self._pending.discard(run_id)

    def pending(self) -> list[uuid.UUID]:
        return list(self._pending)

    def reported(self, run_ids: list[uuid.UUID]) -> None:
        self._pending.difference_update(run_ids)


async def renew_leases(
    client: Client,
    worker_id: str,
    active: Mapping[uuid.UUID, RunControl],
    claim_timeout: float,
    interval: float,
    starts: StartReports | None = None,
) -> None:
    """Forever: extend all leases of ``active`` and the worker's liveness in one statement,
    which also records how many of the worker's slots run a handler and how many runs wait
    claimed ahead (the console's workers page), and reports the handlers that started
    (``starts``).

    A lease is extended to the database's ``now() + claim_timeout``; the statement runs before it
    returns, so a lease is surely gone ``claim_timeout`` after the last renewal returned (or after
    the run was first seen, when it was claimed later). Runs past that are stopped as
    ``lease_lost``: another worker reaps and retries them, and nothing of theirs is written.

    A run whose handler returned keeps its lease renewed until its outcome is written: a write
    that meets an unreachable database is tried again while the lease holds (each renewal moves
    the run's ``lease_until`` to the renewal's send time plus ``claim_timeout``).
    """
    renewed_at = time.monotonic()
    first_seen: dict[uuid.UUID, float] = {}
    while True:
        await anyio.sleep(interval)
        now = time.monotonic()
        run_ids = list(active)  # a finished run too: its outcome may still be being written
        first_seen = {run_id: first_seen.get(run_id, now) for run_id in run_ids}
        busy, ahead = slots_in_use(active)
        started = starts.pending() if starts is not None else []
        try:
            lost = await within(
                db_timeout(claim_timeout),
                client.extend_claims(
                    worker_id, run_ids, claim_timeout, busy=busy, ahead=ahead, started=started
                ),
            )
        except DurableError as exc:
            log.warning("heartbeat.failed", worker=worker_id, error=str(exc))
            _stop_lapsed(worker_id, active, first_seen, renewed_at, claim_timeout)
            continue
        if starts is not None:
            starts.reported(started)
        renewed_at = time.monotonic()
        lost_ids = set(lost)
        for run_id in run_ids:
            control = active.get(run_id)
            if control is None:
                continue
            if run_id in lost_ids:
                control.stop(Outcome.LEASE_LOST)  # a finished run's outcome write gives up
            else:
                control.renewed(now + claim_timeout)


def slots_in_use(active: Mapping[uuid.UUID, RunControl]) -> tuple[int, int]:
    """How many of ``active`` run a handler now, and how many wait claimed ahead of a slot."""
    busy = ahead = 0
    for control in active.values():
        if control.finished:
            continue
        if control.started:
            busy += 1
        else:
            ahead += 1
    return busy, ahead


def _stop_lapsed(
    worker_id: str,
    active: Mapping[uuid.UUID, RunControl],
    first_seen: Mapping[uuid.UUID, float],
    renewed_at: float,
    claim_timeout: float,
) -> None:
    now = time.monotonic()
    for run_id, seen in first_seen.items():
        control = active.get(run_id)
        if control is None or control.finished or control.stop_reason is not None:
            continue
        if now - max(renewed_at, seen) > claim_timeout:
            log.warning(
                "lease.lapsed",
                **run_fields(control.claim),
                worker=worker_id,
                unrenewed_s=round(now - renewed_at, 3),
            )
            control.stop(Outcome.LEASE_LOST)


async def supervise_heartbeats(active: Mapping[uuid.UUID, RunControl]) -> None:
    """Forever: stop runs whose task-level heartbeat timeout passed."""
    while True:
        await anyio.sleep(SUPERVISE_TICK_S)
        now = time.monotonic()
        for control in list(active.values()):
            limit = control.claim.heartbeat_timeout
            if limit is None or not control.started or control.finished:
                continue  # a run waiting for a handler slot has no heartbeat to miss yet
            if now - control.last_beat > limit:
                control.stop(Outcome.HEARTBEAT_TIMEOUT)


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
        deadline = db_timeout(self._ttl)
        try:
            while not self._stop.is_set():
                try:
                    if store is None:
                        store = await within(deadline, self._client.open_side_store())
                    await within(deadline, store.worker_heartbeat(self._worker_id, self._ttl))
                except DurableError as exc:
                    log.warning("liveness.failed", worker=self._worker_id, error=str(exc))
                    if store is not None:
                        await store.close(timeout=CLOSE_TIMEOUT_S)
                        store = None
                # blocking here is fine: nothing else runs on this thread's loop
                self._stop.wait(self._interval)
        finally:
            if store is not None:
                await store.close(timeout=CLOSE_TIMEOUT_S)
