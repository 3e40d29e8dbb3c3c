"""Least privilege: role durable_worker runs the protocol and nothing else
(``sql/protocol/90_privileges.sql``).

A LOGIN role that is a member of durable_worker runs a real worker (claims, steps, results, the
liveness thread, LISTEN) yet cannot read or write a table of durable directly. Roles are
cluster-wide: each test creates roles with unique names and drops them at the end.
"""

from __future__ import annotations

import ast
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
import structlog
from support.database import connection, execute, with_database

import durable
from durable import Durable, TaskContext, TaskState
from durable.protocol.migrate import PROTOCOL_VERSION, load_migrations

pytestmark = pytest.mark.anyio

QUEUE = "lp"
WORKER_ROLE = "durable_worker"
PROTOCOL = {
    "spawn",
    "spawn_many",
    "claim",
    "complete",
    "fail",
    "extend_claim",
    "extend_claims",
    "set_checkpoint",
    "get_checkpoints",
    "schedule_run",
    "cancel",
    "retry",
    "get_task",
    "get_result",
    "register_worker",
    "worker_heartbeat",
    "stop_worker",
    "queue_counts",
    "list_failed_runs",
    "complete_runs",
    "set_checkpoints",
    "sleep",
    "await_event",
    "await_task",
    "emit_event",
    "move_to_history",
    "refresh_hot_stats",
    "ensure_history_partitions",
    "set_progress",
    "cancel_by",
    "set_limit",
    "failed_work",
    "failure_groups",
    "finished_counts",
    "replay",
    "discard",
    "await_tasks",
    "spawn_batch",
    "get_batch",
    "get_dependency_results",
    "send_message",
    "receive_message",
    "set_state",
    "get_state",
    "decide_patch",
    "pause_queue",
    "resume_queue",
    "list_paused_queues",
    "set_cron_schedule",
    "remove_cron_schedule",
    "pause_cron_schedule",
    "resume_cron_schedule",
    "list_cron_schedules",
    "fire_cron",
    "list_tasks",
    "queue_depth",
    "list_workers",
    "roll_up_flow",
    "flow",
    "ended_counts",
    "revivable_dependents",
}
TABLES = [
    "tasks",
    "runs",
    "checkpoints",
    "workers",
    "schema_migrations",
    "applied_protocol",
    "messages",
    "states",
    "batches",
    "batch_members",
    "wait_children",
]
#: What a client opened with migrate=False reads to check the schema and the protocol.
READABLE = {"schema_migrations", "applied_protocol"}


def as_user(dsn: str, user: str) -> str:
    """The same server and database, another user (no password: trust authentication)."""
    parts = urllib.parse.urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@pytest.fixture
async def login_role(server_dsn: str) -> AsyncIterator[str]:
    """A LOGIN role of this test's own, a member of durable_worker."""
    name = f"durable_t_{uuid.uuid4().hex[:12]}"
    await execute(server_dsn, f"create role {name} login in role {WORKER_ROLE}")
    try:
        yield name
    finally:
        await execute(server_dsn, f"drop role if exists {name}")


@pytest.fixture
async def worker_dsn(dsn: str, login_role: str) -> str:
    return as_user(dsn, login_role)


