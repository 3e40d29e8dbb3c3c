"""The console's newer pages over HTTP: mounted under a prefix in a user's Starlette app behind an
authorization hook, the task browser's API, bulk actions (a dry-run preview, then the action, at a
rate), the event stream fed by LISTEN, the flow and the workers."""

from __future__ import annotations

import functools
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from support.http import csrf_token, dashboard, event_stream, request

from durable import Client, SpawnOptions, TaskState
from durable.asgi import bind, serve_asgi
from durable.dashboard import Access, app

pytestmark = pytest.mark.anyio

Q = "default"


async def post_bulk(port: int, token: str, doc: dict[str, Any]) -> dict[str, Any]:
    """POST ``doc`` to the console's /api/bulk with its CSRF token; the answer's JSON (a 200)."""
    post = {"X-CSRF-Token": token, "Content-Type": "application/json"}
    answer = await request(port, "POST", "/api/bulk", post, json.dumps(doc).encode())
    assert answer.status == 200, answer
    result: dict[str, Any] = answer.json()
    return result


async def test_mounted_under_a_prefix_behind_an_authorization_hook(client: Client) -> None:
    """A user's app mounts the console at /ops/durable; its hook lets admins act, viewers read."""
    later = await client.spawn(Q, "later", None, SpawnOptions(delay=3600))
    seen: list[tuple[str, Access]] = []

    def authorize(request: Request, access: Access) -> bool:
        user = request.headers.get("x-user", "")
        seen.append((user, access))
        return user == "admin" or (user == "viewer" and access == "read")

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("the user's own app")

    outer = Starlette(
        routes=[
            Route("/", home),
            Mount("/ops/durable", app=app(client, authorize=authorize)),
        ]
    )
    admin, viewer = {"X-User": "admin"}, {"X-User": "viewer"}
    async with anyio.create_task_group() as tg:
        port: int = await tg.start(functools.partial(serve_asgi, outer, bind("127.0.0.1", 0)))
        own = await request(port, "GET", "/")
        page = await request(port, "GET", "/ops/durable/tasks", admin)
        script = await request(port, "GET", "/ops/durable/static/app.js", viewer)
        chart = await request(port, "GET", "/ops/durable/static/vendor/uPlot.iife.min.js", viewer)
        overview = await request(port, "GET", "/ops/durable/api/overview", viewer)
        anonymous = await request(port, "GET", "/ops/durable/api/overview")
        anonymous_page = await request(port, "GET", "/ops/durable/")
        token_page = await request(port, "GET", "/ops/durable/", admin)
        match = re.search(rb'<meta name="csrf-token" content="([^"]*)">', token_page.body)
        assert match is not None
        post = {"X-CSRF-Token": match[1].decode(), "Origin": f"http://127.0.0.1:{port}"}
        cancel = f"/ops/durable/api/tasks/{later.task_id}/cancel"
        refused = await request(port, "POST", cancel, {**viewer, **post})
        still = await client.get_task(Q, later.task_id)
        cancelled = await request(port, "POST", cancel, {**admin, **post})
        missing = await request(port, "GET", "/ops/durable/nowhere", admin)
        tg.cancel_scope.cancel()

    assert (own.status, own.body) == (200, b"the user's own app")
    assert "content-security-policy" not in own.headers  # the user's app is the user's
    assert page.status == 200
    # every link of the page follows the mount
    assert b'<meta name="durable-root" content="/ops/durable">' in page.body
    assert b'<script src="/ops/durable/static/app.js" defer></script>' in page.body
    assert b'href="/ops/durable/workers"' in page.body
    assert b'data-page="tasks"' in page.body
    assert (script.status, chart.status) == (200, 200)
    assert "script-src 'self'" in chart.headers["content-security-policy"]
    assert overview.status == 200
    assert "queues" in overview.json()
    assert anonymous.status == 403
    assert anonymous.json() == {"error": "not authorized to read here"}
    assert anonymous_page.status == 403
    assert refused.status == 403
    assert refused.json() == {"error": "not authorized to act here"}
    assert still.state is TaskState.PENDING
    assert cancelled.status == 200
    assert cancelled.json()["after"] == "cancelled"
    assert missing.status == 404
    assert ("viewer", "act") in seen
    assert ("admin", "act") in seen


