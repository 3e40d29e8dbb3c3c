"""The console served from a streaming replica (a hot standby of a private embedded primary).

A client connects to the standby without migrating it (a standby follows its primary: its schema
is checked), every read of the console answers there with the primary's data, and the event
stream, which needs LISTEN (a standby refuses it), answers 503 at once: the page then polls.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from support.database import fetchval
from support.http import dashboard, request
from support.in_process import running_worker
from support.waiting import wait_for

from durable import Client, DatabaseUnavailable, Durable, TaskContext, TaskNotFound
from durable.protocol.embedded import PG_USER, EmbeddedServer

pytestmark = pytest.mark.anyio

QUEUE = "replicated"


class Pair:
    """A primary and, once :meth:`start_standby` ran, its streaming replica."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.primary = EmbeddedServer(root / "primary")
        self.standby = EmbeddedServer(root / "standby")

    def start_primary(self) -> str:
        return self.primary.start()

    def start_standby(self) -> str:
        """A base backup of the primary with ``-R`` (standby.signal, primary_conninfo): started,
        it replays the primary's WAL as it streams."""
        home = self.standby.home
        home.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # the server's account writes the backup
            account = pwd.getpwnam(PG_USER)
            os.chown(home, account.pw_uid, account.pw_gid)
        socket_dir = self.primary._running()
        assert socket_dir is not None
        self.primary._run(
            "pg_basebackup",
            "-D",
            str(self.standby.pgdata),
            "-R",
            "--checkpoint=fast",
            "-h",
            socket_dir,
            "-U",
            "postgres",
        )
        for copied in self.standby.pgdata.glob(".s.PGSQL.*"):  # the primary's socket lock
            copied.unlink()
        return self.standby.start()

    def stop(self) -> None:
        for server in (self.standby, self.primary):
            if server.pgdata.exists():
                server.stop()


@pytest.fixture
def pair() -> Iterator[Pair]:
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="durable-replica-"))
    root.chmod(0o755)  # the server's account traverses it
    servers = Pair(root)
    try:
        yield servers
    finally:
        servers.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_the_console_reads_from_a_replica_and_its_event_stream_says_it_cannot_listen(
    pair: Pair,
) -> None:
    primary_dsn = await anyio.to_thread.run_sync(pair.start_primary)
    app = Durable(primary_dsn)

    @app.task(queue=QUEUE)
    async def echo(ctx: TaskContext, params: Any) -> Any:
        return params

    async with running_worker(app, queues=[QUEUE]):
        handles = [await echo.spawn(i) for i in range(3)]
        for handle in handles:
            await handle.result(timeout=20)
    async with app:
        waiting = await echo.spawn("later")  # live on the primary, pending on the replica

    standby_dsn = await anyio.to_thread.run_sync(pair.start_standby)
    async with Client(standby_dsn) as replica:  # migrate=True: a standby is checked instead
        assert await fetchval(standby_dsn, "select pg_is_in_recovery()") is True

        async def replayed() -> bool | None:
            return await replica.get_task(QUEUE, waiting.task_id) is not None or None

        await wait_for(replayed, timeout=30, what="the spawn replayed", tolerate=(TaskNotFound,))
        task = await replica.get_task(QUEUE, handles[0].task_id)
        assert str(task.state) == "completed"
        assert (await replica.get_result(QUEUE, handles[1].task_id)).result == 1
        depth = {d.queue: d for d in await replica.queue_depth()}
        assert depth[QUEUE].pending == 1

        with pytest.raises(DatabaseUnavailable, match="read replica"):
            await replica.store.listen({"durable_work": lambda _payload: None})

        async with dashboard(replica, read_only=True) as port:
            for path in (
                "/",
                "/tasks",
                "/flow",
                "/workers",
                "/api/overview",
                "/api/tasks",
                "/api/flow",
                "/api/workers",
                f"/api/tasks/{waiting.task_id}",
            ):
                answer = await request(port, "GET", path)
                assert answer.status == 200, (path, answer.body[:300])
            tasks = (await request(port, "GET", "/api/tasks")).json()
            assert len(tasks["tasks"]) == 4
            events = await request(port, "GET", "/api/events")
            assert events.status == 503
            assert "read replica" in events.json()["error"]
