"""Prometheus metrics of an in-process worker, scraped over HTTP; and durable without the optional
extras installed (``prometheus_client`` and ``opentelemetry`` blocked in a subprocess)."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.in_process import running_worker
from support.waiting import wait_finished, wait_for
from worker_app import QUEUE

import durable
from durable import Durable, InvalidArgument, TaskContext, TaskState
from durable.metrics import WorkerMetrics
from durable.runtime.worker import Worker, WorkerOptions

pytestmark = pytest.mark.anyio

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()

    return await anyio.to_thread.run_sync(get)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def request(port: int, method: str, path: str) -> Answer:
    def send() -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request(method, path)
            response = connection.getresponse()
            body = response.read()
            headers = {name.lower(): v for name, v in response.getheaders()}
            return Answer(response.status, headers, body)
        finally:
            connection.close()

    return await anyio.to_thread.run_sync(send)


def assert_prometheus_names(text: str) -> None:
    """Prometheus's naming conventions (what ``promtool check metrics`` checks): snake_case
    names under the ``durable_`` namespace, counters ending ``_total``, base units in the
    name (``_seconds``), a HELP for every metric."""
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        assert re.fullmatch(r"durable_[a-z0-9_]+", family.name), family.name
        assert family.documentation, family.name
        assert "milliseconds" not in family.name
        if family.type == "counter":
            assert all(sample.name.endswith(("_total", "_created")) for sample in family.samples), (
                family.name
            )
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        if family.type == "gauge":
            assert not family.name.endswith("_total"), family.name


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_worker_serves_run_counters_durations_queue_depth_and_lease_losses(
    dsn: str,
) -> None:
    app = Durable(dsn)
    cancel_me = anyio.Event()

    @app.task
    async def ok(ctx: TaskContext, params: Any) -> Any:
        return params

    @app.task(max_attempts=1)
    async def boom(ctx: TaskContext, params: Any) -> None:
        raise RuntimeError("boom")

    @app.task(max_attempts=1, timeout=0.2)
    async def slow(ctx: TaskContext, params: Any) -> None:
        await anyio.sleep(30)

    @app.task
    async def cancelled_while_running(ctx: TaskContext, params: Any) -> None:
        cancel_me.set()
        await anyio.sleep(30)  # the cancel makes the run lose its lease: the worker stops it

    async with running_worker(app, metrics_port=0, metrics_interval=0.1) as worker:
        assert worker.metrics is not None
        port = worker.metrics.port
        assert port > 0
        handles = [await ok.spawn(i) for i in range(3)]
        handles += [await boom.spawn(), await slow.spawn()]
        for handle in handles:
            await wait_finished(app.client, handle.task_id, timeout=10)
        later = await ok.spawn("later", delay=3600)  # stays pending
        victim = await cancelled_while_running.spawn()
        with anyio.fail_after(10):
            await cancel_me.wait()
        await app.cancel(victim.task_id)

        async def scraped() -> Samples | None:
            status, text = await scrape(port)
            assert status == 200
            samples = parse(text)
            lost = value(
                samples, "durable_lease_lost_total", queue=QUEUE, task_name=victim.task_name
            )
            pending = value(samples, "durable_tasks", queue=QUEUE, state="pending")
            return samples if lost == 1 and pending == 1 else None

        samples = await wait_for(scraped, timeout=15, what="the lease loss and the queue depth")
        _, text = await scrape(port)
        not_found, _ = await scrape(port, "/other")
        health = await scrape(port, "/healthz")
        ready = await scrape(port, "/readyz")
        head = await request(port, "HEAD", "/metrics")
        post = await request(port, "POST", "/metrics")
        worker.drain()
        draining = await scrape(port, "/readyz")

    run = {"queue": QUEUE}
    assert value(samples, "durable_runs_started_total", **run, task_name="ok") == 3
    assert value(samples, "durable_runs_completed_total", **run, task_name="ok") == 3
    assert value(samples, "durable_runs_completed_total", **run, task_name="boom") == 0
    for task_name, reason in [("boom", "errored"), ("slow", "job_timeout")]:
        assert value(samples, "durable_runs_started_total", **run, task_name=task_name) == 1
        assert (
            value(samples, "durable_runs_failed_total", **run, task_name=task_name, reason=reason)
            == 1
        )
        count = value(
            samples,
            "durable_run_duration_seconds_count",
            **run,
            task_name=task_name,
            outcome="failed",
        )
        assert count == 1
    assert value(samples, "durable_runs_failed_total", **run, task_name="ok", reason="errored") == 0
    durations = {"task_name": "ok", "outcome": "completed"}
    assert value(samples, "durable_run_duration_seconds_count", **run, **durations) == 3
    assert value(samples, "durable_run_duration_seconds_bucket", **run, **durations, le="+Inf") == 3
    slow_sum = value(
        samples, "durable_run_duration_seconds_sum", **run, task_name="slow", outcome="failed"
    )
    assert slow_sum is not None
    assert slow_sum >= 0.2  # its timeout
    lost = {"task_name": "cancelled_while_running", "outcome": "lease_lost"}
    assert value(samples, "durable_run_duration_seconds_count", **run, **lost) == 1

    # the live tasks, from the live runs: finished ones are history (the counters above)
    live = {state: value(samples, "durable_tasks", **run, state=state) for state in TaskState}
    assert live == {
        TaskState.PENDING: 1,
        TaskState.RUNNING: 0,
        TaskState.SLEEPING: 0,
        TaskState.COMPLETED: None,
        TaskState.FAILED: None,
        TaskState.CANCELLED: None,
    }
    # the one pending task waits an hour: nothing could start now
    assert value(samples, "durable_queue_depth", **run) == 0
    assert value(samples, "durable_queue_oldest_pending_age_seconds", **run) == 0
    assert value(samples, "durable_worker_slots") == 4
    assert value(samples, "durable_worker_busy_slots") == 0
    assert value(samples, "durable_worker_claimed_ahead_runs") == 0
    assert value(samples, "durable_worker_ready") == 1
    assert value(samples, "durable_database_errors_total", during="claim") == 0
    [build] = [labels for (name, labels) in samples if name == "durable_build_info"]
    assert dict(build)["version"] == durable.__version__

    # labels are queue, task name, reason, outcome, state (and the histogram's le), what failed
    # and the version: never an id
    label_names = {name for (_, labels) in samples for name, _ in labels}
    assert label_names <= {
        "queue", "task_name", "reason", "outcome", "state", "le", "during", "version"
    }  # fmt: skip
    assert not UUID_RE.search(text)
    assert str(later.task_id) not in text
    assert_prometheus_names(text)
    assert not_found == 404
    assert health == (200, "ok\n")
    assert ready == (200, "ready\n")
    assert draining == (503, "not ready: the worker is draining\n")
    assert head.status == 200
    assert head.body == b""
    assert (post.status, post.headers["allow"]) == (405, "GET, HEAD")

    # the endpoint stopped with the worker
    with pytest.raises(OSError, match="refused"):
        await scrape(port)


async def test_two_workers_in_one_process_have_registries_of_their_own(dsn: str) -> None:
    app = Durable(dsn)

    @app.task
    async def ok(ctx: TaskContext, params: Any) -> Any:
        return params

    async with (
        running_worker(app, metrics_port=0) as first,
        running_worker(app, metrics_port=0) as second,
    ):
        assert isinstance(first.metrics, WorkerMetrics)
        assert isinstance(second.metrics, WorkerMetrics)
        assert first.metrics.port != second.metrics.port
        assert first.metrics.registry is not second.metrics.registry


async def test_a_metrics_port_in_use_is_a_clear_error(dsn: str) -> None:
    app = Durable(dsn)
    async with running_worker(app, metrics_port=0) as first:
        assert first.metrics is not None
        second = Worker(
            app.registry, WorkerOptions(queues=(QUEUE,), metrics_port=first.metrics.port)
        )
        with pytest.raises(InvalidArgument, match="in use; choose another metrics port"):
            await second.run()


def test_bad_metrics_options_are_refused() -> None:
    with pytest.raises(ValueError, match="metrics_port"):
        WorkerOptions(queues=("q",), metrics_port=70000)
    with pytest.raises(ValueError, match="metrics_interval"):
        WorkerOptions(queues=("q",), metrics_port=0, metrics_interval=0)


WITHOUT_EXTRAS = """
import sys