async def test_the_task_browser_api_filters_searches_and_pages(client: Client) -> None:
    keyed = await client.spawn(
        Q, "charge", {"order": 7, "eur": 5}, SpawnOptions(idempotency_key="o-7")
    )
    for i in range(5):
        await client.spawn(Q, "charge", {"order": i}, SpawnOptions(tags=["batch"]))
    [claim] = await client.claim(Q, "w1", 30)  # the oldest: keyed, now running
    assert claim.task_id == keyed.task_id

    async with dashboard(client) as port:

        async def get(query: str) -> dict[str, Any]:
            answer = await request(port, "GET", f"/api/tasks?{query}")
            assert answer.status == 200, answer
            doc: dict[str, Any] = answer.json()
            return doc

        running = await get("state=running")
        by_id = await get(f"search={keyed.task_id}")
        by_key = await get("search=o-7")
        by_params = await get('search={"order":7}')
        tagged = await get("tag=batch&limit=2")
        following = await get(f"tag=batch&limit=2&before={tagged['next_before']}")
        since = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        recent = await get(f"queue={Q}&task_name=charge&since={since}")
        long_ago = await get("since=31536000")  # a number: seconds back from now (a year)

    def ids(doc: dict[str, Any]) -> list[str]:
        return [row["task_id"] for row in doc["tasks"]]

    assert ids(running) == [str(keyed.task_id)]
    assert running["tasks"][0]["state"] == "running"
    assert ids(by_id) == ids(by_key) == ids(by_params) == [str(keyed.task_id)]
    assert len(ids(tagged)) == 2
    assert len(ids(following)) == 2
    assert not set(ids(tagged)) & set(ids(following))
    assert len(ids(recent)) == 6
    assert ids(long_ago) == ids(recent)


async def test_bulk_actions_preview_then_act_by_filter_and_by_selection(client: Client) -> None:
    opts = SpawnOptions(max_attempts=1)
    failed = []
    for i in range(4):
        info = await client.spawn(Q, "sync", {"i": i}, opts)
        [claim] = await client.claim(Q, "w1", 30)
        await client.fail(Q, claim.run_id, {"type": "ConnectionError", "message": "down"})
        failed.append(info.task_id)
    live = await client.spawn(Q, "later", None, SpawnOptions(delay=3600))

    async with dashboard(client) as port:
        bulk = functools.partial(post_bulk, port, await csrf_token(port))
        preview = await bulk({"action": "retry", "filter": {"task_name": "sync"}})
        unchanged = await client.list_tasks(state="failed")
        started = anyio.current_time()
        done = await bulk(
            {"action": "retry", "filter": {"task_name": "sync"}, "dry_run": False, "rate": 20}
        )
        took = anyio.current_time() - started
        selection = await bulk(
            {"action": "cancel", "task_ids": [str(live.task_id), str(failed[0])]}
        )
        cancelled = await bulk(
            {"action": "cancel", "task_ids": [str(live.task_id)], "dry_run": False}
        )

    assert preview["dry_run"] is True
    assert (preview["matched"], preview["applicable"]) == (4, 4)
    assert "a retry gives each a new run" in str(preview["what"])
    assert {row["task_id"] for row in preview["tasks"]} == {str(t) for t in failed}
    assert len(unchanged.tasks) == 4  # the preview changed nothing
    assert (done["changed"], done["not_changed"]) == (4, 0)
    assert took >= 3 / 20  # four actions at 20 per second
    for task_id in failed:
        assert (await client.get_task(Q, task_id)).state is TaskState.PENDING
    # a selection: the pending task can be cancelled; the retried one is live too now
    assert (selection["matched"], selection["applicable"]) == (2, 2)
    assert cancelled["changed"] == 1
    assert (await client.get_task(Q, live.task_id)).state is TaskState.CANCELLED


