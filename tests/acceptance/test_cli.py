"""The real ``durable`` command, run as ``python -m durable`` in subprocesses.

Each subprocess runs in this directory (:mod:`support.cli`), so ``durable worker cli_app:app``
imports ``cli_app.py``, with ``$DURABLE_DSN`` set to the test's own database. Waits are
deadlines, never bare sleeps.
"""

from __future__ import annotations

import json
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.cli import TASKS_TIMEOUT_S, cli_worker, durable, section_rows, wait_outcomes
from support.waiting import wait_task

import durable as durable_package
from durable.client import Client
from durable.protocol.records import RunState, SpawnOptions, TaskState

pytestmark = pytest.mark.anyio

UNREACHABLE_DSN = "postgresql://nobody@127.0.0.1:1/nowhere"

COMMANDS = [
    "worker",
    "migrate",
    "spawn",
    "status",
    "list",
    "failed",
    "retry",
    "cancel",
    "show",
    "emit",
    "cancel-by",
    "discard",
    "replay",
    "prune",
    "dashboard",
    "send",
    "state",
    "queue",
    "cron",
]


async def spawn(dsn: str, *args: str) -> dict[str, Any]:
    done = await durable("spawn", *args, dsn=dsn)
    assert done.code == 0, done.err
    info: dict[str, Any] = json.loads(done.out)
    return info


def rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()]


def show_fields(out: str) -> dict[str, str]:
    """The task section of ``durable show``: field -> value."""
    fields: dict[str, str] = {}
    for line in out.split("\n\n")[0].splitlines():
        name, value = line.split(maxsplit=1)
        fields[name] = value
    return fields


def show_runs(out: str) -> list[list[str]]:
    """The runs table of ``durable show``, header first, split on runs of two spaces or more."""
    return section_rows(out, "runs:")


# --- usage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, *COMMANDS])
async def test_every_command_has_help(command: str | None) -> None:
    done = await durable(*([command] if command else []), "--help", dsn=UNREACHABLE_DSN)
    assert done.code == 0, done.err
    assert done.out.startswith(f"usage: durable{' ' + command if command else ''} ")


