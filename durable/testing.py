"""Fault injection for your own tests: prove that your tasks are idempotent.

``Harness(app)`` runs the app's tasks in-process, one claimed run at a time, through the same
executor a worker uses, and lets a test do what production does to a run:

* crash the process right after the run's K-th checkpoint committed (nothing more is written),
* let the run's lease lapse (its next write raises :class:`~durable.LeaseLost`, as a stalled
  worker's would),
* drop every database connection,
* move the database's clock forward (leases, retry backoffs and delays lapse without waiting),
* drain a queue.

The harness's clock is the real clock plus an offset that only :meth:`Harness.advance_clock` and
:meth:`Harness.expire_lease` move. It applies to the harness's own operations (claims, reaps, the
runs it executes, and :attr:`Harness.client`) through the session setting ``durable.fake_now``
that ``durable.now()`` reads; the app's client keeps the real clock, which is never ahead of the
harness's, so what the app spawns is claimable by the harness at once. See
``docs/guides/testing.md``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final

import anyio

from durable.app import Durable
from durable.client import Client
from durable.protocol.durations import seconds
from durable.protocol.errors import DatabaseUnavailable, UnknownTask, check_queue_name
from durable.protocol.log import get_logger
from durable.protocol.records import Claim, RunRecord, RunState, TaskRecord
from durable.protocol.store import Store
from durable.runtime.context import RunControl, run_fields
from durable.runtime.executor import DISCARD_TASK, execute, run_discard_hook
from durable.runtime.outcome import Outcome

__all__ = ["Harness", "RunOutcome"]

log = get_logger()

#: Connections of the harness's own pool (claims, checkpoints and outcomes run one at a time).
_POOL_SIZE: Final = 4
#: How far past a lease's expiry :meth:`Harness.expire_lease` moves the clock.
_PAST_LEASE: Final = timedelta(milliseconds=1)
#: How long :meth:`Harness.drop_connection` waits for terminated backends to go away.
_DROP_WAIT_S: Final = 10.0


class _Crash(BaseException):
    """Raised inside a run where the harness simulates the process dying; nothing is written.

    A ``BaseException``, so that a handler's ``except Exception`` cannot swallow the crash."""


@dataclass(slots=True)
class _Faults:
    """What to do to one run, and when: after its K-th checkpoint (0: before the handler)."""

    crash_after: int | None = None
    expire_lease_after: int | None = None
    drop_connection_after: int | None = None
    written: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOutcome:
    """What one run did in the harness, and its task as it stands afterwards.

    ``crashed``: the harness abandoned the run as if its process died (``crash_after_checkpoint``);
    in the database it still holds its lease until it lapses and a claim reaps it as ``crash``.
    ``lease_lost``: a write of the run was refused with ``LeaseLost`` and it wrote no outcome.
    ``checkpoints``: the steps whose checkpoint this run committed, in order (replayed steps
    are not written again, so they are not listed).
    """

    claim: Claim
    crashed: bool
    lease_lost: bool
    checkpoints: tuple[str, ...]
    task: TaskRecord

    @property
    def task_id(self) -> uuid.UUID:
        return self.claim.task_id

    @property
    def run_id(self) -> uuid.UUID:
        return self.claim.run_id

    @property
    def attempt(self) -> int:
        return self.claim.attempt

    @property
    def run(self) -> RunRecord:
        """This run's record (``state``, ``failure_reason``, ``error``, ...)."""
        return next(r for r in self.task.runs if r.run_id == self.claim.run_id)

    @property
    def state(self) -> RunState:
        """The run's state in the database: ``completed``, ``failed``, ``released``, or
        ``running`` for a crashed run or one that lost its lease (until it is reaped)."""
        return self.run.state

    @property
    def result(self) -> Any:
        """The task's result once it completed, else None."""
        return self.task.result

    @property
    def error(self) -> dict[str, Any] | None:
        """The run's error document (type, message, traceback) when it failed."""
        return self.run.error


