"""Every example runs to completion against a fresh database, so the examples cannot rot.

The guides of the documentation site include these files (``--8<--``), so their code is what
runs here; ``tests/unit/test_docs.py`` checks that no page holds Python of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from durable import Durable, TaskContext

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 60

pytestmark = pytest.mark.timeout(TIMEOUT_S + 30)


def run_example(name: str, dsn: str, command: list[str] | None = None) -> str:
    env = {**os.environ, "DURABLE_DSN": dsn}
    env.pop("DURABLE_HOME", None)
    result = subprocess.run(
        command or [sys.executable, str(EXAMPLES / name)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    report = f"{name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, report
    assert result.stderr == "", f"{name} wrote to stderr (warnings or errors):\n{result.stderr}"
    return result.stdout


def test_every_example_is_tested() -> None:
    tested = {
        "quickstart.py",
        "checkpoints.py",
        "producer.py",
        "workflow.py",
        "hello.py",
        "tasks.py",
        "failures.py",
        "scheduling.py",
        "batches.py",
        "deploy.py",
        "observability.py",
        "wsgi_app.py",
        "fastapi_app.py",
    }
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested
    assert {path.name for path in (EXAMPLES / "node").glob("*.mjs")} == {"client.mjs"}


def test_hello(dsn: str) -> None:
    assert run_example("hello.py", dsn) == "{'price': 42}\n"


def test_tasks_steps_progress_and_a_sync_handler(dsn: str) -> None:
    out = run_example("tasks.py", dsn)
    assert "import_file: {'file': 'orders.csv', 'rows': 39, 'chunks': 3}" in out
    assert "thumbnail: cat.png@64px, cat.png@512px" in out
    assert "steps: ['split', 'load', 'load#2', 'load#3']" in out
    assert "progress: 100 tags: ['tenant-a']" in out
    assert "chunks loaded: ['orders.csv[0]', 'orders.csv[1]', 'orders.csv[2]']" in out


def test_failures_snooze_hook_failed_work_and_retry_from_checkpoint(dsn: str) -> None:
    out = run_example("failures.py", dsn)
    assert "poll_export: 'export 7 ready' after 3 runs, attempt 1" in out  # snoozes spend none
    assert "on_discard: sync_invoices exhausted: ValueError: ledger refused the batch" in out
    assert "sync_invoices failed errored validation ValueError" in out
    assert "  recovery: retry_from_checkpoint after fetch" in out
    assert "group: 1 x sync_invoices ValueError (validation)" in out
    assert "by class: {'validation': 1}" in out
    assert "after the retry: completed 200" in out
    assert "fetch ran 1 time(s), post ran 3 time(s)" in out  # the fetch replayed, not re-run
    assert "failed work left: 0" in out


def test_scheduling_and_flow_control(dsn: str) -> None:
    out = run_example("scheduling.py", dsn)
    assert "unique: created=True, then created=False, same task: True" in out
    assert "debounce: created=False, params now {'doc': 9, 'rev': 4}" in out
    assert "priority: report of 2030-01-01" in out
    assert "scheduled: pending, starts 2030-01-03" in out
    assert "cron: added=True, ['digest-eu', 'nightly', 'report:30 8 * * MON-FRI'," in out
    assert "paused queue: pending while paused, then completed" in out
    assert "dependencies: load got 5 rows" in out
    assert "cancel_by: 1 cancelled" in out
    assert "partners: every call ran" in out
    assert "key_limit: 4 syncs ran, concurrency key 'acme'" in out


def test_batch_runs_one_callback(dsn: str) -> None:
    out = run_example("batches.py", dsn)
    assert "batch of 3, created=True" in out
    assert "finished=True total=3 pending=0" in out
    assert re.search(r"publish_album got: \{.*'completed': 3.*\} \{'album': 7\}", out)
    assert "some images failed" not in out
    assert "same key again: created = False" in out


def test_deploy_migrates_then_checks_only(dsn: str, server_dsn: str) -> None:
    out = run_example("deploy.py", dsn)
    assert re.search(r"^durable migrate: schema up to date", out, re.M)
    assert "send_welcome completed, code version 2024-06-01" in out


def test_observability_logs_spans_metrics_and_the_mounted_console(dsn: str) -> None:
    out = run_example("observability.py", dsn)
    assert re.search(r"\[info\s*\] run\.completed .*task_name=send_welcome", out)
    assert (
        'metrics: 200 [\'durable_runs_started_total{queue="emails",task_name="send_welcome"}'
        " 1.0']" in out
    )
    assert "readyz: 200" in out
    assert "spans: ['durable.run send_welcome', 'durable.spawn send_welcome']" in out
    assert "console as a viewer: 200" in out
    assert "console anonymous: 403" in out


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_a_node_postgres_client_speaks_the_protocol(dsn: str) -> None:
    """examples/node/client.mjs: JavaScript with node-postgres, nothing of durable's."""
    node_dir = EXAMPLES / "node"
    if not (node_dir / "node_modules" / "pg").is_dir():
        npm = shutil.which("npm")
        assert npm, "node without npm: install npm to fetch node-postgres"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=node_dir,
            check=True,
            timeout=TIMEOUT_S,
            capture_output=True,
        )
    out = run_example("node/client.mjs", dsn, ["node", str(node_dir / "client.mjs")])
    spawned = re.search(r"^spawned (\S+) created=true$", out, re.M)
    assert spawned, out
    assert "completed greet attempt 1: hello, ada" in out
    assert 'result: completed {"by":"node","greeting":"hello, ada"}' in out
    assert "late write refused: SQLSTATE DU001" in out
    for_python = re.search(r"^spawned for python (\S+)$", out, re.M)
    assert for_python, out

    async def check() -> None:
        app = Durable(dsn)
        ran: list[dict[str, str]] = []

        @app.task(name="python_side", queue="polyglot_py")
        async def python_side(ctx: TaskContext, params: dict[str, str]) -> str:
            ran.append(params)
            return "hello from python"

        async with app, anyio.create_task_group() as tg:
            record = await app.get_task(uuid.UUID(spawned[1]))
            assert (record.state, record.result) == (
                "completed",
                {"by": "node", "greeting": "hello, ada"},
            )
            steps = await app.client.get_checkpoints("polyglot", record.task_id)
            assert [(c.step_name, c.value) for c in steps] == [("greeting", "hello, ada")]
            worker = await tg.start(
                lambda task_status: app.run_worker(
                    poll_interval=0.1, handle_signals=False, task_status=task_status
                )
            )
            outcome = await app.result(uuid.UUID(for_python[1]), timeout=30)
            assert outcome.result == "hello from python"
            worker.drain()
        assert ran == [{"from": "node"}]

    anyio.run(check)