@pytest.fixture
async def as_worker(worker_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    async with connection(worker_dsn) as conn:
        yield conn


# --- the catalog ------------------------------------------------------------------------------

_SECURITY_DEFINERS = """
select p.proname, p.proconfig,
       has_function_privilege('durable_worker', p.oid, 'execute') as worker_may,
       coalesce(exists (select 1 from aclexplode(p.proacl) a
                         where a.grantee = 0 and a.privilege_type = 'EXECUTE'), true) as public_may
  from pg_catalog.pg_proc p
 where p.pronamespace = 'durable'::regnamespace and p.prosecdef
"""


async def test_the_protocol_functions_are_the_security_definers_with_a_fixed_search_path(
    raw: asyncpg.Connection,
) -> None:
    rows = await raw.fetch(_SECURITY_DEFINERS)
    assert {r["proname"] for r in rows} == PROTOCOL
    for row in rows:
        search_path, *planner = row["proconfig"]
        assert search_path == "search_path=pg_catalog, pg_temp", row["proname"]
        # the batch functions plan their lookups by key as index probes
        assert set(planner) <= {"random_page_cost=1.1"}, row["proname"]
        assert row["worker_may"], row["proname"]
        assert not row["public_may"], row["proname"]


async def test_the_worker_role_holds_no_table_privilege(raw: asyncpg.Connection) -> None:
    for table in TABLES:
        privileges = {
            p: await raw.fetchval(
                "select has_table_privilege($1, $2, $3)", WORKER_ROLE, f"durable.{table}", p
            )
            for p in ("select", "insert", "update", "delete", "truncate", "references", "trigger")
        }
        # the bookkeeping is readable, so that a client opened with migrate=False can check it
        expected = {p: table in READABLE and p == "select" for p in privileges}
        assert privileges == expected, table
    assert not await raw.fetchval(
        "select has_schema_privilege($1, 'durable', 'create')", WORKER_ROLE
    )
    assert (
        await raw.fetchval(
            "select rolcanlogin from pg_catalog.pg_roles where rolname = $1", WORKER_ROLE
        )
        is False
    )


# --- a real worker as the role ----------------------------------------------------------------


def _double(n: int) -> int:
    return 2 * n


async def test_a_worker_running_as_the_role_completes_tasks_with_steps(
    worker_dsn: str, raw: asyncpg.Connection
) -> None:
    app = Durable(worker_dsn, migrate=False)

    @app.task(queue=QUEUE)
    async def with_steps(ctx: TaskContext, params: dict[str, Any]) -> dict[str, int]:
        once = await ctx.step("double", _double, params["n"])
        twice = await ctx.step("double-again", _double, once)
        await ctx.heartbeat()
        return {"n": twice}

    with structlog.testing.capture_logs() as logs, anyio.fail_after(60):
        async with app, anyio.create_task_group() as tg:
            await tg.start(
                partial(
                    app.run_worker,
                    queues=[QUEUE],
                    concurrency=4,
                    claim_timeout=5.0,
                    poll_interval=0.2,
                    handle_signals=False,
                )
            )
            handles = [await with_steps.spawn({"n": n}) for n in range(5)]
            results = [await h.result(timeout=30) for h in handles]
            checkpoints = await app.client.get_checkpoints(QUEUE, handles[0].task_id)
            counts = await app.client.queue_counts()
            tg.cancel_scope.cancel()

    assert [(r.state, r.result) for r in results] == [
        (TaskState.COMPLETED, {"n": 4 * n}) for n in range(5)
    ]
    assert [c.step_name for c in checkpoints] == ["double", "double-again"]
    assert [(c.queue, c.state, c.count) for c in counts] == [(QUEUE, TaskState.COMPLETED, 5)]
    problems = [e for e in logs if e.get("log_level") in ("error", "critical")]
    assert problems == []
    # the worker registered itself and said goodbye, through the protocol
    stopped = await raw.fetchval(
        "select count(*) from durable.workers where stopped_at is not null"
    )
    assert stopped == 1


async def test_the_role_runs_the_workflow_functions(worker_dsn: str) -> None:
    """Fan-in, messages, published state, patches and batches, as the role, end to end."""
    app = Durable(worker_dsn, migrate=False, version="lp-1")

    @app.task(queue=QUEUE)
    async def leaf(ctx: TaskContext, params: int) -> int:
        return 2 * params

    @app.task(queue=QUEUE)
    async def flow(ctx: TaskContext, params: None) -> dict[str, Any]:
        new = await ctx.patched("lp")
        children = [await ctx.spawn(leaf, n, name=f"leaf-{n}") for n in (1, 2)]
        results = await ctx.gather(children)
        await ctx.set_state("stage", "waiting")
        message = await ctx.recv("go", timeout=30)
        return {"new": new, "sum": sum(r.result for r in results), "message": message}

    @app.task(queue=QUEUE)
    async def report(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
        return {"counts": params["counts"], "inputs": len(await ctx.dependency_results())}

    with anyio.fail_after(60):
        async with app, anyio.create_task_group() as tg:
            await tg.start(
                partial(
                    app.run_worker,
                    queues=[QUEUE],
                    claim_timeout=5.0,
                    poll_interval=0.1,
                    handle_signals=False,
                )
            )
            handle = await flow.spawn(None)
            while not any(  # noqa: ASYNC110 — polls the database
                w.get("topic") == "go" for w in (await app.get_task(handle.task_id)).waiting_for
            ):
                await anyio.sleep(0.05)
            assert await app.get_state(handle.task_id, "stage") == "waiting"
            assert await app.send(handle.task_id, "go", "now") is True  # it woke the task
            outcome = await handle.result(timeout=30)
            batch = await app.batch([(leaf, 3), (leaf, 4)], on_complete=report)
            info = await app.get_batch(batch.batch_id)
            while info.callback_task_id is None:
                await anyio.sleep(0.05)
                info = await app.get_batch(batch.batch_id)
            callback = await app.result(info.callback_task_id, timeout=30)
            record = await app.get_task(handle.task_id)
            tg.cancel_scope.cancel()

    assert outcome.result == {"new": True, "sum": 6, "message": "now"}
    assert callback.result == {"counts": {"completed": 2, "failed": 0, "cancelled": 0}, "inputs": 0}
    assert {run.code_version for run in record.runs} == {"lp-1"}


@pytest.mark.parametrize(
    "statement",
    [
        "select * from durable.tasks",
        "select count(*) from durable.runs",
        "update durable.runs set state = 'failed'",
        "delete from durable.workers",
        "insert into durable.checkpoints (task_id, step_name, value, run_id, created_at)"
        " values (gen_random_uuid(), 's', '1', gen_random_uuid(), now())",
        "truncate durable.tasks cascade",
        "insert into durable.schema_migrations (version, name, checksum) values (99, 'x', 'x')",
        "update durable.applied_protocol set checksum = 'x'",
        # the internal helpers are not the protocol
        "select durable.reap_runs('lp', now())",
        "select durable.lock_task(null, gen_random_uuid())",
        "select durable.grant_worker_privileges()",
        "create table durable.mine (x int)",
        "create function durable.mine() returns int language sql as 'select 1'",
    ],
)
async def test_the_role_cannot_touch_a_table_or_a_helper(
    as_worker: asyncpg.Connection, raw: asyncpg.Connection, statement: str
) -> None:
    await raw.execute("select durable.spawn('lp', 'job', '{}', '{}')")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_worker.execute(statement)
    assert await raw.fetchval("select count(*) from durable.tasks") == 1
    assert await raw.fetchval("select state from durable.runs") == "pending"


async def test_the_role_can_listen_and_read_the_schema_and_protocol_versions(
    as_worker: asyncpg.Connection,
) -> None:
    heard = anyio.Event()
    await as_worker.add_listener("durable_work", lambda *_: heard.set())
    await as_worker.fetch("select * from durable.spawn('lp', 'job', '{}', '{}')")
    with anyio.fail_after(10):
        await heard.wait()
    versions = await as_worker.fetch("select version from durable.schema_migrations")
    assert [r["version"] for r in versions] == [m.version for m in load_migrations()]
    protocol = await as_worker.fetchval("select version from durable.applied_protocol")
    assert protocol == PROTOCOL_VERSION


async def test_a_non_superuser_owner_can_migrate_and_serve_the_role(server_dsn: str) -> None:
    """The recommended deployment: a schema owner without superuser nor CREATEROLE migrates (the
    role durable_worker exists already), and a worker role runs against its functions."""
    owner = f"durable_o_{uuid.uuid4().hex[:12]}"
    login = f"durable_t_{uuid.uuid4().hex[:12]}"
    database = f"lp_{uuid.uuid4().hex}"
    await execute(
        server_dsn,
        f"create role {owner} login nosuperuser nocreaterole",
        f"create role {login} login in role {WORKER_ROLE}",
        f'create database "{database}" owner {owner}',
    )
    dsn = with_database(server_dsn, database)
    try:
        async with Durable(as_user(dsn, owner)) as app:  # migrates as the owner
            assert await app.client.queue_counts() == []
        async with Durable(as_user(dsn, login), migrate=False) as app:
            info = await app.client.spawn(QUEUE, "job", {"x": 1})
            [claim] = await app.client.claim(QUEUE, "w1", 30)
            await app.client.set_checkpoint(QUEUE, claim.run_id, "s", [1])
            await app.client.complete(QUEUE, claim.run_id, "done")
            assert (await app.client.get_result(QUEUE, info.task_id)).result == "done"
        async with connection(as_user(dsn, login)) as conn:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("select * from durable.tasks")
    finally:
        await execute(
            server_dsn,
            f'drop database if exists "{database}" with (force)',
            f"drop role if exists {login}",
            f"drop role if exists {owner}",
        )


# --- payloads are data, never code ------------------------------------------------------------

_CODE_LOADERS = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}


def test_no_module_of_durable_imports_a_code_loading_serializer() -> None:
    """Payloads are JSON only: nothing in the package can turn stored bytes into code."""
    package = Path(durable.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
                names = [str(a.value) for a in node.args if isinstance(a, ast.Constant)]
            else:
                continue
            found += [
                f"{path.name}:{node.lineno} {name}"
                for name in names
                if name.split(".")[0] in _CODE_LOADERS
            ]
    assert found == []
    assert len(list(package.rglob("*.py"))) > 5  # the scan saw the package