sys.modules["prometheus_client"] = None  # as if not installed: importing it raises ImportError
sys.modules["opentelemetry"] = None

import anyio

import durable
from durable import tracing


def extras_imported():
    return sorted(
        name
        for name, module in sys.modules.items()
        if name.startswith(("prometheus_client", "opentelemetry")) and module is not None
    )


async def main():
    assert not tracing.AVAILABLE
    app = durable.Durable(sys.argv[1])

    @app.task
    async def hello(ctx, params):
        return params + 1

    async with app, anyio.create_task_group() as tg:
        worker = await tg.start(app.run_worker, None, 2, 5.0)
        assert worker.metrics is None
        handle = await hello.spawn(41, headers={"k": "v"})
        assert (await handle.result(timeout=10)).result == 42
        assert (await app.get_task(handle.task_id)).headers == {"k": "v"}
        worker.drain()
    try:
        await app.run_worker(metrics_port=0, handle_signals=False)
    except durable.InvalidArgument as exc:
        print("refused:", exc)
    assert extras_imported() == [], extras_imported()


anyio.run(main)
"""


def test_without_the_extras_durable_runs_and_a_metrics_port_is_a_clear_error(dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WITHOUT_EXTRAS), dsn],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert done.returncode == 0, done.stderr
    assert "refused: a metrics port needs prometheus-client" in done.stdout
    assert "pip install 'durable[metrics]'" in done.stdout


def test_importing_durable_imports_no_metrics_library() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, durable; assert 'prometheus_client' not in sys.modules, 'imported'",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
