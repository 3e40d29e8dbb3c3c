"""The database goes away mid-run and comes back: workers reconnect with backoff and finish.

* a private embedded server is restarted (stopped, down for a while, started again), while a
  spawn is tried during the outage: it raises :class:`DatabaseUnavailable` promptly and leaves
  nothing half-written;
* every backend of the test's database on the shared server is terminated
  (``pg_terminate_backend``), twice;
* a worker's ``/readyz`` says the database is unreachable while it is down, and ready once the
  worker claims again; ``durable_database_errors_total`` counted the failed claims.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from fault_app import QUEUE, fault_worker
from prometheus_client.parser import text_string_to_metric_families
from support.database import connection
from support.processes import WorkerProcess, wait_event
from support.waiting import wait_all_finished, wait_for, wait_until

from durable import (
    Client,
    DatabaseUnavailable,
    Durable,
    RunState,
    SpawnOptions,
    TaskResult,
    TaskState,
)
from durable.protocol.embedded import EmbeddedServer

pytestmark = pytest.mark.anyio

STEPS = {"n": 4, "step_s": 0.1}
OPTIONS = SpawnOptions(max_attempts=5)
#: The test's own client meets the outage too: its polls count DatabaseUnavailable as "not yet".
OUTAGE = (DatabaseUnavailable,)


@pytest.fixture
async def embedded_dsn(embedded_server: EmbeddedServer) -> str:
    return await anyio.to_thread.run_sync(embedded_server.start)


async def _completed(client: Client) -> int:
    counts = await client.queue_counts()
    return sum(c.count for c in counts if c.state is TaskState.COMPLETED)


async def _first_completions(client: Client) -> None:
    """Until the workers completed a few tasks: an outage from now on lands mid-run."""

    async def some_done() -> bool:
        return await _completed(client) >= 3

    await wait_until(some_done, timeout=15, what="the first tasks to complete", tolerate=OUTAGE)


async def _assert_nothing_half_written(dsn: str) -> None:
    """Every task has exactly one live-or-final history: runs, and at most one live run; a
    completed task has exactly one completed run; checkpoints belong to runs of their task."""
    async with connection(dsn) as conn:
        orphans = await conn.fetchval(
            "select count(*) from durable.tasks t"
            " where not exists (select 1 from durable.runs r where r.task_id = t.task_id)"
        )
        assert orphans == 0
        bad_completed = await conn.fetchval(
            "select count(*) from durable.tasks t where t.state = 'completed' and"
            " (select count(*) from durable.runs r"
            "   where r.task_id = t.task_id and r.state = 'completed') <> 1"
        )
        assert bad_completed == 0
        stray = await conn.fetchval(
            "select count(*) from durable.checkpoints c where not exists"
            " (select 1 from durable.runs r where r.run_id = c.run_id and r.task_id = c.task_id)"
        )
        assert stray == 0


async def _assert_reconnected(worker: WorkerProcess) -> None:
    """The worker survived, lost its LISTEN connection and re-opens it. The other worker may
    have finished every task while this one still backs off, so the re-open is waited for."""
    assert worker.returncode is None, worker.log_text()[-3000:]
    lost = worker.events("worker.listener_lost")
    assert lost, worker.log_text()[-3000:]
    await wait_event(worker, "db.reconnected", during="listen", timeout=10)


async def test_restart_mid_run_workers_reconnect_and_spawn_fails_fast(
    embedded_server: EmbeddedServer, embedded_dsn: str, tmp_path: Path
) -> None:
    async with (
        Client(embedded_dsn) as client,
        fault_worker(embedded_dsn, tmp_path / "a.log", "worker-a") as a,
        fault_worker(embedded_dsn, tmp_path / "b.log", "worker-b") as b,
    ):
        infos = [await client.spawn(QUEUE, "steps", STEPS, OPTIONS) for _ in range(24)]
        await _first_completions(client)

        # down for 2 s, mid-run; meanwhile spawn until a spawn meets the outage
        attempts: list[tuple[str, float, bool]] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, lambda: embedded_server.restart(2.0))
            with anyio.fail_after(10):
                while not any(not ok for _, _, ok in attempts):
                    key = f"outage-{uuid.uuid4().hex}"
                    started = time.monotonic()
                    try:
                        await client.spawn(QUEUE, "steps", STEPS, SpawnOptions(idempotency_key=key))
                        ok = True
                    except DatabaseUnavailable:
                        ok = False
                    attempts.append((key, time.monotonic() - started, ok))
                    await anyio.sleep(0.05)
        failed = [(key, took) for key, took, ok in attempts if not ok]
        assert failed
        assert max(took for _, took in failed) < 5.0, failed

        # after recovery: each spawn that raised either happened fully or not at all; the ones
        # that did not happen are spawned now (the idempotency key makes that safe either way)
        for key, _ in failed:
            info = await wait_for(
                lambda key=key: client.spawn(  # type: ignore[misc]
                    QUEUE, "steps", STEPS, SpawnOptions(idempotency_key=key)
                ),
                timeout=10,
                what="a spawn after the restart",
                tolerate=OUTAGE,
            )
            infos.append(info)

        records = await wait_all_finished(
            client, [i.task_id for i in infos], timeout=30, tolerate=OUTAGE
        )
        assert all(r.state is TaskState.COMPLETED for r in records), [
            (r.state, [(x.state, x.failure_reason) for x in r.runs]) for r in records
        ]
        assert not any(run.state is RunState.RUNNING for r in records for run in r.runs)

        for worker in (a, b):
            await _assert_reconnected(worker)
            down = worker.events("db.unavailable")
            assert down, worker.log_text()[-3000:]
            assert all(e["attempt"] >= 1 and e["delay_s"] > 0 for e in down)
            await wait_event(worker, "db.reconnected", during="claim", timeout=10)
        # the worker LISTENs again (a NOTIFY wakes it)
        async with connection(embedded_dsn) as conn:
            listening = await conn.fetchval(
                "select count(*) from pg_stat_activity where query = 'LISTEN \"durable_work\"'"
            )
        assert listening >= 2
    await _assert_nothing_half_written(embedded_dsn)


async def test_every_backend_terminated_mid_run(dsn: str, tmp_path: Path) -> None:
    async with (
        Client(dsn) as client,
        fault_worker(dsn, tmp_path / "a.log", "worker-a") as a,
        fault_worker(dsn, tmp_path / "b.log", "worker-b") as b,
    ):
        infos = [await client.spawn(QUEUE, "steps", STEPS, OPTIONS) for _ in range(24)]
        await _first_completions(client)
        async with connection(dsn) as admin:
            for _ in range(2):
                terminated = await admin.fetchval(
                    "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity"
                    " where datname = current_database() and pid <> pg_backend_pid()) t"
                )
                assert terminated > 0
                await anyio.sleep(0.3)

        records = await wait_all_finished(
            client, [i.task_id for i in infos], timeout=30, tolerate=OUTAGE
        )
        assert all(r.state is TaskState.COMPLETED for r in records), [
            (r.state, [(x.state, x.failure_reason) for x in r.runs]) for r in records
        ]
        for worker in (a, b):
            await _assert_reconnected(worker)
    await _assert_nothing_half_written(dsn)


async def test_a_result_waiter_whose_listen_connection_dies_still_sees_the_outcome(
    dsn: str,
) -> None:
    """The notification of the outcome is sent while the waiter's LISTEN connection is gone: the
    waiter notices the lost connection (no polling of its task), re-opens it and reads the
    outcome."""
    async with Durable(dsn) as app, anyio.create_task_group() as tg:
        handle = await app.spawn("job", {"n": 1}, queue=QUEUE)
        outcome: list[TaskResult[Any]] = []

        async def wait() -> None:
            outcome.append(await handle.result(timeout=20))

        tg.start_soon(wait)
        await anyio.sleep(0.3)  # the waiter is listening
        async with connection(dsn) as admin:
            terminated = await admin.fetchval(
                "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity"
                " where datname = current_database() and query ilike 'listen%') t"
            )
            assert terminated == 1
        claims = await app.client.claim(QUEUE, "w1", 30)
        await app.client.complete(QUEUE, claims[0].run_id, {"ok": True})

        async def seen() -> bool:
            return bool(outcome)

        await wait_until(seen, timeout=10, what="the waiter to see the outcome")
    assert outcome[0].result == {"ok": True}


async def _get(port: int, path: str) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()

    return await anyio.to_thread.run_sync(get)


async def test_readyz_follows_a_restart_of_the_database(
    embedded_server: EmbeddedServer, embedded_dsn: str, tmp_path: Path
) -> None:
    async with fault_worker(embedded_dsn, tmp_path / "w.log", "worker-m", metrics_port=0) as w:
        port = (await wait_event(w, "metrics.serving", timeout=15))["port"]

        async def answers(status: int, text: str) -> bool:
            return await _get(port, "/readyz") == (status, text)

        await wait_until(lambda: answers(200, "ready\n"), timeout=10, what="the worker ready")
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, lambda: embedded_server.restart(3.0))
            await wait_until(
                lambda: answers(503, "not ready: the database is unreachable\n"),
                timeout=10,
                what="/readyz to say the database is unreachable",
                interval=0.05,
            )
            assert await _get(port, "/healthz") == (200, "ok\n")  # the process is alive
        await wait_until(lambda: answers(200, "ready\n"), timeout=20, what="ready again")
        _, text = await _get(port, "/metrics")
        errors = {
            sample.labels["during"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "durable_database_errors_total"
        }
        assert errors["claim"] >= 1
        assert w.returncode is None
