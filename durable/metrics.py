"""Prometheus metrics of one worker, on an opt-in port: ``pip install 'durable[metrics]'``.

``prometheus_client`` is imported only when a worker is given a metrics port
(``run_worker(metrics_port=...)``, ``durable worker --metrics-port``). Each worker keeps a
registry of its own, not the process-wide default (two workers in one process do not clash),
and serves it at ``http://HOST:PORT/metrics`` from its own task group: the endpoint stops with
the worker. HOST defaults to 127.0.0.1: the metrics name queues and tasks, so serving them
beyond the machine is a choice (``0.0.0.0`` for a container scraped from outside).

Labels stay low-cardinality — queue, task name, failure reason, outcome, state — never an id:

* ``durable_queue_depth{queue,state}`` (gauge): tasks per state on the worker's queues, from
  one grouped query every ``metrics_interval`` seconds (every worker of a queue reports it:
  aggregate with ``max``);
* ``durable_runs_started_total{queue,task_name}``,
  ``durable_runs_completed_total{queue,task_name}``,
  ``durable_runs_failed_total{queue,task_name,reason}`` (errored, job_timeout,
  heartbeat_timeout: the failures a worker writes; crashes are the reaper's),
  ``durable_lease_lost_total{queue,task_name}`` (counters, of this worker's runs);
* ``durable_run_duration_seconds{queue,task_name,outcome}`` (histogram): from the start of a
  run to its outcome written; outcome completed, failed, released, snoozed, suspended,
  lease_lost or unwritten.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from durable.client import Client
from durable.protocol.errors import DurableError, InvalidArgument
from durable.protocol.log import get_logger
from durable.protocol.records import Claim, FailureReason, TaskState
from durable.runtime import instruments
from durable.runtime.deadlines import within
from durable.runtime.outcome import Outcome, RunEnded

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

    from durable.client import Client
    from durable.protocol.records import Claim

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
#: A scrape must be answered within this (a client that sends nothing is dropped).
REQUEST_TIMEOUT_S = 10.0
#: The longest request head read (a scrape's is a few hundred bytes).
MAX_REQUEST_BYTES = 16384
#: After the listener fails to accept (out of file descriptors), wait this long to retry.
ACCEPT_RETRY_S = 1.0


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
            from prometheus_client.exposition import choose_encoder
        except ImportError as exc:
            raise InvalidArgument(
                "a metrics port needs prometheus-client — pip install 'durable[metrics]'"
            ) from exc
        self.queues = tuple(queues)
        self.host = host
        self.port = port  # the bound port once serving (a port of 0 picks a free one)
        self.interval = interval
        self.registry = prometheus.CollectorRegistry(auto_describe=True)
        self._choose_encoder = choose_encoder  # by the scrape's Accept: text or OpenMetrics
        self._scrapes = anyio.CapacityLimiter(1)  # not the limiter of sync handlers' threads
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None
        reg = self.registry
        self.queue_depth = prometheus.Gauge(
            "durable_queue_depth", "Tasks per queue and state.", ["queue", "state"], registry=reg
        )
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
            self._listener = await anyio.create_tcp_listener(
                local_host=self.host, local_port=self.port
            )
        except OSError as exc:
            raise InvalidArgument(
                f"cannot serve metrics on {self.host}:{self.port} — {exc.strerror or exc}; "
                "choose another metrics port"
            ) from exc
        self.port = self._listener.extra(anyio.abc.SocketAttribute.local_port)

    async def run(
        self,
        client: Client,
        db_timeout: float,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``/metrics`` (:meth:`listen` first) and refresh the queue depth until
        cancelled; then the port is closed."""
        listener = self._listener
        if listener is None:
            raise RuntimeError("WorkerMetrics.listen() must be called before run()")
        try:
            async with anyio.create_task_group() as tg:
                log.info("metrics.serving", host=self.host, port=self.port, path="/metrics")
                tg.start_soon(self._refresh_queue_depth, client, db_timeout)
                task_status.started()
                while True:
                    try:
                        await listener.serve(self._handle, tg)
                    except* OSError as failed:  # out of file descriptors, say: the worker goes on
                        log.warning("metrics.accept_failed", error=str(failed.exceptions[0]))
                        await anyio.sleep(ACCEPT_RETRY_S)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the metrics port (again: nothing)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def _refresh_queue_depth(self, client: Client, db_timeout: float) -> None:
        while True:
            try:
                counts = await within(db_timeout, client.queue_counts())
            except DurableError as exc:
                log.warning("metrics.queue_depth_failed", error=str(exc))
            else:
                depth = {(c.queue, c.state): c.count for c in counts}
                for queue in self.queues:
                    for state in TaskState:
                        self.queue_depth.labels(queue, state).set(depth.get((queue, state), 0))
            await anyio.sleep(self.interval)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(REQUEST_TIMEOUT_S):
                    head = await _read_head(stream)
                    await stream.send(await self._respond(head))
            except (
                TimeoutError,
                OSError,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                anyio.EndOfStream,
            ) as exc:
                log.debug("metrics.request_failed", error=str(exc) or type(exc).__name__)

    async def _respond(self, head: bytes | None) -> bytes:
        request = head.split(b"\n", 1)[0].split() if head is not None else []
        if head is None or len(request) != 3:
            return _response(b"400 Bad Request", b"text/plain", b"bad request\n")
        method, target, _version = request
        if method not in (b"GET", b"HEAD"):
            return _response(b"405 Method Not Allowed", b"text/plain", b"GET /metrics\n")
        if target.split(b"?", 1)[0] != b"/metrics":
            return _response(b"404 Not Found", b"text/plain", b"the metrics are at /metrics\n")
        encode, content_type = self._choose_encoder(_header(head, b"accept"))
        body = await anyio.to_thread.run_sync(encode, self.registry, limiter=self._scrapes)
        return _response(b"200 OK", content_type.encode(), body, head_only=method == b"HEAD")


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


async def _read_head(stream: anyio.abc.SocketStream) -> bytes | None:
    """The request line and headers; None when they are too long."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > MAX_REQUEST_BYTES:
            return None
        data += await stream.receive()
    return data


def _header(head: bytes, name: bytes) -> str:
    """The value of header ``name`` (lowercase) in a request head; empty when absent."""
    for line in head.split(b"\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return ""


def _response(status: bytes, content_type: bytes, body: bytes, *, head_only: bool = False) -> bytes:
    head = (
        b"HTTP/1.1 " + status + b"\r\n"
        b"Content-Type: " + content_type + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n"
    )
    return head if head_only else head + body


def _worker_metrics(
    queues: Sequence[str], host: str, port: int, interval: float, tasks: Iterable[tuple[str, str]]
) -> WorkerMetrics:
    return WorkerMetrics(queues=queues, host=host, port=port, interval=interval, tasks=tasks)


instruments.install_metrics(_worker_metrics)
