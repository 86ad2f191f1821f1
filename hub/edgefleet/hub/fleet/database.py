"""The fleet database: one SQLite (WAL) file holding telemetry windows, rollups and alerts.

Invariants:

- one connection per thread (``threading.local``): readers never wait for each other and a
  report query in one thread sees one consistent snapshot (``read()``) while the ingest
  worker writes in another; the connections of threads that have ended are closed when
  the next one is opened, so short-lived threads (a request handler) leave none behind;
- every write goes through ``write()``: ``BEGIN IMMEDIATE`` ... ``COMMIT``, so a batch of
  telemetry, its dedupe cursor and its counters land together or not at all; blocks nest
  (an inner ``write()`` joins the outer transaction);
- ``synchronous=FULL``: a device deletes what the hub acked, so a committed (and acked)
  window must survive a power cut; the ingest worker commits many batches at once to keep
  the fsync count low;
- ``sqlite3`` errors surface as :class:`~edgefleet.hub.errors.HubStoreError` (exit 1);
- the bucket lengths rows were written with are recorded in ``fleet_meta`` by the first
  writer: rollup levels *are* bucket lengths, so a reader must use the same ones;
- tables are only ever added (``CREATE ... IF NOT EXISTS`` on every open), so a database
  written by an older hub opens and gains them without a schema version change
  (``fleet_pending_spans`` came that way).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from edgefleet.hub.errors import HubStoreError

SCHEMA_VERSION = 1

#: The columns aggregation reads from raw windows and rollups alike.
STATS_COLUMNS = "device, grp, profile, version, bucket_s, start_s, end_s, summary, drift"

SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_records (
    rid INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, received_at REAL NOT NULL,
    model TEXT, version INTEGER, grp TEXT NOT NULL DEFAULT '', profile TEXT NOT NULL DEFAULT '',
    start_s REAL, end_s REAL, bucket_s INTEGER,
    requests INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
    summary TEXT, drift BLOB, rolled INTEGER NOT NULL DEFAULT 0,
    UNIQUE (device, seq));
CREATE INDEX IF NOT EXISTS fleet_records_query
    ON fleet_records (model, version, bucket_s) WHERE kind = 'window' AND rolled = 0;
CREATE INDEX IF NOT EXISTS fleet_records_unrolled
    ON fleet_records (received_at) WHERE kind = 'window' AND rolled = 0;
CREATE INDEX IF NOT EXISTS fleet_records_received ON fleet_records (received_at);
CREATE TABLE IF NOT EXISTS fleet_rollups (
    level INTEGER NOT NULL, model TEXT NOT NULL, version INTEGER NOT NULL,
    bucket_s INTEGER NOT NULL, device TEXT NOT NULL, grp TEXT NOT NULL, profile TEXT NOT NULL,
    profile_id TEXT NOT NULL, windows INTEGER NOT NULL, start_s REAL, end_s REAL,
    summary TEXT NOT NULL, drift BLOB, updated_at REAL NOT NULL,
    PRIMARY KEY (level, model, version, bucket_s, device, grp, profile, profile_id));
CREATE TABLE IF NOT EXISTS fleet_cursor (
    device TEXT PRIMARY KEY, contiguous INTEGER NOT NULL, pruned_through INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_pending_spans (
    device TEXT NOT NULL, after_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    PRIMARY KEY (device, after_seq));
CREATE TABLE IF NOT EXISTS fleet_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_references (
    model TEXT NOT NULL, version INTEGER NOT NULL, profile TEXT NOT NULL,
    validation TEXT NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS fleet_alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, rule TEXT NOT NULL,
    model TEXT NOT NULL, version INTEGER NOT NULL, scope_kind TEXT NOT NULL,
    scope TEXT NOT NULL, severity TEXT NOT NULL, status TEXT NOT NULL,
    opened_at REAL NOT NULL, resolved_at REAL, summary TEXT NOT NULL, details TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS fleet_alerts_open ON fleet_alerts (status, key);
CREATE TABLE IF NOT EXISTS fleet_alert_trackers (
    key TEXT PRIMARY KEY, state TEXT NOT NULL, count INTEGER NOT NULL,
    updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_alert_scopes (
    scope_key TEXT PRIMARY KEY, last_data_at REAL, carry BLOB, carry_totals TEXT,
    carry_since REAL);
CREATE TABLE IF NOT EXISTS fleet_alert_cursors (
    model TEXT NOT NULL, version INTEGER NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (model, version));
"""


