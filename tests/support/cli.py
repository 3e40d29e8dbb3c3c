"""The real ``durable`` command in subprocesses (``python -m durable``): run to completion, or
``durable worker`` in the background, and the tables it prints read back.

The commands run in :data:`CLI_APPS`, so that ``durable worker cli_app:app`` imports
``cli_app.py``; ``$DURABLE_DSN`` is the test's database, or unset (``dsn=None``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from durable import Client, TaskRecord
from support.processes import WorkerProcess, start_process
from support.waiting import wait_all_finished

#: The folder of ``cli_app.py``: the commands run there.
CLI_APPS = Path(__file__).resolve().parents[1] / "acceptance"
CLI_TIMEOUT_S = 30.0  # one short command, start to exit
TASKS_TIMEOUT_S = 30.0  # a worker finishing the tasks of a test


@dataclass(frozen=True, slots=True)
class Done:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def cli_env(dsn: str | None, **extra: str) -> dict[str, str]:
    """The test's environment without durable's variables, then ``$DURABLE_DSN`` and ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("DURABLE_DSN", "DURABLE_HOME")}
    if dsn is not None:
        env["DURABLE_DSN"] = dsn
    env.update(extra)
    return env


async def durable(*args: str, dsn: str | None, **env: str) -> Done:
    """Run ``python -m durable ARGS`` to completion."""
    with anyio.fail_after(CLI_TIMEOUT_S):
        done = await anyio.run_process(
            [sys.executable, "-m", "durable", *args],
            cwd=CLI_APPS,
            env=cli_env(dsn, **env),
            check=False,
            stdin=subprocess.DEVNULL,
        )
    return Done(done.returncode, done.stdout.decode(), done.stderr.decode())


def cli_worker(
    log_path: Path, *args: str, dsn: str | None, **env: str
) -> contextlib.AbstractAsyncContextManager[WorkerProcess]:
    """``durable worker ARGS`` in the background, logging to ``log_path``; killed if still up."""
    return start_process(
        [sys.executable, "-m", "durable", "worker", *args],
        cwd=CLI_APPS,
        env=cli_env(dsn, **env),
        log_path=log_path,
        worker_id="durable worker",
    )


async def wait_outcomes(
    client: Client, task_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, TaskRecord]:
    """Each task's record by id, once all of them finished (within :data:`TASKS_TIMEOUT_S`)."""
    records = await wait_all_finished(client, task_ids, timeout=TASKS_TIMEOUT_S)
    return {record.task_id: record for record in records}


def section_rows(out: str, title: str) -> list[list[str]]:
    """The table under line ``title``, header first, split on runs of two spaces or more."""
    section = out.split(title + "\n")[1].split("\n\n")[0]
    return [
        [cell.strip() for cell in line.strip().split("  ") if cell.strip()]
        for line in section.splitlines()
    ]
