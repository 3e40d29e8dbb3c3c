"""A WSGI application that spawns tasks through the blocking API, ``app.sync``.

    python examples/wsgi_app.py                 # the embedded PostgreSQL under ./.durable
    DURABLE_DSN=postgresql://... python examples/wsgi_app.py

Django, Flask and any WSGI server call their views from threads with no event loop: there
``app.sync.spawn(task, params, **options)`` spawns and blocks the request's thread until the
task is stored (one round trip), ``app.sync.get_task``, ``result`` and ``cancel`` likewise. They
run on a background event loop of their own, shared by every thread. This app is the standard
library's ``wsgiref`` (no framework); in Flask, the view's body is the same two lines.

    POST /orders     {"order_id": "o-1", "total": 12}  ->  202 {"task_id": ..., "created": true}
    GET  /tasks/<id>                                   ->  200 {"state": ..., "result": ...}

The order id is the idempotency key: a client that posts the same order twice gets the first
task back (``created: false``). The tasks run in a worker process: ``cd examples && durable
worker wsgi_app:app``. Run as a script, this file serves on a free port, starts that worker,
posts eight orders (and one twice) from eight threads, and waits for the receipts.
"""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypedDict
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from durable import Durable, SyncTaskContext, TaskNotFound

app = Durable()  # Durable(dsn) > $DURABLE_DSN > the embedded server under $DURABLE_HOME


class Order(TypedDict):
    order_id: str
    total: int


@app.task(name="send_receipt")
def send_receipt(ctx: SyncTaskContext, order: Order) -> str:
    """A plain ``def`` handler: the worker runs it in a thread."""
    return f"receipt for {order['order_id']}: {order['total']} EUR"


# --- the WSGI application ------------------------------------------------------------------------


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
    if method == "POST" and path == "/orders":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        order: Order = json.loads(environ["wsgi.input"].read(size))
        handle = app.sync.spawn(send_receipt, order, idempotency_key=f"order:{order['order_id']}")
        body = {"task_id": str(handle.task_id), "created": handle.created}
        return _respond(start_response, "202 Accepted", body)
    if method == "GET" and path.startswith("/tasks/"):
        try:
            record = app.sync.get_task(uuid.UUID(path.removeprefix("/tasks/")))
        except (ValueError, TaskNotFound):
            return _respond(start_response, "404 Not Found", {"error": "no such task"})
        return _respond(start_response, "200 OK", {"state": record.state, "result": record.result})
    return _respond(start_response, "404 Not Found", {"error": f"no route {method} {path}"})


def _respond(start_response: StartResponse, status: str, body: Any) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


# --- serving it: a thread per request, as a production WSGI server would --------------------------


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""


def serve(host: str = "127.0.0.1", port: int = 0) -> ThreadingWSGIServer:
    """Serve :func:`application` in a background thread; ``server.shutdown()`` stops it."""
    server = make_server(
        host, port, application, server_class=ThreadingWSGIServer, handler_class=QuietHandler
    )
    assert isinstance(server, ThreadingWSGIServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def request(base: str, method: str, path: str, body: Any = None) -> Any:
    """One HTTP request with the standard library's client: the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def start_worker(dsn: str | None = None) -> subprocess.Popen[bytes]:
    """``durable worker wsgi_app:app`` in a process of its own (it joins the embedded server
    through ``$DURABLE_HOME`` when there is no DSN)."""
    env = dict(os.environ)
    if app.client.embedded_home:
        env["DURABLE_HOME"] = app.client.embedded_home
    dsn_flag = ["--dsn", dsn] if dsn else []
    command = [sys.executable, "-m", "durable", "worker", "wsgi_app:app", *dsn_flag]
    return subprocess.Popen(
        [*command, "--log-level", "error", "--poll-interval", "0.5"],
        cwd=Path(__file__).resolve().parent,
        env=env,
    )


def wait_completed(base: str, task_id: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        task = request(base, "GET", f"/tasks/{task_id}")
        if task["state"] == "completed" or time.monotonic() > deadline:
            return task
        time.sleep(0.05)


def main() -> None:
    with app.sync:  # connects (and migrates) now; closes the pool and its loop at the end
        server = serve()
        base = f"http://127.0.0.1:{server.server_port}"
        worker = start_worker()
        try:
            orders = [{"order_id": f"o-{n}", "total": 10 * n} for n in range(1, 9)]
            with ThreadPoolExecutor(max_workers=8) as pool:
                answers = list(pool.map(lambda o: request(base, "POST", "/orders", o), orders))
            again = request(base, "POST", "/orders", orders[0])
            print(f"8 orders posted from 8 threads: {sum(a['created'] for a in answers)} tasks")
            print(
                f"o-1 posted again: created={again['created']}, same task: "
                f"{again['task_id'] == answers[0]['task_id']}"
            )
            for order, answer in zip(orders, answers, strict=True):
                task = wait_completed(base, answer["task_id"])
                print(f"{order['order_id']}: {task['state']} {task['result']!r}")
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            server.shutdown()


if __name__ == "__main__":
    main()