async def test_no_command_prints_help_and_where_data_lives(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = await durable(dsn=None, DURABLE_HOME=str(home))
    assert done.code == 0
    assert done.out.startswith("usage: durable")
    assert "worker" in done.out
    assert "spawn" in done.out
    assert done.err_lines == [f"durable: using embedded PostgreSQL, data in {home.resolve()}"]
    assert not home.exists()  # it only says where: nothing started


async def test_version_prints_the_package_version() -> None:
    done = await durable("--version", dsn=UNREACHABLE_DSN)
    assert (done.code, done.out, done.err) == (0, f"durable {durable_package.__version__}\n", "")


async def test_migrate_reports_the_schema_state(dsn: str) -> None:
    done = await durable("migrate", dsn=dsn)
    assert done.code == 0, done.err
    assert done.out.startswith("schema up to date: version ")


async def test_database_unavailable_is_one_line_and_exit_1() -> None:
    done = await durable("status", dsn=UNREACHABLE_DSN)
    assert done.code == 1
    assert len(done.err_lines) == 1, done.err
    assert done.err.startswith(
        "durable: DatabaseUnavailable: cannot reach PostgreSQL at 127.0.0.1:1"
    )


# --- spawn ---------------------------------------------------------------------------------------


async def test_spawn_prints_json_and_honours_the_idempotency_key(dsn: str) -> None:
    args = ["spawn", "add", "--params", '{"a": 1, "b": 2}', "--idempotency-key", "k1"]
    first_done = await durable("--dsn", dsn, *args, dsn=None)  # global --dsn, no $DURABLE_DSN
    assert first_done.code == 0, first_done.err
    first = json.loads(first_done.out)
    second_done = await durable(*args, "--dsn", dsn, dsn=UNREACHABLE_DSN)  # --dsn after COMMAND
    assert second_done.code == 0, second_done.err
    second = json.loads(second_done.out)

    assert len(first_done.out.splitlines()) == 1
    assert set(first) == {"task_id", "run_id", "attempt", "created"}
    assert (first["created"], second["created"]) == (True, False)
    assert first["task_id"] == second["task_id"]
    assert first["attempt"] == 1
    uuid.UUID(first["run_id"])


async def test_spawn_passes_its_options(dsn: str, client: Client) -> None:
    info = await spawn(
        dsn, "add", "-q", "emails", "--max-attempts", "7", "--delay", "3600", "--priority", "5"
    )
    task = await client.get_task("emails", uuid.UUID(info["task_id"]))
    assert (task.queue, task.task_name, task.params, task.max_attempts) == (
        "emails",
        "add",
        None,
        7,
    )
    assert task.runs[0].available_at > task.created_at


async def test_spawn_passes_the_timeouts(dsn: str, client: Client) -> None:
    info = await spawn(dsn, "add", "--timeout", "30", "--heartbeat-timeout", "5")
    [claim] = await client.claim("default", "cli-test", 60)
    assert claim.task_id == uuid.UUID(info["task_id"])
    assert (claim.timeout, claim.heartbeat_timeout) == (30.0, 5.0)


async def test_spawn_refuses_params_that_are_not_json(dsn: str) -> None:
    done = await durable("spawn", "add", "--params", "{a: 1}", dsn=dsn)
    assert done.code == 2
    assert done.out == ""
    assert len(done.err_lines) == 1, done.err
    assert "argument --params: not JSON" in done.err


async def test_spawn_on_a_bad_queue_name_is_a_durable_error(dsn: str) -> None:
    done = await durable("spawn", "add", "-q", "Bad Queue", dsn=dsn)
    assert done.code == 1
    assert done.out == ""
    assert len(done.err_lines) == 1, done.err
    assert done.err.startswith("durable: InvalidQueueName: 'Bad Queue'")


# --- status --------------------------------------------------------------------------------------


async def test_status_counts_tasks_per_queue_and_state(dsn: str, client: Client) -> None:
    for n in range(3):
        await client.spawn("default", "add", {"a": n, "b": n})
    cancelled = await client.spawn("default", "add", None)
    await client.cancel("default", cancelled.task_id)
    await client.spawn("emails", "send", None)

    done = await durable("status", dsn=dsn)
    assert done.code == 0, done.err
    assert rows(done.out) == [
        ["queue", "pending", "running", "sleeping", "completed", "failed", "cancelled", "paused"],
        ["default", "3", "0", "0", "0", "0", "1", "no"],
        ["emails", "1", "0", "0", "0", "0", "0", "no"],
    ]

    done = await durable("status", "-q", "emails", "--json", dsn=dsn)
    assert done.code == 0, done.err
    assert json.loads(done.out) == [
        {
            "queue": "emails",
            "pending": 1,
            "running": 0,
            "sleeping": 0,
            "completed": 0,
            "failed": 0,
            "cancelled": 0,
            "paused": False,
        }
    ]


# --- the worker ----------------------------------------------------------------------------------


async def test_worker_runs_tasks_and_drains_on_sigterm(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    spawned = [await client.spawn("default", "add", {"a": n, "b": 10}) for n in range(6)]
    log = tmp_path / "worker.log"
    async with cli_worker(log, "cli_app:app", "-q", "default", "-c", "2", dsn=dsn) as running:
        results = await wait_outcomes(client, [s.task_id for s in spawned])
        code = await running.stop()

    assert code == 0, running.log_text()
    assert [results[s.task_id].state for s in spawned] == [TaskState.COMPLETED] * 6
    assert [results[s.task_id].result for s in spawned] == [n + 10 for n in range(6)]
    events = running.event_names()
    assert events.count("run.completed") == 6
    assert "worker.started" in events
    assert events[-1] == "worker.stopped"

    show = await durable("show", str(spawned[0].task_id), dsn=dsn)
    assert show.code == 0, show.err
    fields = dict(line.split(maxsplit=1) for line in show.out.split("\n\n")[0].splitlines())
    assert fields["state"] == "completed"
    assert fields["result"] == "10"
    runs_section = show.out.split("runs:\n")[1].split("\n\n")[0]
    assert rows(runs_section)[1][:2] == ["1", "completed"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cli_app", "'cli_app' is not MODULE:APP"),
        ("no_such_module:app", "no module named 'no_such_module'"),
        ("cli_app:missing", "module 'cli_app' has no attribute 'missing'"),
        ("cli_app:not_an_app", "cli_app:not_an_app is a int, not a durable.Durable"),
    ],
)
async def test_worker_refuses_a_bad_module_app(spec: str, message: str) -> None:
    done = await durable("worker", spec, dsn=UNREACHABLE_DSN)  # fails before connecting
    assert done.code == 2
    assert len(done.err_lines) == 1, done.err
    assert done.err.startswith(f"durable worker: error: {message}")


async def test_failed_retry_and_show(dsn: str, client: Client, tmp_path: Path) -> None:
    info = await spawn(dsn, "boom", "--params", '{"name": "x"}', "--max-attempts", "1")
    task_id = uuid.UUID(info["task_id"])
    # the worker's --dsn wins over a $DURABLE_DSN that points nowhere
    args = ("--dsn", dsn, "cli_app:app", "-q", "default")
    async with cli_worker(tmp_path / "worker.log", *args, dsn=UNREACHABLE_DSN) as running:
        results = await wait_outcomes(client, [task_id])
        code = await running.stop()
    assert code == 0, running.log_text()
    assert results[task_id].state is TaskState.FAILED
    assert "task.dead" in running.event_names()

    failed = await durable("failed", dsn=dsn)
    assert failed.code == 0, failed.err
    assert failed.out.startswith("failed work: 1 task: 1 dead, 0 retrying; by reason class: ")
    groups = section_rows(failed.out, "groups (reason x error type x task name):")
    assert groups[0][:6] == ["count", "reason", "class", "error_type", "task_name", "queue"]
    assert groups[1][:6] == ["1", "errored", "unknown", "RuntimeError", "boom", "default"]
    header, *lines = section_rows(failed.out, "tasks, newest failure first:")
    assert header == [
        "failed_at",
        "queue",
        "task_name",
        "task_id",
        "state",
        "attempt",
        "reason",
        "class",
        "error",
        "recovery",
    ]
    assert len(lines) == 1
    assert lines[0][1:] == [
        "default",
        "boom",
        str(task_id),
        "failed",
        "1/1",
        "errored",
        "unknown",
        "RuntimeError: boom on x",
        "retry from 'prepare'",
    ]

    show = await durable("show", str(task_id), dsn=dsn)
    assert show.code == 0, show.err
    runs_section = show.out.split("runs:\n")[1].split("\n\n")[0]
    run_line = rows(runs_section)[1]
    assert run_line[:2] == ["1", "failed"]
    assert "errored" in run_line
    assert "RuntimeError: boom on x" in runs_section
    checkpoints = show.out.split("checkpoints:\n")[1]
    assert rows(checkpoints)[1][0] == "prepare"
    assert '"prepared x"' in checkpoints

    retried = await durable("retry", str(task_id), dsn=dsn)
    assert retried.code == 0, retried.err
    assert "failed -> pending" in retried.out
    task = await client.get_task(None, task_id)
    assert task.state is TaskState.PENDING
    assert [(r.attempt, r.state) for r in task.runs] == [
        (1, RunState.FAILED),
        (2, RunState.PENDING),
    ]
    assert str(task.runs[1].run_id) in retried.out

    failed = await durable("failed", "--json", dsn=dsn)
    assert failed.code == 0, failed.err
    [row] = json.loads(failed.out)["rows"]
    assert (row["task_id"], row["state"], row["failure_reason"], row["recovery"]) == (
        str(task_id),
        "retrying",
        "errored",
        "none",
    )
    retrying = section_rows((await durable("failed", dsn=dsn)).out, "tasks, newest failure first:")
    assert retrying[1][4] == "retrying"

    again = await durable("retry", str(task_id), dsn=dsn)
    assert again.code == 1
    assert len(again.err_lines) == 1, again.err
    assert again.err.startswith("durable: InvalidState: ")


# --- cancel, retry, show by id -------------------------------------------------------------------


async def test_cancel_a_pending_task(dsn: str, client: Client) -> None:
    info = await spawn(dsn, "add", "--delay", "3600")
    task_id = info["task_id"]

    done = await durable("cancel", task_id, dsn=dsn)
    assert done.code == 0, done.err
    assert done.out.strip() == f"task {task_id} (add on default): pending -> cancelled"
    result = await client.get_result(None, uuid.UUID(task_id))
    assert result.state is TaskState.CANCELLED

    again = await durable("cancel", task_id, "-q", "default", dsn=dsn)
    assert again.code == 1
    assert len(again.err_lines) == 1, again.err
    assert again.err.startswith("durable: InvalidState: ")


async def test_show_json(dsn: str, client: Client) -> None:
    info = await client.spawn("default", "add", {"a": 1}, SpawnOptions(idempotency_key="k"))
    done = await durable("show", str(info.task_id), "--json", dsn=dsn)
    assert done.code == 0, done.err
    doc = json.loads(done.out)
    assert (doc["task_id"], doc["state"], doc["params"], doc["checkpoints"]) == (
        str(info.task_id),
        "pending",
        {"a": 1},
        [],
    )
    assert [run["run_id"] for run in doc["runs"]] == [str(info.run_id)]


@pytest.mark.parametrize("command", ["retry", "cancel", "show", "discard", "replay"])
async def test_task_id_errors(dsn: str, command: str) -> None:
    bad = await durable(command, "not-a-uuid", dsn=dsn)
    assert bad.code == 2
    assert len(bad.err_lines) == 1, bad.err
    assert "not a task id" in bad.err

    missing = str(uuid.uuid4())
    unknown = await durable(command, missing, dsn=dsn)
    assert unknown.code == 1
    assert unknown.err_lines == [f"durable: TaskNotFound: no task {missing}"]


# --- job options, tags, progress, events, bulk cancel --------------------------------------------


async def test_spawn_with_tags_partition_dependency_and_start_time(
    dsn: str, client: Client
) -> None:
    dependency = await client.spawn("default", "add", {"a": 1, "b": 2})
    info = await spawn(
        dsn,
        "add",
        "--tag",
        "billing",
        "--tag",
        "eu",
        "--partition-key",
        "tenant-a",
        "--depends-on",
        str(dependency.task_id),
        "--at",
        "2030-01-02T03:04:05+02:00",
    )
    task = await client.get_task(None, uuid.UUID(info["task_id"]))
    assert task.tags == ["billing", "eu"]
    assert task.partition_key == "tenant-a"
    assert task.depends_on == [dependency.task_id]
    assert task.pending_dependencies == [dependency.task_id]
    assert task.scheduled_at == datetime(2030, 1, 2, 1, 4, 5, tzinfo=UTC)

    show = await durable("show", info["task_id"], dsn=dsn)
    assert show.code == 0, show.err
    fields = show_fields(show.out)
    assert fields["tags"] == "billing, eu"
    assert fields["partition_key"] == "tenant-a"
    assert fields["depends_on"] == str(dependency.task_id)
    assert fields["pending_dependencies"] == str(dependency.task_id)
    assert fields["scheduled_at"] == "2030-01-02 01:04:05Z"
    assert "progress" not in fields  # fields of features the task does not use are left out
    assert "waiting_for" not in fields
    header, run = show_runs(show.out)
    assert header == [
        "attempt",
        "state",
        "worker",
        "version",
        "started",
        "finished",
        "available",
        "reason",
        "error",
    ]
    assert run[:2] == ["1", "pending"]
    assert "when woken" in run  # only its dependency's completion makes it claimable

    # "Z" is an offset too; without dependencies the run is available at the given time
    info = await spawn(dsn, "add", "--at", "2030-01-01T00:00:00Z")
    task = await client.get_task(None, uuid.UUID(info["task_id"]))
    assert task.scheduled_at == task.runs[0].available_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert (task.tags, task.partition_key, task.depends_on) == ([], None, [])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--at", "2030-01-01T09:00:00"], "'2030-01-01T09:00:00' has no timezone"),
        (["--at", "tomorrow"], "not an ISO 8601 time: 'tomorrow'"),
        (["--at", "2030-01-01T09:00:00Z", "--delay", "5"], "not allowed with argument"),
        (["--depends-on", "nope"], "not a task id (a UUID): 'nope'"),
        (["--tag", ""], "a tag must not be empty"),
    ],
)
async def test_spawn_refuses_bad_job_options(dsn: str, args: list[str], message: str) -> None:
    done = await durable("spawn", "add", *args, dsn=dsn)
    assert done.code == 2
    assert done.out == ""
    assert len(done.err_lines) == 1, done.err
    assert message in done.err


