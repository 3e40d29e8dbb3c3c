"""Every example runs to completion against a fresh database, so the examples cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 60

pytestmark = pytest.mark.timeout(TIMEOUT_S + 30)


def run_example(name: str, dsn: str) -> str:
    env = {**os.environ, "DURABLE_DSN": dsn}
    env.pop("DURABLE_HOME", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
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
        "wsgi_app.py",
        "fastapi_app.py",
    }
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


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
