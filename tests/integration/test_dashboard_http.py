"""The console over real sockets (uvicorn serving the Starlette app): JSON documents, the CSRF
guard, read-only mode, security headers, the Host guard, the authorization hook of an app mounted
under a prefix, and clear answers to bad requests that never take the server down."""

from __future__ import annotations

import json
import uuid

import anyio
import pytest
import structlog
from support.http import csrf_token, dashboard, request, send_raw

from durable import Client, SpawnOptions, TaskState

pytestmark = pytest.mark.anyio

Q = "default"


async def test_pages_and_static_files_carry_the_security_headers(client: Client) -> None:
    task_id = uuid.uuid4()
    async with dashboard(client) as port:
        overview = await request(port, "GET", "/")
        task_page = await request(port, "GET", f"/tasks/{task_id}")
        script = await request(port, "GET", "/static/app.js")
        style = await request(port, "GET", "/static/app.css")

    for answer in (overview, task_page, script, style):
        assert answer.status == 200
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
    assert overview.headers["content-type"] == "text/html; charset=utf-8"
    assert b'data-page="overview"' in overview.body
    assert b'<script src="/static/app.js" defer></script>' in overview.body
    assert b"<script>" not in overview.body  # no inline script: the CSP would refuse it
    assert f'data-task-id="{task_id}"'.encode() in task_page.body
    assert b'<meta name="durable-read-only" content="0">' in overview.body
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert b"innerHTML" not in script.body  # data goes in as text, never as markup
    assert style.headers["content-type"] == "text/css; charset=utf-8"


