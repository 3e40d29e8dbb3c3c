"""The contract between ``bench/run.py`` and one system's adapter script (stdlib only).

Every adapter (``durable_bench.py``, ``pgqueuer_bench.py``, ...) runs in its own virtual
environment as ``python bench/adapters/<system>_bench.py WORKLOAD --dsn DSN [--n N]
[--concurrency C] [--batch B] [--backlog M] [--processes P]``. It gets a fresh, empty database
of its own (it installs its system's schema there itself), runs one workload once, and prints one
line ``RESULT {json}`` as the last line of stdout:

- throughput workloads: ``{"value": tasks_per_second, "unit": "tasks/s", ...}``
- ``latency``: ``{"value": p50_ms, "unit": "ms", "p50_ms": ..., "p99_ms": ..., ...}``
- a workload the system cannot do: ``{"skip": "why, in a few words"}``

Extra keys are free-form figures for the README (``"duplicates"``, ``"seconds"``, ...).

Workloads (N = ``--n``, default 20,000; C = ``--concurrency``, default 50):

- ``enqueue_one``: N tasks enqueued one at a time, each call awaited before the next.
- ``enqueue_batch``: N tasks through the system's batched enqueue, ``--batch`` per call.
- ``service``: a service under load: C coroutines (threads, for a blocking API), each awaiting
  one enqueue at a time, N enqueues in all, on the system's default pool (pgqueuer on an asyncpg
  pool of 10, as durable's default); ``value`` is N / seconds, with ``p50_ms`` and ``p99_ms``
  the time of one enqueue call (``service_result``).
- ``noop``: N no-op tasks enqueued first (batched, untimed); then one worker in this process at
  concurrency C; the clock runs from starting the worker until the N-th handler has returned.
- ``steps3``: as ``noop`` but each task checkpoints three durable steps (skip if the system has
  no durable steps).
- ``latency``: a worker at concurrency C idles on an empty queue; 1,000 tasks are enqueued one at
  a time, the next only after the previous one started plus a 5 ms pause (low load); spawn-to-
  start is ``perf_counter()`` in the handler minus ``perf_counter()`` just before the enqueue call.
- ``backlog``: ``--backlog`` (default 1,000,000) tasks enqueued first (untimed, through the
  system's fastest batched way; its rate is reported as ``"preload_per_s"``); then as ``noop``,
  timing the first N handlers or as many as return within ``BACKLOG_WINDOW_S`` (60 s) of the
  worker's start, whichever comes first. ``value`` is handlers returned / elapsed seconds, ``n``
  the handlers actually timed, and ``"window_hit": true`` when the window ended it (see
  ``report_backlog``).
- ``scale``: N tasks enqueued first; ``--processes`` (default 4) worker processes at concurrency
  C each; the clock runs until N handlers returned across them. Reports ``"duplicates"``: how
  many task executions beyond one per task were seen (must be 0). The adapter runs ``run_scale``
  with the command line of its worker processes, ``python <itself> worker --dsn DSN ...``, to
  which it appends ``--out FILE``: a worker connects (or launches), calls ``worker_ready(FILE)``
  (touch ``FILE.ready``, wait for a line on stdin, "go"), then runs until SIGTERM and appends
  each executed task's number (its ``i`` param) to ``FILE``, one per line. ``run_scale`` starts
  the clock as it sends every process its go, once all are ready, and stops it when N distinct
  numbers are in the files (read every 20 ms; never the database); ``report_scale`` prints it.

After any untimed preload, an adapter runs ``ANALYZE`` (untimed): what autovacuum would have done
by then on a server that has it on (the local test server has it off).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TextIO, TypeVar

WORKLOADS = (
    "enqueue_one",
    "enqueue_batch",
    "service",
    "noop",
    "steps3",
    "latency",
    "backlog",
    "scale",
)
INTERNAL = ("worker",)  # the worker processes of ``scale``
LATENCY_TASKS = 1_000
LATENCY_PAUSE_S = 0.005
BACKLOG_WINDOW_S = 60.0
SCALE_POLL_S = 0.02  # how often ``run_scale`` reads the workers' ``--out`` files


def parse_args(
    argv: Sequence[str] | None = None, extra: tuple[str, ...] = ()
) -> argparse.Namespace:
    """The command line; ``extra`` names workloads of one system's own."""
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=WORKLOADS + INTERNAL + extra)
    parser.add_argument("--dsn", required=True, help="a fresh, empty database of this run's own")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--out", help="worker: the file that receives executed task numbers")
    return parser.parse_args(argv)


