"""A real PostgreSQL server for tests, started from the distribution's binaries.

Invariants:

- The server is this process's own: ``initdb`` into a fresh temporary directory, a
  free loopback port (never 5432), Unix sockets only inside that directory; the
  machine's own PostgreSQL service is never touched.
- ``initdb`` and ``postgres`` refuse to run as root, so when we are root they run as
  an unprivileged system user (:data:`TEST_USER`, created on first use) through
  ``runuser``; otherwise as ourselves.
- ``start()`` returns only once the server logged that it accepts connections and the
  port answers, or raises ``RuntimeError`` with the tail of its log.
- ``stop()`` is a fast shutdown; ``kill()`` a SIGKILL of the postmaster (a crash:
  the next ``start()`` recovers from the WAL); ``remove()`` deletes the directory.
- The server trades durability against power loss for speed (``fsync=off``): it exists
  for tests, where the operating system outlives every crash we simulate; commits are
  still written to the WAL before they return, so a ``kill()`` loses nothing committed.

Nothing here imports a PostgreSQL driver: the server is driven through its binaries,
and ``dsn(database)`` is what a test hands to the code under test.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from edgefleet.core.testing.brokers import LOOPBACK, _port_open, free_port

TEST_USER = "edgefleet-test"
SUPERUSER = "edgefleet"
PG_BIN_ENV = "EDGEFLEET_PG_BIN"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_READY = b"database system is ready to accept connections"


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``, or None.

    ``$EDGEFLEET_PG_BIN`` names one (and nothing else is tried when it is set);
    otherwise the newest ``/usr/lib/postgresql/<version>/bin`` (Debian, Ubuntu),
    then ``initdb`` on PATH.
    """
    override = os.environ.get(PG_BIN_ENV)
    if override:
        path = Path(override)
        return path if (path / "initdb").is_file() and (path / "postgres").is_file() else None

    def version(folder: str) -> float:
        try:
            return float(Path(folder).parent.name)
        except ValueError:
            return 0.0

    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if (Path(folder) / "initdb").is_file():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def ensure_test_user(name: str = TEST_USER) -> pwd.struct_passwd:
    """The unprivileged account the server runs as when we are root (created if missing)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    done = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"cannot create the system user {name} to run PostgreSQL: {done.stderr.strip()}"
        ) from None


class PostgresServer:
    """``initdb`` + ``postgres`` in a temporary directory on a free loopback port."""

    def __init__(self, *, port: int | None = None, pg_bin: Path | None = None) -> None:
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.pg_bin = pg_bin or find_pg_bin()
        self.workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: Any = None
        self._run_as: str | None = TEST_USER if os.geteuid() == 0 else None
        self._databases = 0

    @property
    def data_dir(self) -> Path:
        assert self.workdir is not None, "server not created yet"
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, "server not created yet"
        return self.workdir / "postgres.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def _command(self, *argv: str) -> list[str]:
        if self._run_as is None:
            return list(argv)
        return ["runuser", "-u", self._run_as, "--", *argv]

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh name unless given); returns its name."""
        self._databases += 1
        name = name or f"test_{os.getpid()}_{self._databases}"
        self._psql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still on it."""
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _psql(self, command: str) -> None:
        assert self.pg_bin is not None
        done = subprocess.run(
            [str(self.pg_bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", self.dsn()]
            + ["-c", command],
            capture_output=True,
            text=True,
            check=False,
            timeout=START_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command}: {done.stderr.strip()}")

    def _init(self) -> None:
        if self.pg_bin is None:
            raise RuntimeError(
                "PostgreSQL binaries not found; run scripts/install-system-deps.sh"
                f" (or set ${PG_BIN_ENV})"
            )
        # Not under pytest's tmp_path: its folders are private to root, and the server
        # user must be able to reach its own directory.
        self.workdir = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
        if self._run_as is not None:
            account = ensure_test_user(self._run_as)
            os.chown(self.workdir, account.pw_uid, account.pw_gid)
        self.workdir.chmod(0o700)
        done = subprocess.run(
            self._command(
                str(self.pg_bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ),
            capture_output=True,
            text=True,
            check=False,
            timeout=START_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.strip()[-800:]}")

    def start(self) -> PostgresServer:
        """Start (or start again after ``stop``/``kill``) on the same port."""
        # After a kill the orphaned backends still hold the old shared memory for a
        # moment, and the postmaster refuses to start until they have exited.
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                return self._start_once()
            except RuntimeError as e:
                if "shared memory block" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _start_once(self) -> PostgresServer:
        if self.running:
            return self
        if self.workdir is None:
            self._init()
        assert self.pg_bin is not None
        if _port_open(self.host, self.port):
            raise RuntimeError(f"port {self.port} is already in use; postgres not started")
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap()
        if self._run_as is not None:
            account = pwd.getpwnam(self._run_as)
            os.chown(self.log_path, account.pw_uid, account.pw_gid)
        self._process = subprocess.Popen(
            self._command(
                str(self.pg_bin / "postgres"),
                "-D",
                str(self.data_dir),
                "-c",
                f"port={self.port}",
                "-c",
                f"listen_addresses={self.host}",
                "-c",
                f"unix_socket_directories={self.workdir}",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=32MB",
            ),
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._reap()
                raise RuntimeError(
                    f"postgres exited with {self._process.returncode} on port {self.port}: "
                    f"{self.log_tail()}"
                )
            if self._logged_since(log_offset) and _port_open(self.host, self.port):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"postgres did not listen on port {self.port}: {self.log_tail()}")

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _signal_and_wait(self, signum: int) -> None:
        # runuser stands between us and the postmaster: signal the postmaster itself.
        if self._process is None:
            return
        if self._process.poll() is None:
            pid = self._postmaster_pid()
            try:
                if pid is not None:
                    os.kill(pid, signum)
                else:
                    self._process.send_signal(signum)
            except ProcessLookupError:
                pass
            try:
                self._process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=STOP_TIMEOUT_S)
        self._reap()

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, a checkpoint is written."""
        self._signal_and_wait(signal.SIGINT)

    def kill(self) -> None:
        """Crash the server (SIGKILL to the postmaster; its backends follow on their own)."""
        if self._process is not None and self._process.poll() is None:
            # Only the postmaster: runuser reaps it and exits. Killing runuser too would
            # leave the postmaster a zombie of an init that may never reap it, and its pid
            # in postmaster.pid would then look alive to the next start.
            pid = self._postmaster_pid()
            try:
                os.kill(pid if pid is not None else self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._process.wait(timeout=STOP_TIMEOUT_S)
        self._reap()

    def restart(self) -> PostgresServer:
        self.stop()
        return self.start()

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _reap(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def _logged_since(self, offset: int) -> bool:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return _READY in log.read()
        except FileNotFoundError:
            return False

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, AssertionError):
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"PostgresServer({self.host}:{self.port}, running={self.running})"