class _ClockClient(Client):
    """A client on the harness's clock: its store is re-opened whenever the clock is set, with
    ``durable.fake_now`` in its connections' settings; the harness's checkpoint faults hook into
    :meth:`set_checkpoint`."""

    def __init__(self, harness: Harness, dsn: str) -> None:
        super().__init__(dsn, migrate=False, pool_size=_POOL_SIZE)
        self._harness = harness
        self._dsn_used = dsn
        self._clock_store: Store | None = None
        self._fake_now: datetime | None = None

    @property
    def store(self) -> Store:
        if self._clock_store is None:
            raise DatabaseUnavailable("the testing harness is closed — use `async with Harness`")
        return self._clock_store

    async def set_clock(self, fake_now: datetime | None) -> None:
        """Use ``fake_now`` as the database's time from now on (None: the real clock)."""
        if self._clock_store is not None and fake_now == self._fake_now:
            return
        settings = {} if fake_now is None else {"durable.fake_now": fake_now.isoformat()}
        store = await Store.open(
            self._dsn_used,
            min_size=1,
            max_size=_POOL_SIZE,
            migrate=False,
            server_settings=settings,
        )
        old, self._clock_store, self._fake_now = self._clock_store, store, fake_now
        if old is not None:
            with anyio.CancelScope(shield=True):
                await old.close()

    async def connect(self) -> None:
        if self._clock_store is None:
            await self.set_clock(None)

    async def close(self) -> None:
        store, self._clock_store = self._clock_store, None
        if store is not None:
            with anyio.CancelScope(shield=True):
                await store.close()

    async def set_checkpoint(
        self,
        queue: str,
        run_id: uuid.UUID,
        step: str,
        value: Any,
        extend_by: float | timedelta | None = None,
    ) -> None:
        await super().set_checkpoint(queue, run_id, step, value, extend_by)
        faults = self._harness._faults.get(run_id)
        if faults is not None:
            faults.written.append(step)
            await self._harness._inject(run_id, faults, len(faults.written))


