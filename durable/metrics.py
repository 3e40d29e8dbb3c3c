"""Prometheus metrics and health of one worker, on an opt-in port: ``pip install
'durable[metrics]'`` (prometheus-client, and uvicorn to serve them).

Nothing of it is imported until a worker is given a metrics port (``run_worker(metrics_port=...)``,
``durable worker --metrics-port``). Each worker keeps a registry of its own, not the process-wide
default (two workers in one process do not clash), and serves it from its own task group with
uvicorn (:mod:`durable.asgi`): the endpoint stops with the worker. HOST defaults to 127.0.0.1:
the metrics name queues and tasks, so serving them beyond the machine is a choice.

Paths: ``/metrics`` (text or OpenMetrics, by the scrape's Accept), ``/healthz`` (200 while the
process serves: liveness) and ``/readyz`` (200 while the worker claims and the database answers,
503 with the reason otherwise: draining, database unreachable, not claiming yet). GET and HEAD.

Labels stay low-cardinality — queue, task name, failure reason, outcome, state — never an id:

* ``durable_tasks{queue,state}`` (gauge): tasks pending, running and sleeping on the worker's
  queues, and ``durable_queue_depth{queue}`` (gauge): the runs that could start now (the
  backlog), ``durable_queue_oldest_pending_age_seconds{queue}`` (gauge): how long the oldest of
  them has waited. From the live runs only (``queue_depth``: never the finished history), every
  ``metrics_interval`` seconds; every worker of a queue reports them: aggregate with ``max``;
* ``durable_runs_started_total{queue,task_name}``,
  ``durable_runs_completed_total{queue,task_name}``,
  ``durable_runs_failed_total{queue,task_name,reason}`` (errored, job_timeout,
  heartbeat_timeout: the failures a worker writes; crashes are the reaper's),
  ``durable_lease_lost_total{queue,task_name}`` (counters, of this worker's runs);
* ``durable_run_duration_seconds{queue,task_name,outcome}`` (histogram): from the start of a
  run to its outcome written; outcome completed, failed, released, snoozed, suspended,
  lease_lost or unwritten;
* ``durable_worker_slots``, ``durable_worker_busy_slots``, ``durable_worker_claimed_ahead_runs``
  (gauges): this worker's concurrency, its handlers running, the runs waiting for a slot;
  ``durable_worker_ready`` (gauge, 1 or 0: as ``/readyz``);
* ``durable_database_errors_total{during}`` (counter): failed database calls of the worker's
  loops (claim, listen), each retried with backoff;
* ``durable_build_info{version}`` (gauge, 1).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from durable.asgi import bind, serve_asgi
from durable.client import Client
from durable.protocol.errors import DurableError, InvalidArgument
from durable.protocol.log import get_logger
from durable.protocol.records import Claim, FailureReason, TaskState
from durable.runtime import instruments
from durable.runtime.deadlines import within
from durable.runtime.instruments import WorkerStatus
from durable.runtime.outcome import Outcome, RunEnded

if TYPE_CHECKING:
    import socket
    from collections.abc import Awaitable, MutableMapping

    from prometheus_client import Counter, Histogram
    from prometheus_client.metrics_core import Metric

log = get_logger()

#: Run durations, in seconds: durable runs last from milliseconds to hours.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0
)  # fmt: skip
#: The failure reasons a worker writes (pre-set to 0 for each task, so rates start at once).
WORKER_FAILURE_REASONS = (
    FailureReason.ERRORED,
    FailureReason.JOB_TIMEOUT,
    FailureReason.HEARTBEAT_TIMEOUT,
)
#: The live states ``durable_tasks`` counts (finished tasks are history: see the counters).
LIVE_STATES = (TaskState.PENDING, TaskState.RUNNING, TaskState.SLEEPING)
#: What the worker's database errors are counted by (its loops that retry with backoff).
DATABASE_CALLS = ("claim", "listen")


class WorkerMetrics:
    """One worker's metrics: the executor's observer of its runs, and :meth:`run`, which
    serves them over HTTP and refreshes the queue depth until cancelled."""

    def __init__(
        self,
        *,
        queues: Sequence[str],
        host: str,
        port: int,
        interval: float,
        tasks: Iterable[tuple[str, str]] = (),
    ) -> None:
        try:
            import prometheus_client as prometheus
            import uvicorn  # noqa: F401 — serves the endpoint: checked here, imported when serving
        except ImportError as exc:
            raise InvalidArgument(
                "a metrics port needs prometheus-client and uvicorn — pip install "
                "'durable[metrics]'"
            ) from exc
        self.queues = tuple(queues)
        self.host = host
        self.port = port  # the bound port once serving (a port of 0 picks a free one)
        self.interval = interval
        self.registry = prometheus.CollectorRegistry(auto_describe=True)
        self._socket: socket.socket | None = None
        self._status: Callable[[], WorkerStatus] | None = None
        reg = self.registry
        self.tasks = prometheus.Gauge(
            "durable_tasks",
            "Live tasks per queue and state (pending, running, sleeping), from the live runs.",
            ["queue", "state"],
            registry=reg,
        )
        self.queue_depth = prometheus.Gauge(
            "durable_queue_depth",
            "Runs per queue that could start now: the backlog.",
            ["queue"],
            registry=reg,
        )
        self.oldest_pending = prometheus.Gauge(
            "durable_queue_oldest_pending_age_seconds",
            "How long the oldest run that could start now has waited, per queue.",
            ["queue"],
            registry=reg,
        )
        prometheus.Info(
            "durable_build", "The durable package serving these metrics.", registry=reg
        ).info({"version": _version()})
        reg.register(_StatusCollector(self))
        run = ["queue", "task_name"]
        self.runs_started = prometheus.Counter(
            "durable_runs_started", "Runs this worker started.", run, registry=reg
        )
        self.runs_completed = prometheus.Counter(
            "durable_runs_completed", "Runs this worker completed.", run, registry=reg
        )
        self.runs_failed = prometheus.Counter(
            "durable_runs_failed",
            "Runs this worker failed, by failure reason.",
            [*run, "reason"],
            registry=reg,
        )
        self.lease_lost = prometheus.Counter(
            "durable_lease_lost", "Runs whose lease this worker lost.", run, registry=reg
        )
        self.run_duration = prometheus.Histogram(
            "durable_run_duration_seconds",
            "From the start of a run to its outcome written, by outcome.",
            [*run, "outcome"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self._series: dict[tuple[str, str], _TaskSeries] = {}
        for queue, task_name in tasks:
            self._series[queue, task_name] = _TaskSeries(self, queue, task_name)
            for reason in WORKER_FAILURE_REASONS:
                self.runs_failed.labels(queue, task_name, reason)

    # --- the executor's observer ------------------------------------------------------------------

    def run_started(self, claim: Claim) -> _RunMetrics:
        key = (claim.queue, claim.task_name)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _TaskSeries(self, *key)
        series.started.inc()
        return _RunMetrics(series, time.perf_counter())

    # --- serving ----------------------------------------------------------------------------------

    async def listen(self) -> None:
        """Bind the metrics port (a port in use is an :class:`InvalidArgument`, raised here
        rather than from inside the worker's task group)."""
        try:
            self._socket = bind(self.host, self.port)
        except OSError as exc:
            raise InvalidArgument(
                f"cannot serve metrics on {self.host}:{self.port} — {_reason(exc)}; "
                "choose another metrics port"
            ) from exc
        self.port = self._socket.getsockname()[1]

    async def run(
        self,
        client: Client,
        db_timeout: float,
        status: Callable[[], WorkerStatus],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``/metrics``, ``/healthz`` and ``/readyz`` (:meth:`listen` first) and refresh
        the queue gauges until cancelled; then the port is closed."""
        sock, self._socket = self._socket, None
        if sock is None:
            raise RuntimeError("WorkerMetrics.listen() must be called before run()")
        self._status = status
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._refresh_queue_depth, client, db_timeout)
            await tg.start(serve_asgi, self._app(), sock)
            log.info("metrics.serving", host=self.host, port=self.port, path="/metrics")
            task_status.started()

    async def close(self) -> None:
        """Close the metrics port if :meth:`run` never took it (again: nothing)."""
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()

    def status(self) -> WorkerStatus | None:
        """The worker's status now; None before :meth:`run`."""
        return None if self._status is None else self._status()

    async def _refresh_queue_depth(self, client: Client, db_timeout: float) -> None:
        while True:
            try:
                depths = await within(db_timeout, client.queue_depth())
            except DurableError as exc:
                log.warning("metrics.queue_depth_failed", error=str(exc))
            else:
                by_queue = {d.queue: d for d in depths}
                for queue in self.queues:
                    depth = by_queue.get(queue)
                    counts = (depth.pending, depth.running, depth.sleeping) if depth else (0, 0, 0)
                    for state, count in zip(LIVE_STATES, counts, strict=True):
                        self.tasks.labels(queue, state).set(count)
                    self.queue_depth.labels(queue).set(depth.available if depth else 0)
                    oldest = depth.oldest_available_s if depth else None
                    self.oldest_pending.labels(queue).set(oldest or 0.0)
            await anyio.sleep(self.interval)

    def _app(self) -> _ASGIApp:
        """``/metrics`` (prometheus-client's own ASGI app), ``/healthz`` and ``/readyz``."""
        from prometheus_client import make_asgi_app

        metrics = make_asgi_app(self.registry)

        async def app(scope: _Scope, receive: _Receive, send: _Send) -> None:
            if scope["type"] != "http":
                return
            method, path = scope["method"], scope["path"]
            if method not in ("GET", "HEAD"):
                await _text(send, 405, "GET or HEAD\n", method, allow="GET, HEAD")
            elif path == "/metrics":
                await metrics(scope, receive, send)
            elif path == "/healthz":
                await _text(send, 200, "ok\n", method)
            elif path == "/readyz":
                status = self.status()
                reason = _not_ready(status)
                if reason is None:
                    await _text(send, 200, "ready\n", method)
                else:
                    await _text(send, 503, f"not ready: {reason}\n", method)
            else:
                await _text(
                    send, 404, "the metrics are at /metrics (and /healthz, /readyz)\n", method
                )

        return app


class _StatusCollector:
    """The metrics read from the worker's status at each scrape: its slots, readiness and
    database errors."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self._metrics.status()
        yield GaugeMetricFamily(
            "durable_worker_slots",
            "Handlers this worker runs at once (its concurrency).",
            value=status.concurrency if status else 0,
        )
        yield GaugeMetricFamily(
            "durable_worker_busy_slots",
            "Slots of this worker running a handler now.",
            value=status.busy if status else 0,
        )
        yield GaugeMetricFamily(
            "durable_worker_claimed_ahead_runs",
            "Runs this worker claimed ahead of a free slot, waiting for one.",
            value=status.claimed_ahead if status else 0,
        )
        yield GaugeMetricFamily(
            "durable_worker_ready",
            "1 while the worker claims and the database answers (as /readyz), else 0.",
            value=1 if status is not None and status.ready else 0,
        )
        errors = CounterMetricFamily(
            "durable_database_errors",
            "Failed database calls of the worker's loops, each retried with backoff.",
            labels=["during"],
        )
        for during in DATABASE_CALLS:
            errors.add_metric([during], status.database_errors.get(during, 0) if status else 0)
        yield errors


def _reason(exc: OSError) -> str:
    """An OSError's reason without the address it names ("Address already in use")."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _version() -> str:
    try:
        return metadata.version("durable")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def _not_ready(status: WorkerStatus | None) -> str | None:
    """Why the worker is not ready; None when it is."""
    if status is not None and status.draining:
        return "the worker is draining"
    if status is None or not status.claiming:
        return "the worker is not claiming yet"
    if not status.database_ok:
        return "the database is unreachable"
    return None


async def _text(send: _Send, status: int, body: str, method: str, *, allow: str = "") -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if allow:
        headers.append((b"allow", allow.encode()))
    data = body.encode()
    headers.append((b"content-length", str(len(data)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data})


if TYPE_CHECKING:
    _Scope = MutableMapping[str, Any]
    _Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
    _Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
    _ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


class _TaskSeries:
    """The series of one queue and task name (``labels()`` looked up once, not per run)."""

    __slots__ = ("_metrics", "_task", "completed", "duration", "failed", "lease_lost", "started")

    def __init__(self, metrics: WorkerMetrics, queue: str, task_name: str) -> None:
        self._metrics = metrics
        self._task = (queue, task_name)
        self.started = metrics.runs_started.labels(queue, task_name)
        self.completed = metrics.runs_completed.labels(queue, task_name)
        self.lease_lost = metrics.lease_lost.labels(queue, task_name)
        self.failed: dict[str, Counter] = {}  # by failure reason
        self.duration: dict[str, Histogram] = {}  # by outcome

    def observe(self, ended: RunEnded, elapsed: float) -> None:
        outcome = ended.outcome.label
        duration = self.duration.get(outcome)
        if duration is None:
            duration = self.duration[outcome] = self._metrics.run_duration.labels(
                *self._task, outcome
            )
        duration.observe(elapsed)
        if ended.outcome is Outcome.COMPLETED:
            self.completed.inc()
        elif ended.reason is not None:
            reason = str(ended.reason)
            failed = self.failed.get(reason)
            if failed is None:
                failed = self.failed[reason] = self._metrics.runs_failed.labels(*self._task, reason)
            failed.inc()
        elif ended.outcome is Outcome.LEASE_LOST:
            self.lease_lost.inc()


class _RunMetrics:
    """One run being measured."""

    __slots__ = ("_series", "_started")

    def __init__(self, series: _TaskSeries, started: float) -> None:
        self._series = series
        self._started = started

    def run_ended(self, ended: RunEnded) -> None:
        self._series.observe(ended, time.perf_counter() - self._started)


def _worker_metrics(
    queues: Sequence[str], host: str, port: int, interval: float, tasks: Iterable[tuple[str, str]]
) -> WorkerMetrics:
    return WorkerMetrics(queues=queues, host=host, port=port, interval=interval, tasks=tasks)


instruments.install_metrics(_worker_metrics)
