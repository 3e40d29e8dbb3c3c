"""The chaos suite (issue 4.1): SIGKILL workers at random while they run checkpointed steps.

Four worker processes (:mod:`chaos_app`) run ``DURABLE_CHAOS_TASKS`` tasks of three checkpointed
steps each (default 300; ``make chaos`` runs 5,000) while the driver SIGKILLs a random worker that
holds running runs and starts a replacement at once, ``DURABLE_CHAOS_KILLS`` times (default 5;
``make chaos``: 20). Kills are paced by progress, so that they spread over the run whatever its
speed: kill ``k`` (from 0) waits until ``KILL_SPREAD * k / kills`` of the tasks completed, and at
least ``MIN_KILL_GAP_S`` after the previous one. Then the driver waits until every task completed.

Afterwards, from the database: every task ``completed`` with the expected result; exactly one
checkpoint per step holding the step's value, written by a run that executed the step's body; no
step body executed after its checkpoint committed (``step_exec.at <= checkpoints.created_at``,
both from the database clock); every body executed again belongs to a run that failed with
``crash``; every failed run failed with ``crash``. The figures are printed (``-s`` shows them) and
written to ``chaos-figures.txt`` in the test's tmp dir.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import asyncpg
import pytest
from chaos_app import QUEUE, SCRIPT, SIDE_TABLES, STEPS, TASK_NAME
from support.database import connection
from support.processes import WorkerProcess, worker_process
from support.waiting import wait_until

from durable import Client, Fixed, SpawnOptions

pytestmark = pytest.mark.anyio

TASKS = int(os.environ.get("DURABLE_CHAOS_TASKS", "300"))
KILLS = int(os.environ.get("DURABLE_CHAOS_KILLS", "5"))
WORKERS = 4
CONCURRENCY = 8
CLAIM_TIMEOUT_S = 1.0
POLL_INTERVAL_S = 0.2
#: Kills spread over the first this much of the completions.
KILL_SPREAD = 0.85
#: ... and stop once this much completed, whatever the count (the test then fails on it).
NEARLY_DONE = 0.98
MIN_KILL_GAP_S = 0.1
#: How often the driver looks at the progress.
TICK_S = 0.02
#: Deadlines: for the workers to register, and for all tasks to complete after the spawn.
START_TIMEOUT_S = 30.0
COMPLETE_TIMEOUT_S = 60.0 + TASKS / 20


@dataclass
class Fleet:
    """Worker subprocesses of :mod:`chaos_app`, their logs in ``log_dir``."""

    dsn: str
    log_dir: Path
    stack: contextlib.AsyncExitStack
    live: dict[str, WorkerProcess] = field(default_factory=dict)
    killed: list[WorkerProcess] = field(default_factory=list)
    started: int = 0

    async def start(self) -> str:
        worker_id = f"chaos-{self.started}"
        self.started += 1
        self.live[worker_id] = await self.stack.enter_async_context(
            worker_process(
                SCRIPT,
                self.dsn,
                self.log_dir / f"{worker_id}.log",
                worker_id,
                *("-c", str(CONCURRENCY), "--claim-timeout", str(CLAIM_TIMEOUT_S)),
                *("--poll-interval", str(POLL_INTERVAL_S), "--worker-id", worker_id),
            )
        )
        return worker_id

    def kill(self, worker_id: str) -> None:
        """SIGKILL, as the OOM killer or a lost machine would."""
        worker = self.live.pop(worker_id)
        worker.kill()
        self.killed.append(worker)


@contextlib.asynccontextmanager
async def fleet_of(dsn: str, log_dir: Path) -> AsyncIterator[Fleet]:
    """A fleet whose processes are killed (if still up) and reaped on exit."""
    async with contextlib.AsyncExitStack() as stack:
        yield Fleet(dsn, log_dir, stack)


@dataclass
class Figures:
    tasks: int
    kills: int
    in_flight: int
    replacements: int
    wall_s: float
    task_states: dict[str, int]
    run_states: dict[str, int]
    failure_reasons: dict[str, int]
    checkpoints: int
    tasks_with_three_checkpoints: int
    wrong_values: int
    wrong_results: int
    step_executions: int
    re_executions: int
    re_executed_not_by_crashed_run: int
    checkpoint_run_executions_not_one: int
    violations: int
    orphan_executions: int
    done_exec: int
    completed_without_done_exec: int

    def text(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.failure_reasons.items())) or "none"
        rows = [
            ("tasks", f"{self.tasks} x {len(STEPS)} checkpointed steps"),
            ("workers", f"{WORKERS} x concurrency {CONCURRENCY}, claim_timeout {CLAIM_TIMEOUT_S}s"),
            ("kills (SIGKILL)", f"{self.kills} (replacements started: {self.replacements})"),
            ("task states", _counts(self.task_states)),
            ("run states", _counts(self.run_states)),
            ("failed runs by reason", reasons),
            (
                "runs reaped as crash",
                f"{self.failure_reasons.get('crash', 0)}"
                f" ({self.in_flight} runs were running on the victims just before the kills)",
            ),
            (
                "step executions",
                f"{self.step_executions} (3 x tasks = {len(STEPS) * self.tasks})",
            ),
            ("re-executed before commit", str(self.re_executions)),
            ("executed after commit", f"{self.violations} (violations, must be 0)"),
            (
                "checkpoints",
                f"{self.checkpoints} ({self.tasks_with_three_checkpoints} tasks with exactly 3)",
            ),
            ("wrong step values", str(self.wrong_values)),
            ("task bodies finished", f"{self.done_exec} (done_exec rows)"),
            ("wall time", f"{self.wall_s:.1f} s ({self.tasks / self.wall_s:.0f} tasks/s)"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(
            ["chaos figures:", *(f"  {name:<{width}}  {value}" for name, value in rows)]
        )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


async def _group_counts(db: asyncpg.Connection, query: str) -> dict[str, int]:
    return {str(r[0]): int(r[1]) for r in await db.fetch(query)}


async def _figures(
    db: asyncpg.Connection, *, kills: int, in_flight: int, replacements: int, wall_s: float
) -> Figures:
    async def count(query: str) -> int:
        n = await db.fetchval(query)
        assert isinstance(n, int)
        return n

    return Figures(
        tasks=TASKS,
        kills=kills,
        in_flight=in_flight,
        replacements=replacements,
        wall_s=wall_s,
        task_states=await _group_counts(db, "select state, count(*) from durable.tasks group by 1"),
        run_states=await _group_counts(db, "select state, count(*) from durable.runs group by 1"),
        failure_reasons=await _group_counts(
            db,
            "select coalesce(failure_reason, 'none'), count(*) from durable.runs"
            " where state = 'failed' group by 1",
        ),
        checkpoints=await count("select count(*) from durable.checkpoints"),
        tasks_with_three_checkpoints=await count(
            "select count(*) from (select task_id from durable.checkpoints group by 1"
            "  having count(*) = 3 and array_agg(step_name order by step_name)"
            "  = array['s1', 's2', 's3']) t"
        ),
        # chaos_app.step_value: 10 * i + the step's position (1-based)
        wrong_values=await count(
            "select count(*) from durable.checkpoints c join durable.tasks t using (task_id)"
            " where c.value is distinct from"
            "  to_jsonb(10 * (t.params->>'i')::int + right(c.step_name, 1)::int)"
        ),
        wrong_results=await count(
            "select count(*) from durable.tasks t where t.result is distinct from"
            " jsonb_build_object('i', (t.params->>'i')::int, 'steps', jsonb_build_array("
            "  10 * (t.params->>'i')::int + 1, 10 * (t.params->>'i')::int + 2,"
            "  10 * (t.params->>'i')::int + 3))"
        ),
        step_executions=await count("select count(*) from step_exec"),
        re_executions=await count(
            "select count(*) from step_exec e join durable.checkpoints c"
            "  on c.task_id = e.task_id and c.step_name = e.step"
            " where e.run_id <> c.run_id"
        ),
        re_executed_not_by_crashed_run=await count(
            "select count(*) from step_exec e join durable.checkpoints c"
            "  on c.task_id = e.task_id and c.step_name = e.step"
            " join durable.runs r on r.run_id = e.run_id"
            " where e.run_id <> c.run_id"
            "   and not (r.state = 'failed' and r.failure_reason = 'crash')"
        ),
        checkpoint_run_executions_not_one=await count(
            "select count(*) from durable.checkpoints c where (select count(*) from step_exec e"
            "  where e.task_id = c.task_id and e.step = c.step_name and e.run_id = c.run_id) <> 1"
        ),
        violations=await count(
            "select count(*) from step_exec e join durable.checkpoints c"
            "  on c.task_id = e.task_id and c.step_name = e.step"
            " where e.at > c.created_at"
        ),
        orphan_executions=await count(
            "select count(*) from step_exec e where not exists (select 1 from"
            "  durable.checkpoints c where c.task_id = e.task_id and c.step_name = e.step)"
        ),
        done_exec=await count("select count(*) from done_exec"),
        completed_without_done_exec=await count(
            "select count(*) from durable.runs r where r.state = 'completed' and not exists"
            "  (select 1 from done_exec d where d.run_id = r.run_id)"
        ),
    )


@pytest.mark.timeout(900)
async def test_chaos_sigkill_workers_while_they_run_checkpointed_steps(
    dsn: str, tmp_path: Path
) -> None:
    async with connection(dsn) as db:
        await db.execute(SIDE_TABLES)
        async with fleet_of(dsn, tmp_path) as fleet, Client(dsn) as client:
            for _ in range(WORKERS):
                await fleet.start()

            async def all_registered() -> bool:
                n: int = await db.fetchval(
                    "select count(*) from durable.workers where stopped_at is null"
                )
                return n == WORKERS

            await wait_until(
                all_registered,
                timeout=START_TIMEOUT_S,
                what="workers to start",
                interval=TICK_S * 5,
            )

            async def completed() -> int:
                n = await db.fetchval(
                    "select count(*) from durable.tasks where state = 'completed'"
                )
                assert isinstance(n, int)
                return n

            options = SpawnOptions(max_attempts=1_000, retry=Fixed(0))
            started = anyio.current_time()
            await client.spawn_many(QUEUE, [(TASK_NAME, {"i": i}, options) for i in range(TASKS)])

            kills = 0
            in_flight = 0  # runs the victims held just before they were killed
            last_kill = -MIN_KILL_GAP_S
            with anyio.move_on_after(COMPLETE_TIMEOUT_S):
                while kills < KILLS:
                    done = await completed()
                    if done >= NEARLY_DONE * TASKS:
                        break
                    now = anyio.current_time()
                    if done >= TASKS * KILL_SPREAD * kills / KILLS and (
                        now - last_kill >= MIN_KILL_GAP_S
                    ):
                        # a worker of ours that holds running runs: the kill lands inside steps
                        busy = {
                            r[0]: r[1]
                            for r in await db.fetch(
                                "select claimed_by, count(*) from durable.runs"
                                " where state = 'running' group by 1"
                            )
                        }
                        victims = sorted(busy.keys() & fleet.live.keys())
                        if victims:
                            victim = random.choice(victims)
                            fleet.kill(victim)
                            kills += 1
                            in_flight += busy[victim]
                            last_kill = now
                            await fleet.start()
                    await anyio.sleep(TICK_S)

            async def all_completed() -> bool:
                return await completed() == TASKS

            await wait_until(
                all_completed,
                timeout=max(1.0, COMPLETE_TIMEOUT_S - (anyio.current_time() - started)),
                what=f"{TASKS} tasks to complete",
                interval=TICK_S * 5,
            )
            wall_s = anyio.current_time() - started
            for worker in fleet.live.values():
                assert worker.returncode is None, worker.log_text()
            for worker in fleet.killed:
                assert await worker.wait(timeout=10) == -signal.SIGKILL
            figures = await _figures(
                db,
                kills=kills,
                in_flight=in_flight,
                replacements=fleet.started - WORKERS,
                wall_s=wall_s,
            )

    text = figures.text()
    (tmp_path / "chaos-figures.txt").write_text(text + "\n")
    print("\n" + text)  # noqa: T201 — the chaos suite reports its figures

    assert figures.kills >= KILLS
    assert figures.task_states == {"completed": TASKS}
    assert figures.wrong_results == 0
    assert figures.checkpoints == len(STEPS) * TASKS
    assert figures.tasks_with_three_checkpoints == TASKS
    assert figures.wrong_values == 0
    assert figures.violations == 0
    assert figures.orphan_executions == 0
    assert figures.checkpoint_run_executions_not_one == 0
    assert figures.re_executed_not_by_crashed_run == 0
    assert figures.step_executions == len(STEPS) * TASKS + figures.re_executions
    assert set(figures.failure_reasons) <= {"crash"}
    assert figures.failure_reasons.get("crash", 0) >= 1
    assert figures.run_states.get("completed") == TASKS
    assert set(figures.run_states) <= {"completed", "failed"}
    assert figures.completed_without_done_exec == 0