class FleetDatabase:
    """Per-thread SQLite connections to one fleet database file."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._all_lock = threading.Lock()
        conn = self.connection()
        try:
            conn.executescript(SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO fleet_meta VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            row = conn.execute(
                "SELECT value FROM fleet_meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.Error as e:
            raise HubStoreError(f"{self.path}: cannot initialise fleet database: {e}") from e
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise HubStoreError(
                f"{self.path}: fleet database schema {row[0] if row else '?'} is not "
                f"{SCHEMA_VERSION}"
            )

    @property
    def open_connections(self) -> int:
        """Connections held open: one per thread that used the database, until the next
        connection opened after that thread ended."""
        with self._all_lock:
            return len(self._all)

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        except (sqlite3.Error, OSError) as e:
            raise HubStoreError(f"{self.path}: cannot open fleet database: {e}") from e
        self._local.conn = conn
        self._local.depth = 0
        with self._all_lock:
            ended = [c for thread, c in self._all if not thread.is_alive()]
            self._all = [(t, c) for t, c in self._all if t.is_alive()]
            self._all.append((threading.current_thread(), conn))
        # A thread that ended cannot be using its connection any more.
        for old in ended:
            _close_quietly(old)
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); nested blocks join the outer one."""
        conn = self.connection()
        depth = self._local.depth
        if depth:
            self._local.depth = depth + 1
            try:
                yield conn
            finally:
                self._local.depth = depth
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise HubStoreError(f"{self.path}: cannot start a write: {e}") from e
        self._local.depth = 1
        try:
            yield conn
        except BaseException as e:
            self._local.depth = 0
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(e, sqlite3.Error):
                raise HubStoreError(f"{self.path}: write failed: {e}") from e
            raise
        self._local.depth = 0
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise HubStoreError(f"{self.path}: commit failed: {e}") from e

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every SELECT inside sees the same snapshot."""
        conn = self.connection()
        if self._local.depth:
            yield conn
            return
        try:
            conn.execute("BEGIN")
        except sqlite3.Error as e:
            raise HubStoreError(f"{self.path}: cannot start a read: {e}") from e
        self._local.depth = 1
        try:
            yield conn
        except sqlite3.Error as e:
            raise HubStoreError(f"{self.path}: read failed: {e}") from e
        finally:
            self._local.depth = 0
            try:
                conn.execute("COMMIT")
            except sqlite3.Error:
                pass

    def buckets(self) -> tuple[int, int] | None:
        """(bucket_s, coarse_bucket_s) the stored rows were bucketed with, if recorded."""
        try:
            rows = dict(
                self.connection()
                .execute(
                    "SELECT key, value FROM fleet_meta WHERE key IN ('bucket_s', 'coarse_bucket_s')"
                )
                .fetchall()
            )
        except sqlite3.Error as e:
            raise HubStoreError(f"{self.path}: cannot read fleet settings: {e}") from e
        if len(rows) != 2:
            return None
        return int(rows["bucket_s"]), int(rows["coarse_bucket_s"])

    def record_buckets(self, bucket_s: int, coarse_bucket_s: int) -> None:
        with self.write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO fleet_meta VALUES (?, ?)",
                [("bucket_s", str(bucket_s)), ("coarse_bucket_s", str(coarse_bucket_s))],
            )

    def bump(self, conn: sqlite3.Connection, counts: Mapping[str, int]) -> None:
        """Add to persistent counters inside the caller's write transaction."""
        conn.executemany(
            "INSERT INTO fleet_counters VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            [(k, int(v)) for k, v in counts.items() if v],
        )

    def counters(self) -> dict[str, int]:
        try:
            rows = self.connection().execute("SELECT name, value FROM fleet_counters").fetchall()
        except sqlite3.Error as e:
            raise HubStoreError(f"{self.path}: cannot read counters: {e}") from e
        return {str(name): int(value) for name, value in rows}

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for _, conn in conns:
            _close_quietly(conn)
        self._local = threading.local()


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:
        pass