class Harness:
    """``async with Harness(app) as harness:`` run the app's tasks in-process, with faults.

    The harness enters the app (connecting it if needed) and opens a small pool of its own on
    the harness's clock. ``claim_timeout`` is the lease each of its claims takes; it claims as
    ``worker_id`` (default ``durable-testing-<hex>``), a worker that never heartbeats, so once a
    lease of it lapses the worker counts as gone and a claim reaps the run as ``crash``. The
    harness does not renew leases: a run must finish within ``claim_timeout`` unless it
    checkpoints or calls ``ctx.heartbeat(extend_by=...)``.
    """

    def __init__(
        self,
        app: Durable,
        *,
        claim_timeout: float | timedelta = 60.0,
        worker_id: str | None = None,
    ) -> None:
        lease = seconds(claim_timeout, what="claim_timeout")
        if lease is None or lease <= 0:
            raise ValueError("claim_timeout must be positive")
        self.app = app
        self.claim_timeout = lease
        self.worker_id = worker_id or f"durable-testing-{uuid.uuid4().hex[:8]}"
        self._offset = timedelta()
        self._client: _ClockClient | None = None
        self._stack = contextlib.AsyncExitStack()
        self._faults: dict[uuid.UUID, _Faults] = {}
        self._claims: dict[uuid.UUID, Claim] = {}

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Harness:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.app)
            client = _ClockClient(self, self.app.client.dsn)
            await stack.enter_async_context(client)
            self._client = client
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client = None
        await self._stack.aclose()

    @property
    def client(self) -> Client:
        """A low-level client on the harness's clock (``get_task``, ``claim``, ...)."""
        if self._client is None:
            raise DatabaseUnavailable("the testing harness is closed — use `async with Harness`")
        return self._client

    # --- the clock ------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The harness's clock: this machine's time plus every advance so far."""
        return datetime.now(UTC) + self._offset

    async def advance_clock(self, by: float | timedelta) -> datetime:
        """Move the harness's clock forward by ``by`` seconds; return the new time.

        From then on the harness's operations see the database's time that much later: leases,
        retry backoffs, ``delay`` and worker liveness lapse as if the time had passed.
        """
        step = seconds(by, what="by")
        if step is None or step < 0:
            raise ValueError("the clock only moves forward: `by` must be >= 0")
        self._offset += timedelta(seconds=step)
        await self._sync_clock()
        return self.now()

    async def expire_lease(self, run_id: uuid.UUID) -> None:
        """Move the clock just past the lease of ``run_id`` (a run this harness claimed).

        Its next write raises :class:`~durable.LeaseLost`, and the next claim reaps it
        (as ``crash``: the harness's worker never heartbeats, so its liveness lapsed too).
        """
        claim = self._claims.get(run_id)
        if claim is None:
            raise ValueError(f"run {run_id} was not claimed by this harness")
        record = await self.client.get_task(claim.queue, claim.task_id)
        run = next(r for r in record.runs if r.run_id == run_id)
        if run.state is not RunState.RUNNING or run.lease_expires_at is None:
            return  # the run already ended: there is no lease left to expire
        target = run.lease_expires_at + _PAST_LEASE
        if target > self.now():
            self._offset += target - self.now()
        await self._sync_clock()

    async def _sync_clock(self) -> None:
        """Point the harness's connections at its clock as of now (the real clock at offset 0)."""
        client = self._require_client()
        await client.set_clock(None if not self._offset else self.now())

    def _require_client(self) -> _ClockClient:
        if self._client is None:
            raise DatabaseUnavailable("the testing harness is closed — use `async with Harness`")
        return self._client

    # --- runs -----------------------------------------------------------------------------------

    async def reap(self, queue: str | None = None) -> None:
        """Reap the lapsed leases of ``queue`` (default: every queue of the app's tasks) now,
        without claiming anything: what the next claim of any worker would do first."""
        client = self._require_client()
        await self._sync_clock()
        for name in self._queues(queue):
            await client.claim(name, self.worker_id, self.claim_timeout, 0)

    async def run_once(
        self,
        queue: str | None = None,
        *,
        crash_after_checkpoint: int | None = None,
        expire_lease_after_checkpoint: int | None = None,
        drop_connection_after_checkpoint: int | None = None,
    ) -> RunOutcome | None:
        """Claim one run that is claimable now and execute it in-process; None if there is none.

        ``queue`` defaults to every queue of the app's tasks, in name order. Claiming first
        reaps lapsed leases, as any claim does. Faults, each after the run's K-th checkpoint
        committed (0: right after the claim, before the handler starts):

        * ``crash_after_checkpoint=K`` — the process dies: the handler stops there (a
          ``BaseException`` raised out of ``ctx.step``) and no outcome is written;
        * ``expire_lease_after_checkpoint=K`` — the run's lease lapses (the clock moves past
          it) while the handler goes on: its next write raises ``LeaseLost`` and it writes no
          outcome, like a worker that stalled longer than its lease;
        * ``drop_connection_after_checkpoint=K`` — every connection to the database is dropped
          (:meth:`drop_connection`) while the handler goes on.
        """
        for k in (crash_after_checkpoint, expire_lease_after_checkpoint,
                  drop_connection_after_checkpoint):  # fmt: skip
            if k is not None and k < 0:
                raise ValueError("a checkpoint count must be >= 0")
        client = self._require_client()
        await self._sync_clock()
        claim = await self._claim_one(client, queue)
        if claim is None:
            return None
        if claim.task_name == DISCARD_TASK:  # an ended task's on_discard hook, as a worker runs it
            return await self._run_discard_hook(client, claim)
        definition = self.app.registry.get(claim.task_name)
        if definition is None:
            await client.schedule_run(claim.queue, claim.run_id, 0)
            raise UnknownTask(claim.task_name)
        faults = _Faults(
            crash_after=crash_after_checkpoint,
            expire_lease_after=expire_lease_after_checkpoint,
            drop_connection_after=drop_connection_after_checkpoint,
        )
        control = RunControl(claim)
        self._faults[claim.run_id] = faults
        crashed = False
        try:
            await self._inject(claim.run_id, faults, 0)
            await execute(client, definition, control)
        except* _Crash:
            crashed = True
        finally:
            del self._faults[claim.run_id]
        if crashed:
            log.info("run.abandoned", reason="crash", worker=self.worker_id, **run_fields(claim))
        return RunOutcome(
            claim=claim,
            crashed=crashed,
            lease_lost=control.stop_reason is Outcome.LEASE_LOST,
            checkpoints=tuple(faults.written),
            task=await client.get_task(claim.queue, claim.task_id),
        )

    async def _run_discard_hook(self, client: Client, claim: Claim) -> RunOutcome:
        """Call the hook of the task a ``durable.on_discard`` claim names (``UnknownTask`` when
        the app does not know that task: the claim goes back to its queue)."""
        if not await run_discard_hook(client, self.app.registry, RunControl(claim)):
            await client.schedule_run(claim.queue, claim.run_id, 0)
            ended = await client.get_task(None, uuid.UUID(claim.params["task_id"]))
            raise UnknownTask(ended.task_name)
        return RunOutcome(
            claim=claim,
            crashed=False,
            lease_lost=False,
            checkpoints=(),
            task=await client.get_task(claim.queue, claim.task_id),
        )

    async def drain(self, queue: str | None = None, *, max_runs: int = 1000) -> list[RunOutcome]:
        """Run claimable runs one by one until none is claimable now; return their outcomes.

        Retries due later (per their backoff) wait for :meth:`advance_clock`. Raises
        ``RuntimeError`` after ``max_runs`` runs, which means a task that never ends.
        """
        outcomes: list[RunOutcome] = []
        while (outcome := await self.run_once(queue)) is not None:
            outcomes.append(outcome)
            if len(outcomes) >= max_runs:
                raise RuntimeError(f"drain ran {max_runs} runs and the queue is not empty")
        return outcomes

    async def drop_connection(self) -> int:
        """Terminate every other connection to the app's database (the app's pool, its
        listeners, the harness's pool), as a failover or a network cut would; return how many.

        The pools reconnect on their next use; a query already in flight fails with
        :class:`~durable.DatabaseUnavailable`. Needs the right to ``pg_terminate_backend``
        those sessions (a superuser, the same role, or ``pg_signal_backend``).
        """
        dropped = await self.client.store.terminate_other_sessions(_DROP_WAIT_S)
        # let the pools see their sockets closed, so that their next use reconnects
        await anyio.sleep(0.01)
        log.info("testing.connections_dropped", count=dropped)
        return dropped

    # --- internals ------------------------------------------------------------------------------

    def _queues(self, queue: str | None) -> Sequence[str]:
        if queue is not None:
            return [check_queue_name(queue)]
        names = sorted({d.queue for d in self.app.registry.values()})
        return names or [self.app.default_queue]

    async def _claim_one(self, client: Client, queue: str | None) -> Claim | None:
        for name in self._queues(queue):
            claims = await client.claim(
                name, self.worker_id, self.claim_timeout, 1, code_version=self.app.version
            )
            if claims:
                claim = claims[0]
                self._claims[claim.run_id] = claim
                log.info("run.claimed", worker=self.worker_id, **run_fields(claim))
                return claim
        return None

    async def _inject(self, run_id: uuid.UUID, faults: _Faults, count: int) -> None:
        """Apply the faults due after the run's ``count``-th checkpoint."""
        if faults.drop_connection_after == count:
            await self.drop_connection()
        if faults.expire_lease_after == count:
            await self.expire_lease(run_id)
        if faults.crash_after == count:
            raise _Crash