async def test_spawn_depending_on_an_unknown_task_is_a_durable_error(dsn: str) -> None:
    missing = uuid.uuid4()
    done = await durable("spawn", "add", "--depends-on", str(missing), dsn=dsn)
    assert done.code == 1
    assert done.out == ""
    assert done.err_lines == [f"durable: InvalidArgument: depends_on names no task: {missing}"]


async def test_status_and_failed_filter_by_tags(dsn: str, client: Client) -> None:
    await client.spawn("default", "add", None, SpawnOptions(tags=["billing"]))
    await client.spawn("default", "add", None, SpawnOptions(tags=["billing", "eu"]))
    await client.spawn("default", "add", None)
    await client.spawn("emails", "send", None, SpawnOptions(tags=["eu"]))
    # two tasks on queue "jobs" fail for good, one tagged billing
    dead_billing = await client.spawn(
        "jobs", "boom", None, SpawnOptions(max_attempts=1, tags=["billing"])
    )
    dead_other = await client.spawn("jobs", "boom", None, SpawnOptions(max_attempts=1))
    for claim in await client.claim("jobs", "cli-test", 60, 2):
        await client.fail("jobs", claim.run_id, {"type": "RuntimeError", "message": "no"})

    done = await durable("status", "--tag", "billing", dsn=dsn)
    assert done.code == 0, done.err
    assert rows(done.out) == [
        ["queue", "pending", "running", "sleeping", "completed", "failed", "cancelled", "paused"],
        ["default", "2", "0", "0", "0", "0", "0", "no"],
        ["jobs", "0", "0", "0", "0", "1", "0", "no"],
    ]
    done = await durable("status", "--tag", "billing", "--tag", "eu", "--json", dsn=dsn)
    assert done.code == 0, done.err
    assert [(row["queue"], row["pending"]) for row in json.loads(done.out)] == [("default", 1)]
    done = await durable("status", "--tag", "nobody", dsn=dsn)
    assert rows(done.out) == [
        ["queue", "pending", "running", "sleeping", "completed", "failed", "cancelled", "paused"]
    ]

    done = await durable("failed", dsn=dsn)
    assert len(section_rows(done.out, "tasks, newest failure first:")) == 3  # header, 2 tasks
    done = await durable("failed", "--tag", "billing", dsn=dsn)
    assert done.code == 0, done.err
    [line] = section_rows(done.out, "tasks, newest failure first:")[1:]
    assert line[3] == str(dead_billing.task_id)
    done = await durable("failed", "-q", "jobs", "--tag", "billing", "--json", dsn=dsn)
    assert done.code == 0, done.err
    assert [row["task_id"] for row in json.loads(done.out)["rows"]] == [str(dead_billing.task_id)]
    assert str(dead_other.task_id) not in done.out