def test_quickstart(dsn: str) -> None:
    out = run_example("quickstart.py", dsn)
    assert "database: $DURABLE_DSN" in out
    assert "add           completed: 5" in out
    assert "flaky         completed: 'fetched https://example.com/feed on attempt 2'" in out
    assert re.search(r"run 1 failed \(errored: the upstream hung up", out)
    assert "daily_report  completed: {'line': '2024-06-01: 3 orders, 245 in total'" in out
    assert re.search(r"^3 tasks done in \d+\.\d\ds", out, re.MULTILINE)


def test_checkpoints_survive_a_crashed_worker(dsn: str) -> None:
    out = run_example("checkpoints.py", dsn)
    assert "first worker exited with -9 (killed by SIGKILL)" in out
    assert "second worker exited with 0" in out
    # step 1 ran once, in the first process; steps 2 and 3 of attempt 2 ran in the second one
    assert out.count("step 1 reserve_stock  runs in") == 1
    assert re.search(r"step 1 reserve_stock  runs in pid \d+, attempt 1", out)
    assert re.search(r"step 2 charge_card    runs in pid \d+, attempt 2", out)
    assert re.search(r"step 3 ship           runs in pid \d+, attempt 2", out)
    assert "completed after 2 runs" in out
    assert "run 1 failed (crash)" in out
    assert "run 2 completed" in out
    assert re.search(r"reserve_stock  written by run 1 in pid", out)
    assert re.search(r"ship           written by run 2 in pid", out)


def test_producer_spawns_once_per_idempotency_key(dsn: str) -> None:
    out = run_example("producer.py", dsn)
    created = re.findall(r"^delivery of (evt_\w+): task (\S+) created=(True|False)$", out, re.M)
    assert [c[2] for c in created] == ["True", "True", "False"]
    assert created[0][:2] == created[2][:2]  # the redelivery got the first delivery's task
    assert "3 deliveries, 2 tasks, charge_card ran 2 times" in out
    assert out.count(": completed {") == 3


def test_workflow_gathers_receives_a_message_parks_and_patches(dsn: str) -> None:
    out = run_example("workflow.py", dsn)
    assert out.count("  charge: 42 for order-") == 1
    picked = re.findall(r"^  pick: (\w+)$", out, re.MULTILINE)
    assert sorted(picked) == ["kettle", "mug", "teapot"]  # each child ran once
    assert "task is sleeping, waiting for the address" in out  # its published state
    assert "sent the address to the task: woke it" in out
    assert re.search(r"task is sleeping, waiting for packed:order-\w+", out)
    assert "woke 1 task" in out
    result = (
        r"\{'address': 'Lyon', 'receipt': 'R-order-\w+', 'shelves': \['S-6', 'S-3', 'S-6'\],"
        r" 'wrapped': 'wrapped 3 items', 'packed_by': 'warehouse-3'\}"
    )
    assert re.search(rf"ship_order completed: {result}", out)
    # parked by the message, the sleep and the event (and by the gather and the child's result
    # unless those children were done already)
    assert re.search(r"^runs: (suspended, ){3,5}completed$", out, re.MULTILINE)
    assert "patch 'gift-wrap': new path, recorded as $patch:gift-wrap" in out
    assert "code version of every run: ['2024-06-01']" in out


def test_the_wsgi_app_spawns_from_threads_through_the_blocking_api(dsn: str) -> None:
    out = run_example("wsgi_app.py", dsn)
    assert "8 orders posted from 8 threads: 8 tasks" in out
    assert "o-1 posted again: created=False, same task: True" in out
    for n in range(1, 9):
        assert f"o-{n}: completed 'receipt for o-{n}: {10 * n} EUR'" in out


def test_the_fastapi_app_spawns_in_the_requests_transaction(dsn: str) -> None:
    out = run_example("fastapi_app.py", dsn)
    assert "POST /signups ada: 201" in out
    assert "POST /signups ada again: 409 ada@example.com has signed up already" in out
    assert "welcome: completed 'welcome mail sent to ada@example.com'" in out
    assert "send_welcome tasks: 1" in out  # the rolled-back request's spawn left nothing