async def test_overview_json_counts_queues_throughput_and_failed_work(client: Client) -> None:
    opts = SpawnOptions(max_attempts=1)
    done = await client.spawn(Q, "add", {"a": 1}, opts)
    dead = await client.spawn(Q, "fetch", {"url": "u"}, opts)
    retrying = await client.spawn("mail", "send", {"to": "x"}, SpawnOptions(max_attempts=3))
    await client.spawn(Q, "later", None, SpawnOptions(delay=3600))
    claims = {c.task_id: c for c in await client.claim(Q, "w1", qty=2)}
    await client.complete(Q, claims[done.task_id].run_id, 3)
    error = {"type": "ConnectionError", "message": "refused", "reason_class": "transport"}
    await client.fail(Q, claims[dead.task_id].run_id, error)
    [mail] = await client.claim("mail", "w1")
    bad = {"type": "ValueError", "message": "no 'to'", "reason_class": "validation"}
    await client.fail("mail", mail.run_id, bad, retry_in=3600)

    async with dashboard(client) as port:
        answer = await request(port, "GET", "/api/overview")

    assert answer.status == 200
    doc = answer.json()
    queues = {q["queue"]: q for q in doc["queues"]}
    assert queues[Q]["counts"] == {
        "pending": 1,
        "running": 0,
        "sleeping": 0,
        "completed": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert queues[Q]["completed_per_min"] == 1.0
    assert queues[Q]["failed_per_min"] == 1.0
    assert queues["mail"]["counts"]["pending"] == 1
    assert queues["mail"]["completed_per_min"] == 0.0
    classes = {rc["reason_class"]: rc["count"] for rc in doc["reason_classes"]}
    assert classes == {
        "transport": 1,
        "validation": 1,
        "timeout": 0,
        "crash": 0,
        "exhausted": 0,
        "unknown": 0,
    }
    groups = {
        (g["task_name"], g["error_type"], g["reason_class"], g["count"])
        for g in doc["failure_groups"]
    }
    assert groups == {
        ("fetch", "ConnectionError", "transport", 1),
        ("send", "ValueError", "validation", 1),
    }
    rows = {row["task_id"]: row for row in doc["failed_work"]}
    assert rows.keys() == {str(dead.task_id), str(retrying.task_id)}
    dead_row = rows[str(dead.task_id)]
    assert (dead_row["state"], dead_row["can_retry"], dead_row["can_cancel"]) == (
        "failed",
        True,
        False,
    )
    assert dead_row["error_type"] == "ConnectionError"
    assert dead_row["error_message"] == "refused"
    retrying_row = rows[str(retrying.task_id)]
    assert (retrying_row["state"], retrying_row["can_retry"], retrying_row["can_cancel"]) == (
        "retrying",
        False,
        True,
    )
    # retryable says what the runtime does: it retries this one; its reason class says that a
    # validation failure will likely fail the same way again
    assert (retrying_row["retryable"], retrying_row["reason_class"]) == (True, "validation")


async def test_task_json_has_runs_checkpoints_progress_and_actions(client: Client) -> None:
    info = await client.spawn(Q, "fetch", {"url": "u"}, SpawnOptions(max_attempts=2, tags=["t1"]))
    [claim] = await client.claim(Q, "w1", code_version="v3")
    await client.set_checkpoint(Q, claim.run_id, "download", {"body": "x" * 1000})
    await client.set_progress(Q, claim.run_id, 40, {"rows": 4})
    await client.set_state(Q, claim.run_id, "stage", {"downloaded": 1000})
    error = {"type": "ConnectionError", "message": "gone", "traceback": "Traceback...\nboom"}
    await client.fail(Q, claim.run_id, error, retry_in=0)

    async with dashboard(client) as port:
        answer = await request(port, "GET", f"/api/tasks/{info.task_id}")
        missing = await request(port, "GET", f"/api/tasks/{uuid.uuid4()}")

    assert answer.status == 200
    doc = answer.json()
    task = doc["task"]
    assert (task["state"], task["attempt"], task["max_attempts"]) == ("pending", 2, 2)
    assert task["tags"] == ["t1"]
    assert json.loads(task["params"]) == {"url": "u"}
    assert task["progress"]["pct"] == 40
    assert json.loads(task["progress"]["detail"]) == {"rows": 4}
    first, second = doc["runs"]
    assert (first["attempt"], first["state"], first["worker"]) == (1, "failed", "w1")
    assert (first["code_version"], second["code_version"]) == ("v3", None)
    assert (first["error_type"], first["error_message"]) == ("ConnectionError", "gone")
    assert first["traceback"] == "Traceback...\nboom"
    assert (second["attempt"], second["state"], second["live"]) == (2, "pending", True)
    [checkpoint] = doc["checkpoints"]
    assert checkpoint["step"] == "download"
    assert len(checkpoint["value"]) <= 300  # clipped
    assert checkpoint["value"].endswith("…")
    assert doc["actions"] == {"retry": False, "cancel": True, "discard": True, "replay": False}
    [published] = doc["published_state"]
    assert (published["key"], json.loads(published["value"])) == ("stage", {"downloaded": 1000})
    assert task["batch_ids"] == []
    assert missing.status == 404
    assert missing.json()["error"].startswith("TaskNotFound: ")


async def test_a_post_needs_the_token_and_the_page_origin(client: Client) -> None:
    info = await client.spawn(Q, "later", None, SpawnOptions(delay=3600))
    cancel = f"/api/tasks/{info.task_id}/cancel"
    async with dashboard(client) as port:
        token = await csrf_token(port)
        own = f"http://127.0.0.1:{port}"
        refused = [
            await request(port, "POST", cancel),
            await request(port, "POST", cancel, {"X-CSRF-Token": ""}),
            await request(port, "POST", cancel, {"X-CSRF-Token": token[:-1] + "x"}),
            await request(
                port, "POST", cancel, {"X-CSRF-Token": token, "Origin": "http://evil.example"}
            ),
            await request(port, "POST", cancel, {"X-CSRF-Token": token, "Origin": "null"}),
            await request(
                port, "POST", cancel, {"X-CSRF-Token": token, "Origin": f"http://localhost:{port}"}
            ),
        ]
        still = await client.get_task(Q, info.task_id)
        cancelled = await request(port, "POST", cancel, {"X-CSRF-Token": token, "Origin": own})
        again = await request(port, "POST", cancel, {"X-CSRF-Token": token, "Origin": own})
        retried = await request(
            port, "POST", f"/api/tasks/{info.task_id}/retry", {"X-CSRF-Token": token}
        )
        missing = await request(
            port, "POST", f"/api/tasks/{uuid.uuid4()}/retry", {"X-CSRF-Token": token}
        )

    for answer in refused:
        assert answer.status == 403, answer
    assert "X-CSRF-Token" in refused[0].json()["error"]
    assert "cross-origin" in refused[3].json()["error"]
    assert still.state is TaskState.PENDING  # nothing refused changed anything
    assert cancelled.status == 200
    doc = cancelled.json()
    assert doc["task_id"] == str(info.task_id)
    assert (doc["action"], doc["before"], doc["after"]) == ("cancel", "pending", "cancelled")
    assert doc["run_id"] == str(info.run_id)
    assert again.status == 409
    assert again.json()["error"].startswith("InvalidState: ")
    assert retried.status == 200
    assert (retried.json()["before"], retried.json()["after"]) == ("cancelled", "pending")
    assert retried.json()["run_id"] != str(info.run_id)
    assert retried.json()["revived"] == []
    assert missing.status == 404
    assert missing.json()["error"].startswith("TaskNotFound: ")


async def test_the_retry_button_revives_the_dependents_a_failure_cancelled(
    client: Client,
) -> None:
    root = await client.spawn(Q, "extract", None, SpawnOptions(max_attempts=1))
    dependent = await client.spawn(Q, "load", None, SpawnOptions(depends_on=[root.task_id]))
    [claim] = await client.claim(Q, "w1", 30)
    await client.fail(Q, claim.run_id, {"type": "Boom", "message": "no"})
    assert (await client.get_task(Q, dependent.task_id)).state is TaskState.CANCELLED
    async with dashboard(client) as port:
        token = await csrf_token(port)
        retried = await request(
            port, "POST", f"/api/tasks/{root.task_id}/retry", {"X-CSRF-Token": token}
        )

    assert retried.status == 200
    assert retried.json()["revived"] == [str(dependent.task_id)]
    revived = await client.get_task(Q, dependent.task_id)
    assert (revived.state, revived.pending_dependencies) == (TaskState.PENDING, [root.task_id])


async def test_read_only_mode_refuses_every_post(client: Client) -> None:
    info = await client.spawn(Q, "later", None, SpawnOptions(delay=3600))
    async with dashboard(client, read_only=True) as port:
        page = await request(port, "GET", "/")
        token = await csrf_token(port)
        answers = [
            await request(port, "POST", f"/api/tasks/{info.task_id}/{action}", headers)
            for action in ("cancel", "retry")
            for headers in ({}, {"X-CSRF-Token": token})
        ]
        overview = await request(port, "GET", "/api/overview")

    assert token == ""  # no token to steal
    assert b'<meta name="durable-read-only" content="1">' in page.body
    assert b'id="read-only"' in page.body
    for answer in answers:
        assert answer.status == 403
        assert answer.json()["error"].startswith("read-only")
    assert overview.status == 200
    assert (await client.get_task(Q, info.task_id)).state is TaskState.PENDING


BAD_REQUESTS: list[tuple[bytes, int, str]] = [
    (b"DELETE / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405, "only GET"),
    (b"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404, "no page at '/nowhere'"),
    (b"GET /static/../server.py HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404, "no static file"),
    (b"GET /tasks/not-a-uuid HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, "not a task id"),
    (b"GET /api/tasks/xyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, "not a task id"),
    (
        b"GET /api/tasks/00000000-0000-0000-0000-000000000000/retry HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n\r\n",
        405,
        "only POST",
    ),
    (
        b"POST /api/tasks/00000000-0000-0000-0000-000000000000/explode HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n\r\n",
        404,
        "no page",
    ),
    (b"POST /api/overview HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405, "only GET"),
    (b"GET /api/flow?window=week HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, "hour, day"),
    (b"GET /api/tasks?state=dead HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, "state 'dead'"),
    (b"GET /api/tasks?since=yesterday HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, "ISO time"),
    (b"GET /api/tasks?search={x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, "not valid JSON"),
    # a DNS-rebinding page reaches a loopback server under its own name: refused
    (b"GET /api/overview HTTP/1.1\r\nHost: evil.example:8080\r\n\r\n", 403, "loopback only"),
]
#: Malformed HTTP: uvicorn (h11) answers these itself, before the console sees them.
MALFORMED: list[bytes] = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
]


async def test_bad_requests_get_clear_answers_and_the_server_keeps_serving(
    client: Client,
) -> None:
    async with dashboard(client) as port:
        for raw, status, message in BAD_REQUESTS:
            answer = await send_raw(port, raw)
            assert (answer.status, message) == (status, message), (raw[:80], answer)
            assert message in answer.body.decode(), (raw[:80], answer)
            if status == 405:
                assert answer.headers["allow"] in ("GET", "POST")
        for raw in MALFORMED:
            answer = await send_raw(port, raw)
            assert answer.status == 400, (raw[:80], answer)
        # a client that connects and says nothing, or half a request, then leaves
        async with await anyio.connect_tcp("127.0.0.1", port):
            pass
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"GET / HTT")
        # localhost is a loopback name, and the server still answers
        ok = await send_raw(
            port, f"GET /api/overview HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode()
        )
        head = await request(port, "HEAD", "/")
    assert ok.status == 200
    assert head.status == 200  # HEAD: the headers of GET, no body
    assert head.body == b""
    assert head.headers["content-type"] == "text/html; charset=utf-8"


async def test_an_action_body_is_bounded_and_must_be_json(client: Client) -> None:
    async with dashboard(client) as port:
        token = await csrf_token(port)
        post = {"X-CSRF-Token": token}
        huge = await send_raw(
            port,
            f"POST /api/bulk HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF-Token: {token}\r\n"
            "Content-Length: 10000000\r\n\r\n".encode(),
        )
        chunk = b"x" * 70000
        chunked = await send_raw(
            port,
            f"POST /api/bulk HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF-Token: {token}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + f"{len(chunk):x}\r\n".encode()
            + chunk
            + b"\r\n0\r\n\r\n",
        )
        not_json = await request(port, "POST", "/api/bulk", post, b"retry them all")
        no_action = await request(port, "POST", "/api/bulk", post, b'{"action": "explode"}')
    assert (huge.status, chunked.status) == (413, 413)
    assert "over 65536 bytes" in huge.json()["error"]
    assert "over 65536 bytes" in chunked.json()["error"]
    assert (not_json.status, not_json.json()) == (400, {"error": "the body is not JSON"})
    assert no_action.status == 400
    assert no_action.json()["error"].startswith("action must be one of: retry, cancel")


async def test_an_unexpected_error_answers_500_is_logged_and_the_server_goes_on(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the database driver had a bad day")

    info = await client.spawn(Q, "later", None, SpawnOptions(delay=3600))
    monkeypatch.setattr(client, "queue_depth", broken)
    with structlog.testing.capture_logs() as logs:
        async with dashboard(client) as port:
            failed = await request(port, "GET", "/api/overview")
            page = await request(port, "GET", "/")
            task = await request(port, "GET", f"/api/tasks/{info.task_id}")

    assert failed.status == 500
    assert failed.json() == {"error": "RuntimeError: the server failed (see its log)"}
    [event] = [e for e in logs if e["event"] == "dashboard.request_failed"]
    assert event["path"] == "/api/overview"
    assert event["error"] == "the database driver had a bad day"
    assert page.status == 200
    assert task.status == 200