async def test_show_a_parked_task_and_emit_its_event(dsn: str, client: Client) -> None:
    """Drive the run with the low-level client: progress, then a wait with a timeout."""
    info = await client.spawn(
        "default", "report", {"n": 1}, SpawnOptions(tags=["nightly"], partition_key="tenant-b")
    )
    [claim] = await client.claim("default", "cli-test", 60)
    await client.set_progress("default", claim.run_id, 40, {"rows": 400})
    status, _ = await client.await_event("default", claim.run_id, "pay", "payment", 3600)
    assert status == "suspended"

    done = await durable("show", str(info.task_id), "--json", dsn=dsn)
    assert done.code == 0, done.err
    doc = json.loads(done.out)
    assert doc["state"] == "sleeping"
    assert (doc["tags"], doc["partition_key"], doc["parent_task_id"]) == (
        ["nightly"],
        "tenant-b",
        None,
    )
    assert (doc["depends_on"], doc["pending_dependencies"]) == ([], [])
    progress = doc["progress"]
    assert (progress["pct"], progress["detail"], progress["run_id"]) == (
        40,
        {"rows": 400},
        str(claim.run_id),
    )
    datetime.fromisoformat(progress["at"])
    [wait] = doc["waiting_for"]
    assert (wait["step_name"], wait["event_name"], wait["child_task_id"]) == (
        "pay",
        "payment",
        None,
    )
    timeout_at = datetime.fromisoformat(wait["timeout_at"])
    datetime.fromisoformat(doc["scheduled_at"])
    assert [run["state"] for run in doc["runs"]] == ["suspended", "sleeping"]
    assert [run["attempt"] for run in doc["runs"]] == [1, 1]

    done = await durable("show", str(info.task_id), dsn=dsn)
    assert done.code == 0, done.err
    fields = show_fields(done.out)
    assert fields["state"] == "sleeping"
    assert fields["tags"] == "nightly"
    assert fields["partition_key"] == "tenant-b"
    assert fields["progress"].startswith('40% {"rows": 400} (at ')
    assert fields["waiting_for"] == (
        f"event 'payment' (step 'pay', timeout {timeout_at.strftime('%Y-%m-%d %H:%M:%SZ')})"
    )
    assert "wakes_at" not in fields  # a wait shows its timeout in waiting_for
    _, suspended, sleeping = show_runs(done.out)
    assert suspended[:3] == ["1", "suspended", "cli-test"]
    assert sleeping[:2] == ["1", "sleeping"]
    assert timeout_at.strftime("%Y-%m-%d %H:%M:%SZ") in sleeping  # it wakes at the timeout

    done = await durable("emit", "payment", '{"amount": 12}', dsn=dsn)
    assert done.code == 0, done.err
    assert done.out.strip() == "event 'payment' emitted: 1 waiting task woken"
    [claim] = await client.claim("default", "cli-test", 60)  # claimable now, not in an hour
    assert await client.await_event("default", claim.run_id, "pay", "payment", 3600) == (
        "received",
        {"amount": 12},
    )


