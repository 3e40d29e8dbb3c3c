"""The library is quiet: it logs through the stdlib logger ``durable`` (structlog's events, the
stdlib's handlers and levels), prints nothing by itself, and keeps a user's configuration."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

_SPAWN = """
import anyio
from durable import Durable, TaskContext

app = Durable({dsn!r})

@app.task
async def noop(ctx: TaskContext, params: None) -> None:
    return None

async def main() -> None:
    async with app:
        await noop.spawn(None)

anyio.run(main)
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_an_unconfigured_spawn_prints_nothing(dsn: str) -> None:
    done = _python(_SPAWN.format(dsn=dsn))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ""


def test_a_users_stdlib_configuration_applies(dsn: str) -> None:
    configure = textwrap.dedent(
        """
        import logging, sys
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="USER %(message)s")
        """
    )
    done = _python(configure + _SPAWN.format(dsn=dsn))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("USER ") and "task.spawned" in line for line in lines), lines


def test_a_users_structlog_configuration_is_kept(dsn: str) -> None:
    configure = textwrap.dedent(
        """
        import logging, sys, structlog
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
        structlog.configure(
            processors=[structlog.processors.KeyValueRenderer(key_order=["event"])],
            logger_factory=structlog.stdlib.LoggerFactory(),
        )
        """
    )
    done = _python(configure + _SPAWN.format(dsn=dsn))
    assert done.returncode == 0, done.stderr
    assert any(line.startswith("event='task.spawned'") for line in done.stdout.splitlines())