def report(**fields: Any) -> None:
    """Print the one ``RESULT`` line the orchestrator reads."""
    sys.stdout.flush()
    print("RESULT " + json.dumps(fields), flush=True)


def throughput(n: int, seconds: float, **extra: Any) -> None:
    report(value=n / seconds, unit="tasks/s", n=n, seconds=round(seconds, 4), **extra)


def report_backlog(
    returned: int,
    seconds: float,
    *,
    target: int,
    backlog: int,
    preload_per_s: float,
    **extra: Any,
) -> None:
    """``backlog``'s figure: ``returned`` handlers in ``seconds`` (N = ``target``, or fewer when
    the window ended the drain first: ``window_hit``)."""
    throughput(
        returned,
        seconds,
        window_hit=returned < target,
        backlog=backlog,
        preload_per_s=round(preload_per_s),
        **extra,
    )


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def latency(samples_s: Sequence[float], **extra: Any) -> None:
    p50 = percentile(samples_s, 50) * 1000
    p99 = percentile(samples_s, 99) * 1000
    report(
        value=p50, unit="ms", p50_ms=round(p50, 3), p99_ms=round(p99, 3), n=len(samples_s), **extra
    )


def service_result(n: int, seconds: float, samples_s: Sequence[float], **extra: Any) -> None:
    """``service``'s figure: N enqueues in ``seconds``, and the time of one enqueue call."""
    throughput(
        n,
        seconds,
        p50_ms=round(percentile(samples_s, 50) * 1000, 3),
        p99_ms=round(percentile(samples_s, 99) * 1000, 3),
        **extra,
    )


def service_threads(enqueue: Callable[[int], object], n: int, c: int, **extra: Any) -> None:
    """``service`` for a blocking API: C threads, each calling ``enqueue(i)`` one at a time."""

    numbers = iter(range(n))
    lock = threading.Lock()
    samples: list[float] = []

    def caller() -> None:
        while True:
            with lock:
                i = next(numbers, None)
            if i is None:
                return
            sent = now()
            enqueue(i)
            took = now() - sent
            with lock:
                samples.append(took)

    threads = [threading.Thread(target=caller) for _ in range(c)]
    start = now()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    service_result(n, now() - start, samples, concurrency=c, **extra)


def skip(reason: str) -> None:
    report(skip=reason)


now = time.perf_counter


class _Event(Protocol):
    def set(self) -> None: ...


E = TypeVar("E", bound=_Event)


class Returns(Generic[E]):
    """What handlers report as they return: how many did, and when the ``target``-th did (then
    ``done``, an asyncio or a threading event, is set); with ``out`` (a ``scale`` worker's
    ``--out`` file, opened line-buffered: one write a task), each one's task number."""

    def __init__(self, target: int, done: E, out: Path | None = None) -> None:
        self.target = target
        self.count = 0
        self.done = done
        self.done_at = 0.0
        self.out: TextIO | None = out.open("a", buffering=1) if out else None

    def returned(self, i: int) -> None:
        if self.out is not None:
            self.out.write(f"{i}\n")
        self.count += 1
        if self.count == self.target:
            self.done_at = now()
            self.done.set()


@dataclass(frozen=True, slots=True)
class Budget:
    """A generous time limit for enqueueing or running some tasks: ``base_s`` plus the time they
    take at ``per_s`` tasks a second (an adapter's limits, its ``budget(tasks)``)."""

    base_s: float
    per_s: float

    def __call__(self, tasks: int) -> float:
        return self.base_s + tasks / self.per_s


# --- scale -------------------------------------------------------------------------------------


def worker_ready(out: str) -> None:
    """A ``scale`` worker process, connected: say so (``<out>.ready``), then block until the
    parent's go (a line on stdin). If stdin closes instead, the parent gave up: exit."""
    Path(f"{out}.ready").touch()
    if not sys.stdin.readline():
        raise SystemExit(f"scale worker {out}: stdin closed before go")


@dataclass(frozen=True, slots=True)
class ScaleRun:
    n: int  # distinct tasks timed
    processes: int
    seconds: float  # from the go to the N-th distinct task number in the files
    executions: int  # every number in the files once the processes stopped, repeats included
    duplicates: int  # executions beyond one per distinct task


