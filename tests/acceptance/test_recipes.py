"""The recipes of docs/recipes/, exercised beyond their demos: the FastAPI app under concurrent
requests (each signup's row and welcome task committed together, or neither), and the WSGI app
served by a threaded server, spawning through ``app.sync`` from many client threads at once."""

from __future__ import annotations

import importlib.util
import signal
import urllib.error
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
from support.database import connection
from support.in_process import running_worker

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def load_example(name: str, dsn: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh copy of ``examples/<name>.py`` whose ``Durable()`` uses ``dsn``."""
    monkeypatch.setenv("DURABLE_DSN", dsn)
    spec = importlib.util.spec_from_file_location(
        f"{name}_{uuid.uuid4().hex}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- FastAPI ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fastapi_signups_commit_their_welcome_or_roll_it_back(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = load_example("fastapi_app", dsn, monkeypatch)
    emails = [f"user{n}@example.com" for n in range(10)]
    answers: dict[str, list[httpx.Response]] = {email: [] for email in emails}

    async def sign_up(http: httpx.AsyncClient, email: str) -> None:
        answers[email].append(await http.post("/signups", json={"email": email}))

    transport = httpx.ASGITransport(app=recipe.api)
    async with (
        recipe.api.router.lifespan_context(recipe.api),
        httpx.AsyncClient(transport=transport, base_url="http://api") as http,
    ):
        async with anyio.create_task_group() as tg:  # each address twice, all at once
            for email in emails * 2:
                tg.start_soon(sign_up, http, email)
        for email in emails:
            assert sorted(r.status_code for r in answers[email]) == [201, 409], email
        created = {
            email: next(r.json()["welcome_task"] for r in rs if r.status_code == 201)
            for email, rs in answers.items()
        }
        async with connection(dsn) as conn:
            assert await conn.fetchval("select count(*) from signups") == 10
            assert await conn.fetchval("select count(*) from durable.tasks") == 10
        async with running_worker(recipe.app):
            with anyio.fail_after(20):
                for email, task_id in created.items():
                    outcome = await recipe.app.result(uuid.UUID(task_id))
                    assert outcome.result == f"welcome mail sent to {email}"
        task = await http.get(f"/tasks/{created[emails[0]]}")
        assert task.json() == {"state": "completed", "result": f"welcome mail sent to {emails[0]}"}


# --- WSGI ---------------------------------------------------------------------------------------


@pytest.fixture
def wsgi_recipe(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    recipe = load_example("wsgi_app", dsn, monkeypatch)
    try:
        yield recipe
    finally:
        recipe.app.sync.close()


def test_wsgi_threads_spawn_through_http_and_the_tasks_run(
    wsgi_recipe: ModuleType, dsn: str
) -> None:
    recipe = wsgi_recipe
    server = recipe.serve()
    base = f"http://127.0.0.1:{server.server_port}"
    worker = recipe.start_worker(dsn)
    try:
        orders: list[dict[str, Any]] = [{"order_id": f"o-{n}", "total": n} for n in range(40)]
        posts = orders + orders[:10]  # ten orders posted twice, concurrently with the rest

        def post(order: dict[str, Any]) -> Any:
            return recipe.request(base, "POST", "/orders", order)

        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(pool.map(post, posts))
        by_order: dict[str, set[str]] = {}
        for order, answer in zip(posts, answers, strict=True):
            by_order.setdefault(order["order_id"], set()).add(answer["task_id"])
        assert all(len(ids) == 1 for ids in by_order.values())  # one task per order id
        assert sum(answer["created"] for answer in answers) == 40
        for order in orders:
            (task_id,) = by_order[order["order_id"]]
            task = recipe.wait_completed(base, task_id, timeout=30)
            assert task == {
                "state": "completed",
                "result": f"receipt for {order['order_id']}: {order['total']} EUR",
            }
        for path in ("/tasks/not-a-uuid", f"/tasks/{uuid.uuid4()}", "/nowhere"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                recipe.request(base, "GET", path)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        server.shutdown()
        server.server_close()
