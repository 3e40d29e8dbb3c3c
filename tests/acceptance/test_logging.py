"""The library is quiet: it logs through the stdlib logger ``durable`` (structlog's events, the
stdlib's handlers and levels), prints nothing by itself, and keeps a user's configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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


_APP_WITH_ITS_OWN_LOGGING = """
import logging, sys

# the app sets up logging when imported: the CLI, which set up its own before, must keep this
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="APP %(message)s", force=True)

from durable import Durable, TaskContext

app = Durable()


@app.task
async def hello(ctx: TaskContext, params: None) -> str:
    return "hi"
"""


def test_the_cli_sets_up_logging_before_the_app_and_keeps_the_apps_own(
    dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "own_logging_app.py").write_text(_APP_WITH_ITS_OWN_LOGGING)
    worker = subprocess.Popen(
        [sys.executable, "-m", "durable", "--dsn", dsn, "worker", "own_logging_app:app"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    try:
        spawn = subprocess.run(
            [sys.executable, "-m", "durable", "--dsn", dsn, "spawn", "hello", "-q", "default"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        task_id = json.loads(spawn.stdout)["task_id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the worker completes it
            show = subprocess.run(
                [sys.executable, "-m", "durable", "--dsn", dsn, "show", task_id, "--json"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            if json.loads(show.stdout)["state"] == "completed":
                break
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    lines = out.splitlines()
    assert any(line.startswith("APP ") and "run.completed" in line for line in lines), lines
    assert "run.completed" not in err  # the CLI's own handler was replaced by the app's


def test_log_level_and_format_are_flags_of_every_command(dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "durable", "--dsn", dsn, "--log-level", "debug",
         "--log-format", "json", "status"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    quiet = subprocess.run(
        [sys.executable, "-m", "durable", "status", "--dsn", dsn, "--log-level", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    bad = subprocess.run(
        [sys.executable, "-m", "durable", "--log-level", "loud", "status"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "--log-level" in bad.stderr