def run_scale(
    worker_argv: Sequence[str],
    processes: int,
    n: int,
    *,
    ready_s: float = 300.0,
    run_s: float | None = None,
    stop_s: float = 60.0,
) -> ScaleRun:
    """Start ``processes`` copies of ``worker_argv + ["--out", FILE]`` (each its own FILE), wait
    until every one is ready, send each its go, and time until N distinct task numbers are in the
    files; then stop them (SIGTERM; SIGKILL after ``stop_s``) and count every execution.

    Fails if a process exits early, if they are not all ready within ``ready_s``, if N tasks did
    not run within ``run_s`` (default: 10 minutes plus 10 tasks a second), or if a process did
    not stop cleanly (exit 0, or killed by the SIGTERM before it set a handler).
    """
    run_s = 600.0 + n / 10 if run_s is None else run_s
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        outs = [Path(tmp, f"worker{k}.txt") for k in range(processes)]
        for out in outs:
            out.touch()
        tally = _Tally(outs)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs.extend(  # one at a time: those started are stopped if the next fails
                subprocess.Popen(
                    [*worker_argv, "--out", str(out)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,  # stdout is this process's RESULT line
                )
                for out in outs
            )
            ready = [Path(f"{out}.ready") for out in outs]
            _wait(procs, lambda: all(path.exists() for path in ready), ready_s, "getting ready")
            started = now()  # nothing runs before its go
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                proc.stdin.flush()
            _wait(procs, lambda: tally.read() >= n, run_s, f"running {n} tasks")
            seconds = now() - started
        except BaseException as exc:
            for problem in _stop(procs, stop_s):
                exc.add_note(problem)
            raise
        if problems := _stop(procs, stop_s):
            raise RuntimeError("worker processes: " + "; ".join(problems))
        tally.read()
    return ScaleRun(n, processes, seconds, tally.total, tally.total - len(tally.seen))


def report_scale(run: ScaleRun, **extra: Any) -> None:
    throughput(
        run.n,
        run.seconds,
        processes=run.processes,
        executions=run.executions,
        duplicates=run.duplicates,
        **extra,
    )


def time_workers(
    script: str, args: argparse.Namespace, *, run_s: float, stop_s: float, **extra: Any
) -> None:
    """``scale``'s timed part, once the N tasks are enqueued: ``run_scale`` over ``--processes``
    copies of ``python SCRIPT worker --dsn DSN --concurrency C --processes P``, reported with
    ``concurrency`` and ``extra``."""
    argv = [sys.executable, script, "worker", "--dsn", args.dsn]
    argv += ["--concurrency", str(args.concurrency), "--processes", str(args.processes)]
    result = run_scale(argv, args.processes, args.n, run_s=run_s, stop_s=stop_s)
    report_scale(result, concurrency=args.concurrency, **extra)


class _Tally:
    """The task numbers in the workers' ``--out`` files, read as they grow."""

    def __init__(self, paths: list[Path]) -> None:
        self.offsets = dict.fromkeys(paths, 0)
        self.seen: set[int] = set()
        self.total = 0

    def read(self) -> int:
        """Read what was appended since the last call; the distinct numbers seen so far."""
        for path, offset in self.offsets.items():
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
            self.offsets[path] = offset + len(complete)
            numbers = [int(x) for x in complete.split()]
            self.total += len(numbers)
            self.seen.update(numbers)
        return len(self.seen)


def _wait(
    procs: list[subprocess.Popen[bytes]], done: Callable[[], bool], seconds: float, what: str
) -> None:
    deadline = now() + seconds
    while not done():
        for k, proc in enumerate(procs):
            if (code := proc.poll()) is not None:
                raise RuntimeError(f"worker process {k} exited with {code} while {what}")
        if now() > deadline:
            raise RuntimeError(f"{what}: not done within {seconds:g} s")
        time.sleep(SCALE_POLL_S)


def _stop(procs: list[subprocess.Popen[bytes]], seconds: float) -> list[str]:
    """SIGTERM every process, wait for all (SIGKILL after ``seconds``); what went wrong."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):  # it exited with our go unread
                proc.stdin.close()
    problems = []
    deadline = now() + seconds
    for proc in procs:
        try:
            code = proc.wait(max(0.0, deadline - now()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            problems.append(f"pid {proc.pid} ignored SIGTERM for {seconds:.0f} s")
        else:
            if code not in (0, -signal.SIGTERM):  # killed by SIGTERM: before its handler was set
                problems.append(f"pid {proc.pid} exited with {code}")
    return problems
