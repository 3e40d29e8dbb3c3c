"""Each operator action end to end: the real CLI and a real worker (``durable worker cli_app:app``).

``durable list`` finds a running task by its live state (``tasks.state`` says pending), by key
and by params, and pages newest first.

Failed work is found by filter and grouped; a bulk retry is a dry run until ``--yes``, then goes
at the given rate and resumes from the checkpoint; bulk cancel stops retrying work; discard ends a
task for good; replay runs a finished task again from a step; prune deletes old finished tasks;
``show`` keeps every attempt. A paused queue stays paused across a SIGKILL and a restart of its
worker until ``durable queue resume``; ``durable cron`` adds, lists, pauses, resumes and removes
schedules.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import cli_app
import pytest
from support.cli import TASKS_TIMEOUT_S, cli_worker, durable, section_rows, wait_outcomes
from support.waiting import wait_task

from durable.client import Client
from durable.protocol.records import (
    FailedWorkState,
    ReasonClass,
    RunState,
    SpawnOptions,
    TaskState,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def _spawn_many(client: Client, task: str, n: int) -> list[uuid.UUID]:
    """``n`` tasks spawned with their ``@app.task`` options (``durable spawn`` has no app)."""
    options = cli_app.app.registry[task].options()
    return [(await client.spawn("default", task, None, options)).task_id for _ in range(n)]


async def test_find_group_and_redrive_failed_work(dsn: str, client: Client, tmp_path: Path) -> None:
    flaky = await _spawn_many(client, "flaky", 3)
    broken_log = tmp_path / "broken.log"
    async with cli_worker(broken_log, "cli_app:app", dsn=dsn, FLAKY_BROKEN="1") as broken:
        await wait_outcomes(client, flaky)
        assert await broken.stop() == 0
    first_fetch = {t: (await client.get_checkpoints("default", t))[0].value for t in flaky}

    # the failed-work view: grouped, classified, filterable
    done = await durable("failed", "--reason-class", "transport", dsn=dsn)
    assert done.code == 0, done.err
    assert "by reason class: transport 3" in done.out
    [_header, group] = section_rows(done.out, "groups (reason x error type x task name):")
    assert group[:6] == ["3", "errored", "transport", "ConnectionError", "flaky", "default"]
    doc = json.loads((await durable("failed", "--task", "flaky", "--json", dsn=dsn)).out)
    assert doc["reason_classes"] == {"transport": 3}
    assert {row["recovery"] for row in doc["rows"]} == {"retry_from_checkpoint"}

    # bulk retry: a dry run by default changes nothing
    dry = await durable("retry", "--task", "flaky", "--reason", "errored", dsn=dsn)
    assert dry.code == 0, dry.err
    assert dry.out.startswith("dry run: 3 matches: dead tasks")
    assert "nothing changed: add --yes" in dry.out
    assert [(await client.get_task(None, t)).state for t in flaky] == [TaskState.FAILED] * 3

    async with cli_worker(tmp_path / "fixed.log", "cli_app:app", dsn=dsn) as fixed:
        # try the fix on one first ...
        one = await durable("retry", "--task", "flaky", "--yes", "--limit", "1", dsn=dsn)
        assert one.code == 0, one.err
        assert one.out.splitlines()[-1] == "retried 1 task; 0 not changed"
        [tried] = [t for t in flaky if str(t) in one.out]
        results = await wait_outcomes(client, [tried])
        assert results[tried].state is TaskState.COMPLETED
        # ... it resumed from its checkpoint: the step's recorded value, not a new one
        assert results[tried].result == first_fetch[tried]
        # ... then the rest, throttled
        rest = await durable(
            "retry", "--queue", "default", "--reason-class", "transport", "--yes", "--rate", "20/s",
            dsn=dsn,
        )  # fmt: skip
        assert rest.code == 0, rest.err
        lines = rest.out.splitlines()
        assert len(lines) == 3
        assert all("failed -> pending, new run" in line for line in lines[:2])
        assert lines[2] == "retried 2 tasks; 0 not changed"
        results = await wait_outcomes(client, flaky)
        assert {r.state for r in results.values()} == {TaskState.COMPLETED}
        assert {t: results[t].result for t in flaky} == first_fetch
        assert await fixed.stop() == 0
    assert await client.failed_work(task_name="flaky") == []

    # every attempt is kept and shown
    show = await durable("show", str(tried), dsn=dsn)
    runs = section_rows(show.out, "runs:")
    assert [row[:2] for row in runs[1:]] == [["1", "failed"], ["2", "completed"]], show.out
    worker_ids = {run.claimed_by for run in (await client.get_task(None, tried)).runs}
    assert len(worker_ids) == 2  # two workers, each named on its attempt
    assert all(str(w) in show.out for w in worker_ids)
    errors = show.out.split("errors:\n")[1].split("\n\n")[0]
    assert "attempt 1 errored on " in errors
    assert "ConnectionError: payment gateway unreachable" in errors
    assert "Traceback (most recent call last)" in errors


async def test_bulk_cancel_discard_replay_and_prune(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    unlucky = await _spawn_many(client, "unlucky", 2)
    [pipeline] = await _spawn_many(client, "pipeline", 1)
    [doomed] = await _spawn_many(client, "flaky", 1)
    broken_log = tmp_path / "broken.log"
    async with cli_worker(broken_log, "cli_app:app", dsn=dsn, FLAKY_BROKEN="1") as running:
        await wait_outcomes(client, [pipeline, doomed])
        for task_id in unlucky:
            await wait_task(
                client,
                task_id,
                lambda t: t.failure is not None,
                timeout=TASKS_TIMEOUT_S,
                what="a first failure",
            )
        assert await running.stop() == 0

    rows = await client.failed_work()
    assert {(r.task_id, r.state, r.reason_class) for r in rows} == {
        (unlucky[0], FailedWorkState.RETRYING, ReasonClass.TIMEOUT),
        (unlucky[1], FailedWorkState.RETRYING, ReasonClass.TIMEOUT),
        (doomed, FailedWorkState.FAILED, ReasonClass.TRANSPORT),
    }

    # bulk cancel acts on retrying work only
    dry = await durable("cancel", "--all", dsn=dsn)
    assert dry.out.startswith("dry run: 2 matches: retrying tasks")
    done = await durable("cancel", "--reason-class", "timeout", "--yes", dsn=dsn)
    assert done.code == 0, done.err
    assert done.out.count("retrying -> cancelled") == 2
    assert [(await client.get_task(None, t)).state for t in unlucky] == [TaskState.CANCELLED] * 2

    # discard ends a task for good: out of the failed work, never retried
    done = await durable("discard", str(doomed), dsn=dsn)
    assert done.code == 0, done.err
    assert done.out.strip().endswith("failed -> discarded (it will not run again)")
    assert doomed not in {r.task_id for r in await client.failed_work()}
    again = await durable("retry", str(doomed), dsn=dsn)
    assert again.code == 1
    assert "was discarded" in again.err
    # a bulk discard of what is left: the two cancelled tasks
    done = await durable("discard", "--task", "unlucky", "--yes", dsn=dsn)
    assert done.out.splitlines()[-1] == "discarded 2 tasks; 0 not changed"
    assert await client.failed_work() == []

    # replay a completed task from step b: a keeps its value, b and c run again
    before = {c.step_name: c.value for c in await client.get_checkpoints("default", pipeline)}
    done = await durable("replay", str(pipeline), "--from-step", "b", dsn=dsn)
    assert done.code == 0, done.err
    assert "completed -> pending" in done.out
    assert "from step 'b'" in done.out
    async with cli_worker(tmp_path / "replay.log", "cli_app:app", dsn=dsn) as running:
        results = await wait_outcomes(client, [pipeline])
        assert await running.stop() == 0
    after = {c.step_name: c.value for c in await client.get_checkpoints("default", pipeline)}
    assert after["a"] == before["a"]
    assert after["b"] != before["b"]
    assert after["c"] != before["c"]
    result: Any = results[pipeline].result
    assert result == [after["a"], after["b"], after["c"]]
    task = await client.get_task(None, pipeline)
    assert [run.state for run in task.runs] == [RunState.COMPLETED, RunState.COMPLETED]

    # prune: old finished tasks go in bounded batches; a live task stays
    live = await client.spawn("default", "add", {"a": 1, "b": 2})
    done = await durable("prune", "--older-than", "0s", "--batch", "1", dsn=dsn)
    assert done.code == 0, done.err
    assert done.out.startswith("pruned 4 tasks that ended more than 0s ago")
    assert "(1 completed, 1 failed, 2 cancelled)" in done.out
    counts = await client.queue_counts()
    assert [(c.state, c.count) for c in counts] == [(TaskState.PENDING, 1)]
    assert (await client.get_task(None, live.task_id)).state is TaskState.PENDING
    bad = await durable("prune", "--older-than", "soon", dsn=dsn)
    assert bad.code == 2
    assert "not a duration" in bad.err


async def _spawn_after(client: Client, task: str, params: Any, *after: uuid.UUID) -> uuid.UUID:
    """A task that depends on ``after`` (with its ``@app.task`` options)."""
    options = cli_app.app.registry[task].options(depends_on=list(after))
    return (await client.spawn("default", task, params, options)).task_id


async def test_retry_revives_the_dependents_a_failure_cancelled(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    [root] = await _spawn_many(client, "flaky", 1)
    first = await _spawn_after(client, "add", {"a": 1, "b": 2}, root)
    second = await _spawn_after(client, "pipeline", None, first)
    async with cli_worker(tmp_path / "broken.log", "cli_app:app", dsn=dsn, FLAKY_BROKEN="1") as w:
        await wait_outcomes(client, [root, first, second])
        assert await w.stop() == 0
    assert [(await client.get_task(None, t)).state for t in (root, first, second)] == [
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.CANCELLED,
    ]

    # the dry run lists the dependents a retry would revive
    dry = await durable("retry", "--task", "flaky", dsn=dsn)
    assert dry.code == 0, dry.err
    [_header, *dependents, nothing_changed] = section_rows(
        dry.out,
        "and 2 dependents their ends cancelled, revived with them, each waiting for its "
        "dependencies again (--no-dependents to leave them cancelled):",
    )
    assert [row[2:] for row in dependents] == [[str(first), str(root)], [str(second), str(first)]]
    assert nothing_changed[0].startswith("nothing changed: add --yes")
    assert (await client.get_task(None, first)).state is TaskState.CANCELLED

    done = await durable("retry", str(root), dsn=dsn)
    assert done.code == 0, done.err
    lines = done.out.splitlines()
    assert lines[0].startswith(f"task {root} (flaky on default): failed -> pending, new run")
    assert lines[1].startswith(f"  revived dependent {first} (add on default): cancelled -> ")
    assert lines[2].startswith(f"  revived dependent {second} (pipeline on default): ")
    # they wait for their dependencies: not claimable before the root completed
    for task_id, dependency in ((first, root), (second, first)):
        waiting = await client.get_task(None, task_id)
        assert (waiting.state, waiting.pending_dependencies) == (TaskState.PENDING, [dependency])

    async with cli_worker(tmp_path / "fixed.log", "cli_app:app", dsn=dsn) as fixed:
        results = await wait_outcomes(client, [root, first, second])
        assert await fixed.stop() == 0
    assert [results[t].state for t in (root, first, second)] == [TaskState.COMPLETED] * 3
    assert results[first].result == 3
    for task_id, dependency in ((first, root), (second, first)):
        started = results[task_id].runs[-1].started_at
        finished = results[dependency].runs[-1].finished_at
        assert started is not None
        assert finished is not None
        assert started >= finished


async def test_bulk_retry_revives_dependents_once_and_no_dependents_leaves_them(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    roots = await _spawn_many(client, "flaky", 2)
    dependents = [
        await _spawn_after(client, "add", {"a": i, "b": 1}, r) for i, r in enumerate(roots)
    ]
    async with cli_worker(tmp_path / "broken.log", "cli_app:app", dsn=dsn, FLAKY_BROKEN="1") as w:
        await wait_outcomes(client, [*roots, *dependents])
        assert await w.stop() == 0

    # one root without its dependent: the dependent stays cancelled
    alone = await durable("retry", str(roots[0]), "--no-dependents", dsn=dsn)
    assert alone.code == 0, alone.err
    assert "revived" not in alone.out
    assert (await client.get_task(None, dependents[0])).state is TaskState.CANCELLED

    # every dead task: roots[1] revives its dependent (reported once, with it); dependents[0],
    # whose root is retrying now, is retried on its own and waits for that root
    done = await durable("retry", "--all", "--yes", dsn=dsn)
    assert done.code == 0, done.out + done.err
    lines = done.out.splitlines()
    assert lines[-1] == "retried 3 tasks; 0 not changed"
    [revived_with] = [line for line in lines if "revived with its dependency" in line]
    assert revived_with.startswith(f"task {dependents[1]} (add on default): failed -> pending")
    assert revived_with.endswith(f"revived with its dependency {roots[1]}")
    for dependent, root in zip(dependents, roots, strict=True):
        record = await client.get_task(None, dependent)
        assert (record.state, record.pending_dependencies) == (TaskState.PENDING, [root])

    async with cli_worker(tmp_path / "fixed.log", "cli_app:app", dsn=dsn) as fixed:
        results = await wait_outcomes(client, [*roots, *dependents])
        assert await fixed.stop() == 0
    assert {r.state for r in results.values()} == {TaskState.COMPLETED}


async def test_list_finds_a_running_task_by_its_live_state_and_pages(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    running = await client.spawn("default", "linger", {"seconds": 60})
    later = SpawnOptions(idempotency_key="order-7", delay=3600)
    keyed = await client.spawn("default", "add", {"a": 7, "b": 1}, later)
    async with cli_worker(tmp_path / "worker.log", "cli_app:app", dsn=dsn) as worker:
        await wait_task(
            client,
            running.task_id,
            lambda record: record.state is TaskState.RUNNING,
            timeout=TASKS_TIMEOUT_S,
            what="the lingering task to run",
        )
        by_state = await durable("list", "--state", "running", dsn=dsn)
        as_json = await durable("list", "--state", "running", "--json", dsn=dsn)
        by_key = await durable("list", "--key", "order-7", dsn=dsn)
        by_params = await durable("list", "--params", '{"a": 7}', dsn=dsn)
        first = await durable("list", "--limit", "1", dsn=dsn)
        cursor = first.out.strip().splitlines()[-1].split("--before ")[1]
        second = await durable("list", "--limit", "1", "--before", cursor, dsn=dsn)
        bad = await durable("list", "--state", "dead", dsn=dsn)
        worker.kill()
        await worker.wait(10)

    assert by_state.code == 0, by_state.err
    [header, row] = [line.split() for line in by_state.out.splitlines()]
    assert header[:5] == ["created", "task_id", "task_name", "queue", "state"]
    assert row[2:6] == [str(running.task_id), "linger", "default", "running"]
    doc = json.loads(as_json.out)
    assert [t["task_id"] for t in doc["tasks"]] == [str(running.task_id)]
    assert doc["tasks"][0]["state"] == "running"
    assert str(keyed.task_id) in by_key.out
    assert str(running.task_id) not in by_key.out
    assert str(keyed.task_id) in by_params.out
    # newest first, a page at a time: the keyed task, then the lingering one
    assert str(keyed.task_id) in first.out
    assert cursor == str(keyed.task_id)
    assert str(running.task_id) in second.out
    assert bad.code == 2
    assert "invalid choice: 'dead'" in bad.err


# --- paused queues and cron schedules -------------------------------------------------------------


async def test_a_paused_queue_stays_paused_across_a_worker_kill_and_restart(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    done = await durable("queue", "pause", "default", dsn=dsn)
    assert (done.code, done.out) == (0, "queue 'default' paused\n"), done.err
    held = [(await client.spawn("default", "add", {"a": n, "b": 1})).task_id for n in range(3)]
    args = ("cli_app:app", "-q", "default", "-q", "other", "--poll-interval", "0.1")

    async def other_task_done() -> None:
        # the positive signal that the worker claims: a task of the other queue completes
        task_id = (await client.spawn("other", "add", {"a": 1, "b": 1})).task_id
        await wait_outcomes(client, [task_id])

    async with cli_worker(tmp_path / "first.log", *args, dsn=dsn) as first:
        await other_task_done()
        first.kill()
        await first.wait(10)
    async with cli_worker(tmp_path / "second.log", *args, dsn=dsn):
        await other_task_done()
        states = [(await client.get_task(None, t)).state for t in held]
        status = await durable("status", "--json", dsn=dsn)
        listed = await durable("queue", "list", "--json", dsn=dsn)
        table = await durable("queue", "list", dsn=dsn)

        done = await durable("queue", "resume", "default", dsn=dsn)
        assert (done.code, done.out) == (0, "queue 'default' resumed\n"), done.err
        outcomes = await wait_outcomes(client, held)
    again = await durable("queue", "resume", "default", dsn=dsn)

    assert states == [TaskState.PENDING] * 3
    by_queue = {row["queue"]: row for row in json.loads(status.out)}
    assert (by_queue["default"]["pending"], by_queue["default"]["paused"]) == (3, True)
    assert (by_queue["other"]["completed"], by_queue["other"]["paused"]) == (2, False)
    [default, other] = json.loads(listed.out)
    assert (default["queue"], default["paused"], default["pending"]) == ("default", True, 3)
    assert default["paused_at"] is not None
    assert (other["queue"], other["paused"], other["paused_at"]) == ("other", False, None)
    header, default_line = (line.split() for line in table.out.splitlines()[:2])
    assert header[:5] == ["queue", "state", "pending", "running", "sleeping"]
    assert default_line[:3] == ["default", "paused", "3"]
    assert [o.state for o in outcomes.values()] == [TaskState.COMPLETED] * 3
    assert again.out == "queue 'default' was not paused\n"


async def test_cron_schedules_are_managed_from_the_cli(dsn: str, client: Client) -> None:
    add = (
        "cron", "add", "nightly", "0 3 * * *", "add", "-q", "default", "--tz", "Europe/Paris",
        "--params", '{"a": 1, "b": 2}', "--missed", "latest", "--max-attempts", "5",
    )  # fmt: skip
    done = await durable(*add, dsn=dsn)
    assert (done.code, done.out) == (0, "cron schedule 'nightly' added\n"), done.err
    done = await durable(*add, dsn=dsn)
    assert done.out == "cron schedule 'nightly' updated\n"

    done = await durable("cron", "pause", "nightly", dsn=dsn)
    assert (done.code, done.out) == (0, "cron schedule 'nightly' paused\n"), done.err
    [row] = json.loads((await durable("cron", "list", "--json", dsn=dsn)).out)
    table = (await durable("cron", "list", "-q", "default", dsn=dsn)).out.splitlines()
    done = await durable("cron", "resume", "nightly", dsn=dsn)
    assert done.out == "cron schedule 'nightly' resumed\n"
    [schedule] = (await client.list_cron_schedules()).schedules
    done = await durable("cron", "remove", "nightly", dsn=dsn)
    assert done.out == "cron schedule 'nightly' removed\n"
    missing = await durable("cron", "remove", "nightly", dsn=dsn)
    bad_zone = await durable(
        "cron", "add", "x", "0 3 * * *", "add", "-q", "q", "--tz", "Mars/Base", dsn=dsn
    )
    bad_expr = await durable("cron", "add", "x", "0 25 * * *", "add", "-q", "q", dsn=dsn)

    assert (row["name"], row["expr"], row["timezone"], row["queue"]) == (
        "nightly",
        "0 3 * * *",
        "Europe/Paris",
        "default",
    )
    assert (row["task_name"], row["params"], row["missed"], row["source"]) == (
        "add",
        {"a": 1, "b": 2},
        "latest",
        "api",
    )
    assert row["options"] == {"max_attempts": 5}
    assert row["paused"] is True
    assert table[0].split()[:4] == ["name", "expr", "timezone", "queue"]
    assert table[1].split()[0] == "nightly"
    assert "paused" in table[1].split()
    assert not schedule.paused
    assert (missing.code, missing.err_lines) == (
        1,
        ["durable: ScheduleNotFound: no cron schedule named 'nightly' — see `durable cron list`"],
    )
    assert bad_zone.code == 1
    assert bad_zone.err.startswith("durable: InvalidTimeZone: invalid time zone 'Mars/Base'")
    assert bad_expr.code == 1
    assert "bad hour field" in bad_expr.err
    assert (await client.list_cron_schedules()).schedules == []
