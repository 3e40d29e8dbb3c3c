"""DBOS adapter (``pip install dbos==3.4.0``); see ``contract.py`` for workloads.

The fresh database is DBOS's system database (``DBOSConfig(system_database_url=dsn)``);
``DBOS.launch()`` creates its schema (DBOS's own migrations). Every task is a ``@DBOS.workflow()``
called with its number ``i``, on one queue, ``bench``, declared with ``DBOS.register_queue``
(dbos 3.x: queues live in the system database and ``Queue(...)`` cannot be built directly).

A process that only enqueues launches with ``DBOS.listen_queues([])`` (it runs no workflows);
a worker is a launched DBOS that listens to every queue. Workloads that need both run one after
the other in the same process (``DBOS.destroy()``, then a new ``DBOS(config=...)``).

- ``enqueue_one``: ``queue.enqueue(noop, i)`` per task.
- ``service``: ``queue.enqueue(noop, i)`` from C threads at once (DBOS's enqueue blocks).
- ``enqueue_batch``: DBOS has no batched enqueue; its bulk path is ``DBOSClient``'s
  ``enqueue_in_transaction(conn, options, i)``, which joins a caller-owned SQLAlchemy
  transaction: ``--batch`` enqueues per transaction, one commit per batch, still one round trip
  per task (two statements: the status row and the inputs row).
- preloads (``noop``, ``steps3``, ``backlog``, ``scale``; untimed): the same
  ``enqueue_in_transaction``, 10,000 per transaction, on two connections at once (two threads,
  each its own transactions), then ``ANALYZE``. Each enqueue waits on two round trips, which a
  second lane overlaps: 2,500 tasks/s on one connection, 3,700/s on two, 3,150/s on four (2
  cores); DBOS has no public batched enqueue (its internal multi-row ``init_workflows`` ran at
  1,600/s). 1M tasks: ~4.5 min.
- ``noop`` / ``backlog``: the clock starts at ``DBOS.launch()`` of the worker and stops when the
  N-th workflow body returns (``backlog``: or when ``BACKLOG_WINDOW_S`` has passed); then
  ``DBOS.destroy(workflow_completion_timeout_sec=60)``.
- ``steps3``: the workflow calls a ``@DBOS.step()`` three times (three checkpoints), each
  returning a small int.
- ``latency``: the worker idles; the same process enqueues one task at a time with
  ``queue.enqueue``.
- ``scale``: ``--processes`` copies of ``worker`` under ``contract.run_scale``, each a launched
  DBOS with its own ``executor_id`` (the docs require a unique one per process for
  ``worker_concurrency``), until SIGTERM; each appends the numbers it ran to its ``--out`` file.
  A launched DBOS dequeues at once, so the queue is registered with ``worker_concurrency=0``
  (queue settings live in the database and every poll reloads them): a worker launches, reports
  ready, and on its go registers the queue again with ``worker_concurrency=C``, which its next
  poll picks up (that upsert and up to two 10 ms polls are inside the clock).

Tuning (``DBOS.register_queue``): ``worker_concurrency=C`` (50), the per-process cap the docs
recommend over a global ``concurrency``. ``polling_interval_sec=0.01`` instead of the default
1 s: a DBOS worker polls its queue on a timer whatever it finds, and each poll starts at most
``C - running`` workflows, so with the default one process starts at most 50 workflows a second
and the figures would measure the timer. The docs give no throughput advice on it, so it was
measured (no-op, N = 2,000, 2 shared cores): 1 s 49/s, 0.2 s 219/s, 0.1 s 393/s, 0.05 s 659/s,
0.02 s 972/s, 0.01 s 800-1,000/s, 0.005 s and 0.001 s about the same (noise): throughput stops
growing near 0.01 s, where the poll no longer bounds it. The same interval sets the ``latency``
figure (p50 ~11 ms). Workflows and steps are plain (sync)
functions, the docs' main form, which DBOS runs on its executor thread pool (unbounded by
default, so ``worker_concurrency`` is the cap); async ones ran slower here (noop ~620/s against
~850/s). ``sys_db_pool_size`` stays at its default, 20 (50 made no difference). Logging is at
WARNING (DBOS logs to stderr).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from contract import (
    BACKLOG_WINDOW_S,
    LATENCY_PAUSE_S,
    LATENCY_TASKS,
    Budget,
    Returns,
    now,
    parse_args,
    report_backlog,
    service_threads,
    throughput,
    time_workers,
    worker_ready,
)
from contract import latency as report_latency
from dbos import DBOS, DBOSClient, DBOSConfig

APP = "bench"
QUEUE = "bench"
POLL_INTERVAL_S = 0.01
PRELOAD_BATCH = 10_000
PRELOAD_LANES = 2  # connections enqueueing at once in a preload
STOP_S = 60  # for in-flight workflows to finish at shutdown
START_S = 60.0  # for one latency task to start
budget = Budget(base_s=600.0, per_s=10.0)  # 10 min + 10 tasks/s


class Hits(Returns[threading.Event]):
    """What the workflows report (from DBOS's executor threads, hence the lock); ``target`` is
    set before each drain, ``out`` in a ``scale`` worker."""

    def __init__(self) -> None:
        super().__init__(0, threading.Event())
        self.lock = threading.Lock()
        self.waiting: dict[int, threading.Event] = {}
        self.started_at: dict[int, float] = {}

    def started(self, i: int) -> None:
        at = now()
        with self.lock:
            if (event := self.waiting.pop(i, None)) is not None:
                self.started_at[i] = at
                event.set()

    def returned(self, i: int) -> None:
        with self.lock:
            super().returned(i)


HITS = Hits()


@DBOS.step()  # type: ignore[untyped-decorator]
def small_int(k: int) -> int:
    return k


@DBOS.workflow(name="noop")  # type: ignore[untyped-decorator]
def noop(i: int) -> None:
    HITS.started(i)
    HITS.returned(i)


@DBOS.workflow(name="steps3")  # type: ignore[untyped-decorator]
def steps3(i: int) -> int:
    HITS.started(i)
    total = small_int(0) + small_int(1) + small_int(2)
    HITS.returned(i)
    return int(total)


def launch(dsn: str, *, listen: bool, executor_id: str = "local") -> None:
    config: DBOSConfig = {
        "name": APP,
        "system_database_url": dsn,
        "executor_id": executor_id,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    if not listen:
        DBOS.listen_queues([])
    DBOS.launch()


def register_queue(concurrency: int) -> Any:
    return DBOS.register_queue(
        QUEUE,
        worker_concurrency=concurrency,
        polling_interval_sec=POLL_INTERVAL_S,
        on_conflict="always_update",
    )


def enqueue_batched(dsn: str, workflow: str, count: int, batch: int, lanes: int = 1) -> None:
    """Enqueue ``0 .. count - 1`` via ``DBOSClient.enqueue_in_transaction``, ``batch`` per
    transaction, on ``lanes`` connections at once."""
    engine = sa.create_engine(sa.make_url(dsn).set(drivername="postgresql+psycopg"))
    client = DBOSClient(system_database_engine=engine, application_name=APP)
    options = {"queue_name": QUEUE, "workflow_name": workflow}

    def enqueue(first: int) -> None:
        with engine.begin() as conn:
            for i in range(first, min(first + batch, count)):
                client.enqueue_in_transaction(conn, options, i)

    try:
        if lanes == 1:
            for first in range(0, count, batch):
                enqueue(first)
        else:
            with ThreadPoolExecutor(lanes) as pool:
                for _ in pool.map(enqueue, range(0, count, batch)):
                    pass
    finally:
        client.destroy()
        engine.dispose()


def preload(dsn: str, workflow: str, count: int) -> float:
    """Enqueue ``count`` tasks, then ANALYZE (both untimed); the tasks enqueued per second."""
    start = now()
    enqueue_batched(dsn, workflow, count, PRELOAD_BATCH, PRELOAD_LANES)
    rate = count / (now() - start)
    engine = sa.create_engine(sa.make_url(dsn).set(drivername="postgresql+psycopg"))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    finally:
        engine.dispose()
    return rate


def drain(dsn: str, n: int, window_s: float = math.inf) -> tuple[int, float]:
    """Launch a worker; run it until the N-th workflow body returned or ``window_s`` passed.
    How many returned, and the seconds from launch until the N-th or the window's end."""
    HITS.target = n
    start = now()
    deadline = start + min(window_s, budget(n))
    launch(dsn, listen=True)
    try:
        HITS.done.wait(max(0.0, deadline - now()))
        with HITS.lock:
            if HITS.done.is_set():
                returned, seconds = n, HITS.done_at - start
            elif window_s < math.inf:
                returned, seconds = HITS.count, now() - start
            else:
                raise RuntimeError(f"{HITS.count}/{n} tasks ran within {budget(n):.0f} s")
    finally:
        DBOS.destroy(workflow_completion_timeout_sec=STOP_S)
    return returned, seconds


def measure_latency(dsn: str, concurrency: int) -> None:
    launch(dsn, listen=True)
    samples: list[float] = []
    try:
        queue = DBOS.retrieve_queue(QUEUE)
        for i in range(-1, LATENCY_TASKS):  # task -1 warms up: the worker is up and polling
            event = HITS.waiting[i] = threading.Event()
            sent = now()
            queue.enqueue(noop, i)
            if not event.wait(START_S):
                raise RuntimeError(f"latency task {i} did not start within {START_S:.0f} s")
            if i >= 0:
                samples.append(HITS.started_at[i] - sent)
            time.sleep(LATENCY_PAUSE_S)
    finally:
        DBOS.destroy(workflow_completion_timeout_sec=STOP_S)
    report_latency(samples, concurrency=concurrency, poll_interval_s=POLL_INTERVAL_S)


def setup(dsn: str, concurrency: int, enqueue_one: int = 0) -> float:
    """Create DBOS's schema and the queue (``worker_concurrency=concurrency``) in a DBOS that
    runs nothing; time ``enqueue_one`` ``queue.enqueue`` calls, if asked to."""
    launch(dsn, listen=False)
    try:
        queue = register_queue(concurrency)
        start = now()
        for i in range(enqueue_one):
            queue.enqueue(noop, i)
        return now() - start
    finally:
        DBOS.destroy()


def service_dbos(dsn: str, n: int, c: int) -> None:
    """``service``: DBOS's enqueue blocks, so C threads each call ``queue.enqueue`` in turn."""
    launch(dsn, listen=False)
    try:
        queue = register_queue(c)
        queue.enqueue(noop, -1)  # connect, untimed
        service_threads(lambda i: queue.enqueue(noop, i), n, c, how="threads")
    finally:
        DBOS.destroy()


def run(args: argparse.Namespace) -> None:
    dsn, n, c = args.dsn, args.n, args.concurrency
    if args.workload == "enqueue_one":
        throughput(n, setup(dsn, c, enqueue_one=n))
        return
    if args.workload == "service":
        service_dbos(dsn, n, c)
        return
    setup(dsn, 0 if args.workload == "scale" else c)  # scale: paused until the workers' go
    if args.workload == "enqueue_batch":
        start = now()
        enqueue_batched(dsn, "noop", n, args.batch)
        throughput(n, now() - start, batch=args.batch, how="enqueue_in_transaction x batch")
    elif args.workload in ("noop", "steps3"):
        preload(dsn, args.workload, n)
        throughput(*drain(dsn, n), concurrency=c, poll_interval_s=POLL_INTERVAL_S)
    elif args.workload == "backlog":
        rate = preload(dsn, "noop", args.backlog)
        returned, seconds = drain(dsn, n, BACKLOG_WINDOW_S)
        report_backlog(
            returned,
            seconds,
            target=n,
            backlog=args.backlog,
            preload_per_s=rate,
            poll_interval_s=POLL_INTERVAL_S,
        )
    elif args.workload == "latency":
        measure_latency(dsn, c)
    elif args.workload == "scale":
        preload(dsn, "noop", n)


def worker(args: argparse.Namespace) -> None:
    """A ``scale`` worker process: launch DBOS (its queue paused), get ready, then on its go
    resume the queue and run until SIGTERM, appending each task's number to --out."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    with Path(args.out).open("a", buffering=1) as out:  # line-buffered: one write a task
        HITS.out = out
        launch(args.dsn, listen=True, executor_id=f"bench-worker-{os.getpid()}")
        try:
            worker_ready(args.out)
            register_queue(args.concurrency)  # the next poll reloads it: dequeueing starts
            while not stop.wait(1.0):
                pass
        finally:
            DBOS.destroy(workflow_completion_timeout_sec=STOP_S)


def scale(args: argparse.Namespace) -> None:
    """Preload (the queue paused), then time the worker processes running N tasks."""
    run(args)
    run_s, stop_s = budget(args.n), STOP_S + 30
    time_workers(__file__, args, run_s=run_s, stop_s=stop_s, poll_interval_s=POLL_INTERVAL_S)


def watchdog(seconds: float) -> None:
    """Exit non-zero if the run (DBOS threads included) is still alive after ``seconds``."""

    def expire() -> None:
        print(f"dbos_bench: still running after {seconds:.0f} s, giving up", file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def main() -> None:
    args = parse_args()
    if args.workload == "worker":
        worker(args)
        return
    watchdog(budget(args.n) + budget(args.backlog) + 1800)
    if args.workload == "scale":
        scale(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
