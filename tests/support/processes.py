"""Worker apps as subprocesses: start one with its DSN and options, read its JSON log events,
wait for one, SIGTERM (drain) or SIGKILL it; whatever still runs at the end is killed and reaped.

A process's stdout and stderr go to a log file of the test's (``tmp_path``), read as it grows.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from support.waiting import wait_for

#: How long a SIGTERMed worker may take to drain and exit.
STOP_TIMEOUT_S = 10.0


@dataclass
class WorkerProcess:
    """A worker subprocess whose JSON log lines go to ``log_path``."""

    process: anyio.abc.Process
    log_path: Path
    worker_id: str

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The JSON log events so far (``event``: only those with that name and ``match``)."""
        found = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # not a log event (a warning printed by something else)
            if not isinstance(doc, dict) or (event is not None and doc.get("event") != event):
                continue
            if all(doc.get(k) == v for k, v in match.items()):
                found.append(doc)
        return found

    def event_names(self) -> list[str]:
        """The names of the log events so far, in order."""
        return [doc["event"] for doc in self.events() if "event" in doc]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost machine would."""
        self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: the worker drains."""
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        """The exit code, once it exited (within ``timeout``)."""
        with anyio.fail_after(timeout):
            return await self.process.wait()

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then the exit code (the worker drains and exits on its own)."""
        self.terminate()
        return await self.wait(timeout)


@contextlib.asynccontextmanager
async def start_process(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log_path: Path, worker_id: str
) -> AsyncIterator[WorkerProcess]:
    """Run ``argv`` with its output to ``log_path``; SIGKILL it on exit if it still runs, and
    reap it."""
    with log_path.open("wb") as log:
        process = await anyio.open_process(
            list(argv), stdin=None, stdout=log, stderr=log, cwd=cwd, env=dict(env)
        )
        try:
            yield WorkerProcess(process, log_path, worker_id)
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()
                await process.aclose()


def worker_process(
    script: Path,
    dsn: str,
    log_path: Path,
    worker_id: str,
    *args: str,
    env: Mapping[str, str] | None = None,
) -> contextlib.AbstractAsyncContextManager[WorkerProcess]:
    """Run the app ``script`` as a worker on ``dsn`` (cwd = its folder), with options ``args``
    (see :mod:`support.worker_script`) and ``env`` besides the test's environment."""
    return start_process(
        [sys.executable, str(script), *args],
        cwd=script.parent,
        env={
            **os.environ,
            "DURABLE_DSN": dsn,
            "WORKER_ID": worker_id,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        },
        log_path=log_path,
        worker_id=worker_id,
    )


async def wait_event(
    worker: WorkerProcess, event: str, *, timeout: float, **match: Any
) -> dict[str, Any]:
    """The first log event ``event`` of ``worker`` whose fields include ``match``."""

    async def probe() -> dict[str, Any] | None:
        found = worker.events(event, **match)
        return found[0] if found else None

    return await wait_for(probe, timeout=timeout, what=f"{event} {match} from {worker.worker_id}")