async def test_emit_wakes_a_task_parked_by_a_worker(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    info = await spawn(dsn, "wait_for", "--params", '{"event": "go"}', "--tag", "demo")
    task_id = uuid.UUID(info["task_id"])
    log = tmp_path / "worker.log"
    async with cli_worker(log, "cli_app:app", "-q", "default", "-c", "2", dsn=dsn) as running:
        await wait_task(
            client,
            task_id,
            lambda t: bool(t.waiting_for),
            timeout=TASKS_TIMEOUT_S,
            what="the task to park",
        )

        show = await durable("show", str(task_id), dsn=dsn)
        assert show.code == 0, show.err
        fields = show_fields(show.out)
        assert fields["state"] == "sleeping"
        assert fields["tags"] == "demo"
        assert fields["progress"].startswith("50% waiting for the event (at ")
        assert fields["waiting_for"] == "event 'go' (step '$event:go', no timeout)"
        _, suspended, sleeping = show_runs(show.out)
        assert suspended[:2] == ["1", "suspended"]
        assert sleeping[:2] == ["1", "sleeping"]
        assert "when woken" in sleeping
        status = await durable("status", "--tag", "demo", "--json", dsn=dsn)
        assert [(row["queue"], row["sleeping"]) for row in json.loads(status.out)] == [
            ("default", 1)
        ]

        done = await durable("emit", "go", '{"n": 7}', dsn=dsn)
        assert done.code == 0, done.err
        assert done.out.strip() == "event 'go' emitted: 1 waiting task woken"
        results = await wait_outcomes(client, [task_id])
        code = await running.stop()
    assert code == 0, running.log_text()
    assert results[task_id].state is TaskState.COMPLETED, results[task_id]
    assert results[task_id].result == {"n": 7}
    task = await client.get_task(None, task_id)
    assert task.progress is not None
    assert task.progress.pct == 100
    assert task.waiting_for == []

    # nobody waits now: the event is stored (a later wait gets it at once) and nobody is woken
    done = await durable("emit", "go", dsn=dsn)
    assert done.code == 0, done.err
    assert done.out.strip() == "event 'go' emitted: 0 waiting tasks woken"


async def test_emit_refuses_a_payload_that_is_not_json(dsn: str) -> None:
    done = await durable("emit", "go", "{nope}", dsn=dsn)
    assert done.code == 2
    assert len(done.err_lines) == 1, done.err
    assert "argument PAYLOAD_JSON: not JSON" in done.err


async def test_cancel_by_cancels_the_unfinished_tasks_matching_every_filter(
    dsn: str, client: Client
) -> None:
    batch = [
        await client.spawn("default", "add", None, SpawnOptions(tags=["batch-1"])) for _ in range(2)
    ]
    tagged_email = await client.spawn("emails", "send", None, SpawnOptions(tags=["batch-1"]))
    email = await client.spawn("emails", "send", None)
    other = await client.spawn("emails", "digest", None)
    finished = await client.spawn("default", "add", None, SpawnOptions(tags=["batch-1"]))
    await client.cancel("default", finished.task_id)

    none = await durable("cancel-by", dsn=dsn)
    assert none.code == 2
    assert none.err_lines == [
        "durable cancel-by: error: give at least one filter: -q QUEUE, --task NAME or --tag T"
    ]

    done = await durable("cancel-by", "-q", "default", "--tag", "batch-1", dsn=dsn)
    assert done.code == 0, done.err
    assert done.out.strip() == "2 tasks cancelled"
    for spawned in batch:
        task = await client.get_task(None, spawned.task_id)
        assert task.state is TaskState.CANCELLED
        assert task.failure is not None
        assert task.failure.error is not None
        assert task.failure.error["type"] == "CancelledByFilter"
    assert (await client.get_task(None, tagged_email.task_id)).state is TaskState.PENDING

    done = await durable("cancel-by", "-q", "emails", "--task", "send", dsn=dsn)
    assert done.code == 0, done.err
    assert done.out.strip() == "2 tasks cancelled"
    for spawned in (tagged_email, email):
        assert (await client.get_task(None, spawned.task_id)).state is TaskState.CANCELLED
    assert (await client.get_task(None, other.task_id)).state is TaskState.PENDING

    done = await durable("cancel-by", "--tag", "batch-1", dsn=dsn)
    assert done.code == 0, done.err
    assert done.out.strip() == "0 tasks cancelled"

    bad = await durable("cancel-by", "-q", "Bad Queue", dsn=dsn)
    assert bad.code == 1
    assert len(bad.err_lines) == 1, bad.err
    assert bad.err.startswith("durable: InvalidQueueName: 'Bad Queue'")


async def test_worker_refuses_a_metrics_port_in_use(dsn: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = await durable(
            "worker", "cli_app:app", "--metrics-port", str(port), "--grace-period", "0", dsn=dsn
        )
    assert done.code == 1, done.err
    assert f"durable: InvalidArgument: cannot serve metrics on 127.0.0.1:{port}" in done.err


# --- messages, published state, code versions -----------------------------------------------------


async def test_send_state_and_show_a_task_waiting_in_recv(dsn: str, client: Client) -> None:
    """Drive the run with the low-level client: published state, then a receive that parks."""
    info = await client.spawn("default", "listen", None)
    [claim] = await client.claim("default", "cli-test", 60, code_version="v7")
    await client.set_state("default", claim.run_id, "stage", {"step": "listening", "n": 2})
    await client.set_state("default", claim.run_id, "rows", 40)
    assert await client.receive_message("default", claim.run_id, "$recv:cmd", "cmd") == (
        "suspended",
        None,
    )
    task_id = str(info.task_id)

    done = await durable("state", task_id, dsn=dsn)
    assert done.code == 0, done.err
    assert rows(done.out) == [
        ["key", "value"],
        ["rows", "40"],
        ["stage", '{"n":', "2,", '"step":', '"listening"}'],  # jsonb orders the keys
    ]
    done = await durable("state", task_id, "stage", "--json", dsn=dsn)
    assert json.loads(done.out) == {"stage": {"step": "listening", "n": 2}}
    done = await durable("state", task_id, "missing", dsn=dsn)
    assert done.out.strip() == f"task {task_id} published no state under 'missing'"

    show = await durable("show", task_id, dsn=dsn)
    assert show.code == 0, show.err
    fields = show_fields(show.out)
    assert fields["waiting_for"] == "a message on topic 'cmd' (step '$recv:cmd', no timeout)"
    header, suspended, sleeping = show_runs(show.out)
    assert header[:4] == ["attempt", "state", "worker", "version"]
    assert suspended[:4] == ["1", "suspended", "cli-test", "v7"]
    assert sleeping[:4] == ["1", "sleeping", "-", "-"]
    assert section_rows(show.out, "published state:") == [
        ["key", "value"],
        ["rows", "40"],
        ["stage", '{"n": 2, "step": "listening"}'],
    ]
    doc = json.loads((await durable("show", task_id, "--json", dsn=dsn)).out)
    assert doc["published_state"] == {"rows": 40, "stage": {"step": "listening", "n": 2}}
    assert [run["code_version"] for run in doc["runs"]] == ["v7", None]

    done = await durable("send", task_id, "cmd", '{"n": 1}', dsn=dsn)
    assert done.code == 0, done.err
    assert done.out.strip() == f"message on 'cmd' sent to task {task_id}: it was waiting: woken"
    done = await durable("send", task_id, "cmd", dsn=dsn)
    assert done.out.strip() == f"message on 'cmd' sent to task {task_id}: stored for its next recv"
    [claim] = await client.claim("default", "cli-test", 60)  # woken: claimable now
    assert await client.receive_message("default", claim.run_id, "$recv:cmd", "cmd") == (
        "received",
        {"n": 1},
    )
    assert await client.receive_message("default", claim.run_id, "$recv:cmd#2", "cmd") == (
        "received",
        None,
    )


async def test_send_refuses_bad_input(dsn: str, client: Client) -> None:
    info = await client.spawn("default", "listen", None)
    missing = str(uuid.uuid4())
    unknown = await durable("send", missing, "cmd", dsn=dsn)
    assert unknown.code == 1
    assert unknown.err_lines == [f"durable: TaskNotFound: no task {missing}"]
    long_topic = await durable("send", str(info.task_id), "t" * 256, dsn=dsn)
    assert long_topic.code == 1
    assert long_topic.err_lines == [
        "durable: InvalidArgument: topic must be a string of 1 to 255 characters, got 256"
        " characters"
    ]
    not_json = await durable("send", str(info.task_id), "cmd", "{nope}", dsn=dsn)
    assert not_json.code == 2
    assert "argument PAYLOAD_JSON: not JSON" in not_json.err
    await client.cancel(None, info.task_id)
    ended = await durable("send", str(info.task_id), "cmd", dsn=dsn)
    assert ended.code == 1
    assert ended.err.startswith("durable: InvalidState: ")
