"""The worker pool: claim loop, slots, LISTEN wake-up, lease renewal, drain.

One worker claims in batches up to its free slots across its queues, wakes on NOTIFY when work
arrives (polling as the fallback), runs each claim in its own cancel scope (:mod:`executor`), and
keeps leases and liveness alive (:mod:`heartbeat`). ``drain()`` (SIGTERM/SIGINT from the CLI):
stop claiming, let running tasks finish within ``grace_period``, then release the rest so another
worker can take them at once.

When the database goes away (a restart, terminated backends, a network cut) the worker stays up:
every call has a deadline, claiming backs off exponentially (capped, with jitter) and the LISTEN
connection is re-opened the same way, logging ``db.unavailable`` per failed attempt and
``db.reconnected`` once it is back. Runs whose leases lapse meanwhile are stopped (see
:func:`heartbeat.renew_leases`); other workers reap and retry them.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TypedDict

import anyio

from durable.protocol.errors import (
    DatabaseUnavailable,
    DurableError,
    InvalidArgument,
    check_queue_name,
)
from durable.protocol.log import get_logger
from durable.protocol.records import Claim
from durable.protocol.store import CHANNEL_WORK, Listener
from durable.runtime.claim_ahead import ClaimAhead
from durable.runtime.context import RunControl, cancel_scope, run_fields
from durable.runtime.cron import REFRESH_S, SchedulerClock, run_cron_scheduler
from durable.runtime.deadlines import CLOSE_TIMEOUT_S, ReconnectBackoff, db_timeout, within
from durable.runtime.executor import DISCARD_TASK, execute, run_discard_hook
from durable.runtime.flow_rollup import run_flow_rollup
from durable.runtime.group_commit import RunWrites
from durable.runtime.history import HistoryKeeper
from durable.runtime.instruments import (
    WorkerMetrics,
    WorkerStatus,
    combine_observers,
    run_observers,
    worker_metrics,
)
from durable.runtime.leases import (
    LivenessThread,
    StartReports,
    renew_leases,
    slots_in_use,
    supervise_heartbeats,
)
from durable.runtime.outcome import Outcome
from durable.runtime.registry import Registry
from durable.runtime.retention import run_retention

log = get_logger()

#: With a backlog and few free slots, how long to wait for more slots to free before claiming.
CLAIM_GATHER_S = 0.005
#: How often the LISTEN connection is checked for having been lost.
LISTENER_CHECK_S = 0.5


class WorkerKwargs(TypedDict, total=False):
    """The worker options ``run_worker`` takes by keyword besides ``queues``, ``concurrency`` and
    ``claim_timeout`` (see :class:`WorkerOptions`, which holds their defaults); a test holds the
    two equal."""

    poll_interval: float
    grace_period: float
    unknown_task_defer: float
    worker_id: str | None
    metrics_port: int | None
    metrics_host: str
    metrics_interval: float
    cron_clock: SchedulerClock | None
    cron_refresh: float
    history_interval: float
    history_delay: float
    history_batch: int
    vacuum_interval: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerOptions:
    """How a worker runs; the one place that holds the defaults (``run_worker`` and ``durable
    worker`` take them from here)."""

    queues: tuple[str, ...]
    concurrency: int = 10
    claim_timeout: float = 60.0
    poll_interval: float = 2.0
    grace_period: float = 30.0
    unknown_task_defer: float = 60.0
    worker_id: str | None = None
    #: Serve Prometheus metrics on this port (0: any free one); None: no metrics, nothing
    #: imported. The host defaults to the loopback interface: opening the metrics to the
    #: network (``0.0.0.0``) is the operator's choice.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_interval: float = 5.0
    #: The cron scheduler's clock; None: the database's time (tests pass a clock they move).
    cron_clock: SchedulerClock | None = None
    #: How often the cron scheduler reads the schedules again when no slot comes sooner.
    cron_refresh: float = REFRESH_S
    #: Hot and cold (durable/runtime/history.py): every ``history_interval`` seconds the worker
    #: moves tasks that ended more than ``history_delay`` seconds ago to history, up to
    #: ``history_batch`` per statement, and after a move vacuums the hot tables at most every
    #: ``vacuum_interval`` seconds when its role owns them.
    history_interval: float = 1.0
    history_delay: float = 10.0
    history_batch: int = 5000
    vacuum_interval: float = 10.0

    def __post_init__(self) -> None:
        for queue in self.queues:
            check_queue_name(queue)
        if not self.queues:
            raise ValueError("a worker needs at least one queue")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.claim_timeout <= 0 or self.poll_interval <= 0 or self.grace_period < 0:
            raise ValueError("claim_timeout and poll_interval must be positive, grace_period >= 0")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be between 0 and 65535")
        if self.metrics_interval <= 0:
            raise ValueError("metrics_interval must be positive")
        if self.cron_refresh <= 0:
            raise ValueError("cron_refresh must be positive")
        if self.history_interval <= 0 or self.vacuum_interval <= 0 or self.history_delay < 0:
            raise ValueError(
                "history_interval and vacuum_interval must be positive, history_delay >= 0"
            )
        if self.history_batch < 1:
            raise ValueError("history_batch must be at least 1")


class Worker:
    """``await Worker(registry, options).run()`` until cancelled or drained: runs the tasks of
    ``registry`` (a :class:`Durable`'s ``app.registry``), through the registry's client."""

    def __init__(self, registry: Registry, options: WorkerOptions) -> None:
        self.registry = registry
        self.client = registry.client
        self.options = options
        self.worker_id = options.worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        #: Recorded on every run this worker claims (``Durable(version=...)`` or derived).
        self.code_version = registry.code_version
        self.active: dict[uuid.UUID, RunControl] = {}
        # a handler slot per concurrency unit: claimed-ahead runs wait here for one
        self._handler_slots = asyncio.Semaphore(options.concurrency)
        self._ahead = ClaimAhead(limit=options.concurrency)
        self._wake = anyio.Event()
        self._slot_freed = anyio.Event()
        self._draining = anyio.Event()
        self._retry_now = anyio.Event()  # cuts a reconnect backoff short (drain, database back)
        # cuts the LISTEN reconnect's backoff short (database back)
        self._listen_now = anyio.Event()
        self._unknown_logged: set[str] = set()
        # task names this worker's code does not know, skipped by its claims until (monotonic)
        self._deferred: dict[str, float] = {}
        # handlers started that the database does not know of yet (their runs are reserved)
        self._starts = StartReports()
        self._listener: Listener | None = None
        self._claiming = False  # the claim loop runs
        self._database_ok = True  # the last claim (or LISTEN) reached the database
        self._database_errors: dict[str, int] = {}  # failed database calls, by what was done
        self._db_timeout = db_timeout(options.claim_timeout)
        self._writes = RunWrites(
            self.client, timeout_s=self._db_timeout, lease_left=self._lease_left
        )
        self.metrics: WorkerMetrics | None = None
        if options.metrics_port is not None:
            self.metrics = worker_metrics(
                options.queues,
                options.metrics_host,
                options.metrics_port,
                options.metrics_interval,
                [(d.queue, d.name) for d in registry.definitions_on(options.queues)],
            )
            if self.metrics is None:
                raise InvalidArgument(
                    "a metrics port needs durable's metrics — pip install 'durable[metrics]'"
                )
        # what watches each run (metrics, tracing); None: nothing is called per run
        self._observer = combine_observers(self.metrics, *run_observers())

    @property
    def draining(self) -> bool:
        """Whether the worker drains: it claims nothing more and lets its running tasks finish."""
        return self._draining.is_set()

    def drain(self, *, force: bool = False) -> None:
        """Stop claiming; running tasks get ``grace_period`` to finish, then are released.

        With ``force`` they are released at once.
        """
        log.info("worker.draining", worker=self.worker_id, running=len(self.active), force=force)
        self._draining.set()
        self._retry_now.set()
        self._wake.set()
        self._slot_freed.set()
        for control in list(self.active.values()):
            if force or not control.started:  # a claimed-ahead run goes back at once
                control.stop(Outcome.RELEASED)

    def status(self) -> WorkerStatus:
        """This worker now: slots, draining, database, claiming (its metrics and health)."""
        busy, ahead = slots_in_use(self.active)
        return WorkerStatus(
            worker_id=self.worker_id,
            concurrency=self.options.concurrency,
            busy=busy,
            claimed_ahead=ahead,
            draining=self.draining,
            database_ok=self._database_ok,
            claiming=self._claiming,
            database_errors=dict(self._database_errors),
        )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled, or until a drain ends: register, claim and run tasks, renew
        leases, fire cron slots, prune. Start it with ``await tg.start(worker.run)`` to get
        control back once it claims (``app.run_worker`` does all of it); database outages are
        retried with backoff.
        """
        opts = self.options
        client = self.client
        ttl = opts.claim_timeout
        await client.register_worker(
            self.worker_id,
            socket.gethostname(),
            os.getpid(),
            opts.queues,
            ttl,
            concurrency=opts.concurrency,
        )
        await self._record_limits()
        liveness = LivenessThread(client, self.worker_id, ttl, interval=max(ttl / 4, 0.05))
        liveness.start()
        self._listener = await client.listen({CHANNEL_WORK: self._on_work})
        log.info(
            "worker.started",
            worker=self.worker_id,
            queues=list(opts.queues),
            concurrency=opts.concurrency,
            code_version=self.code_version,
        )
        try:
            if self.metrics is not None:
                await self.metrics.listen()  # a port in use fails here, not in the task group
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    renew_leases,
                    client,
                    self.worker_id,
                    self.active,
                    ttl,
                    max(ttl / 3, 0.05),
                    self._starts,
                )
                tg.start_soon(supervise_heartbeats, self.active)
                tg.start_soon(self._keep_listening)
                tg.start_soon(
                    functools.partial(
                        run_cron_scheduler,
                        client,
                        [job for job in self.registry.crons if job.queue in opts.queues],
                        opts.queues,
                        clock=opts.cron_clock,
                        refresh_s=opts.cron_refresh,
                    )
                )
                if rules := self.registry.prune_rules():
                    tg.start_soon(run_retention, client, rules, self.registry.retention_interval)
                tg.start_soon(run_flow_rollup, client, self._db_timeout)
                tg.start_soon(
                    HistoryKeeper(
                        client,
                        self._db_timeout,
                        interval_s=opts.history_interval,
                        vacuum_interval_s=opts.vacuum_interval,
                        batch=opts.history_batch,
                        min_age_s=opts.history_delay,
                    ).run
                )
                await tg.start(self._writes.run)
                if self.metrics is not None:
                    await tg.start(self.metrics.run, client, self._db_timeout, self.status)
                task_status.started()
                # A fixed set of runner tasks takes claims from a queue: no task per run. (An
                # asyncio queue: its get() costs nothing when a claim is waiting; durable runs on
                # asyncio only, as asyncpg does.)
                # as many as runs can be active: handlers and runs claimed ahead, plus up to
                # 2 x concurrency runs writing their outcome (see _free_slots)
                runners = 3 * opts.concurrency + self._ahead.limit
                claimed: asyncio.Queue[RunControl | None] = asyncio.Queue()
                async with anyio.create_task_group() as runs:
                    for _ in range(runners):
                        runs.start_soon(self._runner, claimed)
                    self._claiming = True
                    try:
                        await self._claim_loop(claimed)
                    finally:
                        self._claiming = False
                    await self._finish_or_release()
                    for _ in range(runners):
                        claimed.put_nowait(None)  # each runner stops at its None
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._hand_back_unstarted()
                if self.metrics is not None:
                    await self.metrics.close()
                if self._listener is not None:
                    await self._listener.close()
                await anyio.to_thread.run_sync(liveness.stop)
                try:
                    await within(CLOSE_TIMEOUT_S, client.stop_worker(self.worker_id))
                except DurableError as exc:
                    log.warning("worker.stop_not_recorded", worker=self.worker_id, error=str(exc))
            log.info("worker.stopped", worker=self.worker_id)

    async def _record_limits(self) -> None:
        """The limits of the tasks this worker serves, as their definitions say (the code is
        the source of truth: a definition without limits removes the task's limits)."""
        for definition in self.registry.definitions_on(self.options.queues):
            await self.client.set_limit(
                definition.queue,
                definition.name,
                concurrency=definition.global_limit,
                rate=definition.rate_limit,
                key_limit=definition.key_limit,
            )

    def _on_work(self, queue: str) -> None:
        if queue in self.options.queues:
            self._wake.set()

    async def _keep_listening(self) -> None:
        """Re-open the LISTEN connection whenever it is lost, backing off while the database is
        unreachable; polling covers the gap (and the claim after reopening what was missed)."""
        backoff = ReconnectBackoff()
        while True:
            if self._listener is not None and not self._listener.closed:
                await anyio.sleep(LISTENER_CHECK_S)
                continue
            if self._listener is not None:
                log.warning("worker.listener_lost", worker=self.worker_id)
                await self._listener.close()
                self._listener = None
            try:
                self._listener = await within(
                    self._db_timeout, self.client.listen({CHANNEL_WORK: self._on_work})
                )
            except DurableError as exc:
                self._listen_now = anyio.Event()
                with anyio.move_on_after(self._unavailable("listen", backoff, exc)):
                    await self._listen_now.wait()  # a claim got through: the database is back
                continue
            attempts = backoff.reset()
            log.info("db.reconnected", worker=self.worker_id, during="listen", attempts=attempts)
            self._wake.set()  # notifications sent while it was down are lost: look now
            self._retry_now.set()  # the database is back: claim without waiting out a backoff

    def _unavailable(self, during: str, backoff: ReconnectBackoff, exc: Exception) -> float:
        """Log a failed attempt to reach the database; return how long to back off."""
        self._database_ok = False
        self._database_errors[during] = self._database_errors.get(during, 0) + 1
        delay = backoff.next_delay()
        log.warning(
            "db.unavailable",
            worker=self.worker_id,
            during=during,
            attempt=backoff.attempt,
            delay_s=round(delay, 3),
            error=str(exc),
        )
        return delay

    async def _claim(
        self, queue: str, free: int, slots: int, backoff: ReconnectBackoff
    ) -> list[Claim] | None:
        """Claim up to ``free`` runs of ``queue``, the first ``slots`` of them into free handler
        slots; None when the database is unreachable (after waiting out the backoff delay, or
        less when drained or the LISTEN connection is back)."""
        opts = self.options
        started = self._starts.pending()
        try:
            # shielded: runs a claim took are handed back if the worker is cancelled meanwhile
            # (see run's finally), not left to lapse into a crash
            with cancel_scope(shield=True):
                claims = await within(
                    self._db_timeout,
                    self.client.claim(
                        queue,
                        self.worker_id,
                        opts.claim_timeout,
                        free,
                        code_version=self.code_version,
                        started=started,
                        skip_names=self._skipped_names(),
                        slots=slots,
                    ),
                )
        except DatabaseUnavailable as exc:
            delay = self._unavailable("claim", backoff, exc)
            if not self._draining.is_set():
                self._retry_now = anyio.Event()
            with anyio.move_on_after(delay):
                await self._retry_now.wait()
            return None
        except DurableError as exc:
            log.warning("worker.claim_failed", worker=self.worker_id, error=str(exc))
            return []
        self._database_ok = True
        self._starts.reported(started)
        if backoff.attempt:
            attempts = backoff.reset()
            log.info("db.reconnected", worker=self.worker_id, during="claim", attempts=attempts)
            self._listen_now.set()  # the database is back: re-open LISTEN without waiting
        return claims

    async def _claim_loop(self, runs: asyncio.Queue[RunControl | None]) -> None:
        opts = self.options
        batch = max(1, opts.concurrency // 4)
        backlog = False
        backoff = ReconnectBackoff()
        while not self._draining.is_set():
            free = self._free_slots()
            if free <= 0 or (backlog and free < batch):
                # with a backlog, gather a batch of free slots (briefly) so claims stay batched
                with anyio.move_on_after(None if free <= 0 else CLAIM_GATHER_S):
                    await self._slot_freed.wait()
                self._slot_freed = anyio.Event()
                if free > 0 and self._free_slots() < batch:
                    backlog = False  # slots free slowly: claim what is free now
                continue
            self._wake = anyio.Event()
            claimed_full = unavailable = False
            for queue in opts.queues:
                # slots: the handler slots free now. The first runs the claim returns take them
                # at once (no run waits for a slot while one is free) and count as started; the
                # others wait, reserved until their start is reported
                free, slots = self._room()
                if free <= 0 or self._draining.is_set():
                    break
                claimed_at = time.monotonic()
                claims = await self._claim(queue, free, slots, backoff)
                if claims is None:
                    unavailable = True  # backed off already: start over
                    break
                self._ahead.claimed(time.monotonic() - claimed_at)
                claimed_full = claimed_full or len(claims) == free
                lease_until = claimed_at + opts.claim_timeout
                for n, claim in enumerate(claims):
                    self._start(runs, claim, reserved=n >= slots, lease_until=lease_until)
            backlog = claimed_full
            if unavailable or claimed_full:
                continue  # there may be more: claim again as soon as slots allow
            with anyio.move_on_after(opts.poll_interval):
                await self._wake.wait()

    def _skipped_names(self) -> list[str]:
        """The unknown task names this worker deferred, while their deferral lasts."""
        if not self._deferred:
            return []
        now = time.monotonic()
        self._deferred = {name: until for name, until in self._deferred.items() if until > now}
        return list(self._deferred)

    def _free_slots(self) -> int:
        """Runs to claim now (see :meth:`_room`)."""
        return self._room()[0]

    def _room(self) -> tuple[int, int]:
        """Runs to claim now, and how many handler slots are free now, from one pass over the
        active runs. ``concurrency`` handlers run at once, and a few runs more are claimed
        ahead of free slots when tasks are short (:class:`ClaimAhead`). A run whose handler
        returned frees its slot while its outcome is written (batched); at most
        ``2 x concurrency`` such writes wait at once, so claims overlap with completions (two
        batches' worth: one in flight, one gathering) without piling them up."""
        concurrency = self.options.concurrency
        limit = concurrency + self._ahead.runs
        unfinished = sum(1 for control in self.active.values() if not control.finished)
        free = min(limit - unfinished, limit + 2 * concurrency - len(self.active))
        return free, max(0, concurrency - unfinished)

    def _start(
        self,
        runs: asyncio.Queue[RunControl | None],
        claim: Claim,
        *,
        reserved: bool,
        lease_until: float,
    ) -> None:
        control = RunControl(
            claim,
            on_finish=self._handler_done,
            on_end=self._run_ended,
            lease_until=lease_until,
            write_timeout_s=self._db_timeout,
        )
        control.reserved = reserved
        self.active[claim.run_id] = control
        log.info("run.claimed", **control.ids, worker=self.worker_id)
        runs.put_nowait(control)  # a runner is free: there are as many as active runs can be

    def _lease_left(self, run_id: uuid.UUID) -> float:
        """Seconds the lease of run ``run_id`` surely holds still (0: not this worker's)."""
        control = self.active.get(run_id)
        return 0.0 if control is None else control.lease_left()

    def _handler_done(self) -> None:
        self._handler_slots.release()
        self._ahead.handler_done()
        self._slot_freed.set()

    def _run_ended(self, control: RunControl) -> None:
        self.active.pop(control.claim.run_id, None)
        self._starts.ended(control.claim.run_id)
        self._slot_freed.set()

    async def _runner(self, claimed: asyncio.Queue[RunControl | None]) -> None:
        while (control := await claimed.get()) is not None:
            await self._run_one(control)

    async def _run_one(self, control: RunControl) -> None:
        claim = control.claim
        holds_slot = handed_over = False
        try:
            try:
                await self._handler_slots.acquire()
            except anyio.get_cancelled_exc_class():
                await self._hand_back(control, 0)  # the worker is cancelled: never started
                raise
            holds_slot = True
            if control.stop_reason is not None or self._draining.is_set():
                if control.stop_reason is not Outcome.LEASE_LOST:
                    await self._hand_back(control, 0)  # draining: another worker takes it now
                return
            control.start()  # its handler, discard hook or unknown-task deferral runs now
            definition = self.registry.get(claim.task_name)
            if claim.task_name == DISCARD_TASK:
                if control.reserved:
                    self._starts.started(claim.run_id)
                if not await run_discard_hook(self.client, self.registry, control):
                    # the hook's task is unknown here: this hook comes back later (others run)
                    await self._defer_unknown(control, skip=False)
            elif definition is None:
                await self._defer_unknown(control)
            else:
                # its handler starts now, with no await before its first line: the next claim
                # or lease renewal tells the database (no statement of its own)
                if control.reserved:
                    self._starts.started(claim.run_id)
                handed_over = await execute(
                    self.client, definition, control, self._writes, self._observer
                )
        finally:
            if holds_slot and not control.finished:
                control.finish()  # frees the handler slot
            if not handed_over:  # else the batcher ends it once its completion is written
                control.end()

    async def _defer_unknown(self, control: RunControl, *, skip: bool = True) -> None:
        """A task this worker's code does not know (a rolling deploy): hand it back, due now
        for a worker that knows it, and skip its name in this worker's claims for
        ``unknown_task_defer`` seconds (``skip=False``: due again after that long instead)."""
        claim = control.claim
        defer_s = self.options.unknown_task_defer
        if claim.task_name not in self._unknown_logged:
            self._unknown_logged.add(claim.task_name)
            log.warning(
                "task.unknown_deferred",
                **run_fields(claim),
                defer_s=self.options.unknown_task_defer,
            )
        if skip:
            self._deferred[claim.task_name] = time.monotonic() + defer_s
            await self._hand_back(control, 0)
        else:
            await self._hand_back(control, defer_s)

    async def _hand_back(self, control: RunControl, delay: float) -> None:
        """Give a run this worker will not start back to its queue, due in ``delay`` seconds."""
        claim = control.claim
        with anyio.CancelScope(shield=True):
            try:
                await within(
                    self._db_timeout,
                    self.client.schedule_run(claim.queue, claim.run_id, delay),
                )
            except DurableError as exc:
                log.warning("run.hand_back_failed", **control.ids, error=str(exc))
            else:
                if delay == 0:
                    log.info("run.released", **control.ids)

    async def _hand_back_unstarted(self) -> None:
        """Runs claimed but never started, left when the worker was cancelled outright (a
        drain starts none and hands them back itself): back to their queue, due now."""
        for control in [c for c in self.active.values() if not c.started]:
            await self._hand_back(control, 0)
            control.end()

    async def _finish_or_release(self) -> None:
        """Draining: wait up to the grace period, then release what still runs."""
        with anyio.move_on_after(self.options.grace_period):
            while self.active:
                await self._slot_freed.wait()
                self._slot_freed = anyio.Event()
        for control in list(self.active.values()):
            control.stop(Outcome.RELEASED)
