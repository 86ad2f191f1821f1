"""SQLite (WAL) engine of the hub store: the default, one file, no set-up.

Invariants: one connection per store object, shared by the service's threads
under a re-entrant lock; WAL mode so ``hub rollout ...`` commands in another
process read and write while ``hub serve`` runs (``busy_timeout`` absorbs the
short write locks); writes happen inside ``BEGIN IMMEDIATE`` transactions so
a reader never sees half of a rollout and no two writers interleave a
read-modify-write; ``synchronous=FULL`` so a commit the hub acknowledged
(telemetry acks, directives it published) survives a power cut, not only a
crash of the process; ``sqlite3`` errors are wrapped in ``HubStoreError``.

The queries are :class:`~edgefleet.hub.store.sql_store.SqlHubStore`'s.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgefleet.core.fsmodes import private_file
from edgefleet.hub.errors import HubStoreError
from edgefleet.hub.store.rows import Row
from edgefleet.hub.store.schema import SQLITE
from edgefleet.hub.store.sql_store import SqlHubStore


class SqliteHubStore(SqlHubStore):
    """The default hub store: one SQLite file in WAL mode."""

    engine = SQLITE

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self._lock = threading.RLock()
        self._depth = 0
        try:
            # A zero-length file is no store: SQLite would silently start a new, empty one.
            if self.path.is_file() and self.path.stat().st_size == 0:
                raise HubStoreError(
                    f"{self.path}: the hub store is an empty file (0 bytes); restore it from "
                    "a backup, or remove it to start a new store"
                )
            private_file(self.path)  # 0600 whatever the umask (password hashes inside)
        except OSError as e:
            raise HubStoreError(f"cannot open hub store {self.path}: {e.strerror or e}") from e
        try:
            self._db = sqlite3.connect(
                str(self.path),
                timeout=busy_timeout_s,
                isolation_level=None,  # explicit BEGIN/COMMIT below
                check_same_thread=False,
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on a power
            # cut, and those may be telemetry the devices were told is stored.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self.transaction():
                self._prepare_schema()
        except sqlite3.Error as e:
            raise HubStoreError(f"cannot open hub store {self.path}: {e}") from e
        except HubStoreError:
            self._db.close()
            raise

    def check_integrity(self) -> None:
        """Refuse a store whose pages are damaged (``PRAGMA quick_check``), with one line
        naming the file. O(store size), so ``hub serve`` runs it once at start rather
        than meeting the damage as a traceback on every tick."""
        try:
            with self._lock:
                rows = self._db.execute("PRAGMA quick_check(3)").fetchall()
        except sqlite3.DatabaseError as e:
            raise HubStoreError(f"{self.path}: hub store is corrupt ({e})") from e
        problems = " ".join(" ".join(str(r[0]) for r in rows if str(r[0]) != "ok").split())
        if problems:
            raise HubStoreError(
                f"{self.path}: hub store is corrupt ({problems[:300]}); restore it from a backup"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            outer = self._depth == 0
            try:
                if outer:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._check_fence()
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                if outer:
                    self._db.execute("COMMIT")
            except BaseException as e:
                if outer and self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise HubStoreError(f"hub store {self.path}: {e}") from e
                raise

    def _cursor(self, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as e:
            raise HubStoreError(f"hub store {self.path}: {e}") from e

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._cursor(sql, params).rowcount

    def _run_many(self, sql: str, params: Sequence[Sequence[Any]]) -> int:
        with self._lock:
            try:
                return self._db.executemany(sql, params).rowcount
            except sqlite3.Error as e:
                raise HubStoreError(f"hub store {self.path}: {e}") from e

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return list(self._cursor(sql, params).fetchall())

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with self._lock:
            row: Row | None = self._cursor(sql, params).fetchone()
            return row