async def test_a_bulk_retry_previews_and_revives_the_dependents_a_failure_cancelled(
    client: Client,
) -> None:
    root = await client.spawn(Q, "extract", None, SpawnOptions(max_attempts=1))
    dependent = await client.spawn(Q, "load", None, SpawnOptions(depends_on=[root.task_id]))
    [claim] = await client.claim(Q, "w1", 30)
    await client.fail(Q, claim.run_id, {"type": "Boom", "message": "no"})

    async with dashboard(client) as port:
        bulk = functools.partial(post_bulk, port, await csrf_token(port))
        preview = await bulk({"action": "retry", "task_ids": [str(root.task_id)]})
        still = await client.get_task(Q, dependent.task_id)
        # the dependent, cancelled, is selected too: it is revived with the root, not twice
        selection = {"action": "retry", "task_ids": [str(root.task_id), str(dependent.task_id)]}
        done = await bulk({**selection, "dry_run": False})

    assert preview["revived"] == 1
    assert preview["dependents"] == [
        {
            "task_id": str(dependent.task_id),
            "queue": Q,
            "task_name": "load",
            "dependency": str(root.task_id),
        }
    ]
    assert still.state is TaskState.CANCELLED  # the preview changed nothing
    by_id = {change["task_id"]: change for change in done["changes"]}
    assert (done["changed"], done["not_changed"]) == (2, 0)
    assert by_id[str(root.task_id)]["revived"] == [str(dependent.task_id)]
    assert by_id[str(dependent.task_id)]["revived_with"] == str(root.task_id)
    revived = await client.get_task(Q, dependent.task_id)
    assert (revived.state, revived.pending_dependencies) == (TaskState.PENDING, [root.task_id])


async def test_the_event_stream_says_when_work_arrives_and_tasks_end(client: Client) -> None:
    async with dashboard(client) as port, event_stream(port) as events:
        status, headers = await events.read_head()
        assert status == 200
        assert headers["content-type"].startswith("text/event-stream")
        assert "content-security-policy" in headers
        await anyio.sleep(0.2)  # the stream's LISTEN is in place once its first bytes came
        info = await client.spawn("mail", "send", None)
        work = await events.next_event()
        assert work["queues"] == ["mail"]
        [claim] = await client.claim("mail", "w1", 30)
        await client.complete("mail", claim.run_id, None)
        done = await events.next_event()
        assert done["done"] == 1
        assert info.task_id == claim.task_id


async def test_flow_and_workers_pages_read_their_windows(client: Client) -> None:
    await client.register_worker("w-1", "host-1", 7, [Q], 30, concurrency=3)
    for _ in range(2):
        await client.spawn(Q, "job", None)
    claims = await client.claim(Q, "w-1", 30, qty=2)
    await client.complete(Q, claims[0].run_id, None)
    await client.fail(Q, claims[1].run_id, {"type": "TimeoutError", "reason_class": "timeout"})
    async with dashboard(client) as port:
        hour = (await request(port, "GET", "/api/flow?window=hour")).json()
        day = (await request(port, "GET", "/api/flow?window=day")).json()
        workers = (await request(port, "GET", "/api/workers")).json()

    assert hour["step_s"] == 60
    assert len(hour["times"]) >= 60
    assert sum(hour["completed"][Q]) == 1
    assert sum(hour["failed"][Q]) == 1
    assert sum(hour["failed_classes"]["timeout"]) == 1
    assert any(v is not None for v in hour["run_s"]["p50"])
    assert day["step_s"] == 600
    assert (
        hour["totals"]
        == day["totals"]
        == {
            "completed": 1,
            "failed": 1,
            "dead": 0,
            "cancelled": 0,
        }
    )
    [worker] = workers["workers"]
    assert (worker["worker_id"], worker["alive"], worker["concurrency"]) == ("w-1", True, 3)
    assert worker["running"] == 0
    assert uuid.UUID(str(claims[0].task_id))
