"""The fleet database: telemetry windows, rollups and alerts, in the hub store's database.

One interface (:class:`FleetDatabase`), two engines, chosen by where the hub store is
(:func:`open_fleet_database`): on SQLite the fleet tables live in the hub store's own file
(:mod:`~edgefleet.hub.fleet.sqlite_db`; an older hub's separate ``<stem>.fleet.db`` is
absorbed into it on first open, see :mod:`~edgefleet.hub.fleet.fleet_file`), on PostgreSQL
in the hub store's database (:mod:`~edgefleet.hub.fleet.postgres_db`), shared by every hub
process on it. The queries are the same on both: written once, in the dialect the two
share, with ``?`` placeholders (:mod:`~edgefleet.hub.fleet.dialect` holds the one
translation rule for PostgreSQL).

Invariants:

- one connection per thread (``threading.local``): readers never wait for each other and a
  report query in one thread sees one consistent snapshot (``read()``) while the ingest
  worker writes in another; the connections of threads that have ended are closed when
  the next one is opened, so short-lived threads (a request handler) leave none behind;
- every write goes through ``write()``, and fleet writes are serialised — across threads
  and, on PostgreSQL, across hub processes — exactly as SQLite's ``BEGIN IMMEDIATE``
  serialises them (the engine modules say how). The fleet code relies on it: a batch's
  dedupe check then insert, the ack cursor and the rollup rows are read-modify-writes, and
  the alert monitor's row-id cursor is only safe if row ids are assigned in commit order.
  A batch of telemetry, its dedupe cursor and its counters land together or not at all;
  blocks nest (an inner ``write()`` joins the outer transaction); a ``write()`` inside a
  ``read()`` is refused (it would not be serialised);
- durable commits: a device deletes what the hub acked, so a committed (and acked) window
  must survive a power cut; the ingest worker commits many batches at once to keep the
  fsync count low;
- database errors surface as :class:`~edgefleet.hub.errors.HubStoreError` (exit 1) from
  ``write()`` and ``read()``;
- the bucket lengths rows were written with are recorded in ``fleet_meta`` by the first
  writer: rollup levels *are* bucket lengths, so a reader must use the same ones;
- tables are only ever added (``CREATE ... IF NOT EXISTS`` on every open), so a database
  written by an older hub opens and gains them without a schema version change
  (``fleet_pending_spans`` came that way). The fleet tables carry their own schema version
  (``fleet_meta``), apart from the hub store's.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from edgefleet.hub.errors import HubStoreError
from edgefleet.hub.store.sql_lease import check_fence, lease_epoch_query

SCHEMA_VERSION = 1

#: The columns aggregation reads from raw windows and rollups alike.
STATS_COLUMNS = "device, grp, profile, version, bucket_s, start_s, end_s, summary, drift"

#: The fleet tables in SQLite's dialect; :func:`~edgefleet.hub.fleet.dialect.postgres_ddl`
#: derives PostgreSQL's. Column order matters: rows are inserted positionally.
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
CREATE INDEX IF NOT EXISTS fleet_records_gates
    ON fleet_records (model, version, received_at) WHERE kind = 'window';
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

#: Every fleet table, in the order of :data:`SCHEMA` (copies go table by table in it).
TABLES = (
    "fleet_meta",
    "fleet_records",
    "fleet_rollups",
    "fleet_cursor",
    "fleet_pending_spans",
    "fleet_counters",
    "fleet_references",
    "fleet_alerts",
    "fleet_alert_trackers",
    "fleet_alert_scopes",
    "fleet_alert_cursors",
)


def schema_statements() -> list[str]:
    """:data:`SCHEMA` one statement at a time (no ``;`` inside any of them)."""
    return [s.strip() for s in SCHEMA.split(";") if s.strip()]


class FleetCursor(Protocol):
    """What the fleet code uses of a cursor (``sqlite3.Cursor``, a psycopg cursor)."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class FleetConnection(Protocol):
    """What the fleet code uses of a connection: rows come back as tuples."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> FleetCursor: ...
    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> FleetCursor: ...


class FleetDatabase(ABC):
    """Per-thread connections to the fleet tables; ``write()`` and ``read()`` transactions.

    The engines supply connections and how a write or a read transaction begins;
    everything else is here.
    """

    #: Names the database in messages (a file path, a URL without its password).
    where: str
    #: How a write transaction begins (SQLite: ``BEGIN IMMEDIATE``).
    begin_write: tuple[str, ...]
    #: How a read transaction begins (one snapshot for every SELECT inside).
    begin_read: str

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[tuple[threading.Thread, Any]] = []
        self._all_lock = threading.Lock()

    # -- what an engine supplies ---------------------------------------------------------
    @abstractmethod
    def _open(self) -> FleetConnection:
        """A new connection in autocommit mode (transactions are begun explicitly)."""

    @abstractmethod
    def _close_connection(self, conn: Any) -> None:
        """Close ``conn``, ignoring errors."""

    @abstractmethod
    def _usable(self, conn: Any) -> bool:
        """False for a connection that cannot be used again (its server went away)."""

    @abstractmethod
    def _is_error(self, error: BaseException) -> bool:
        """True for the engine's database errors (wrapped as ``HubStoreError``)."""

    def _schema(self) -> list[str]:
        return schema_statements()

    def _tune(self, conn: FleetConnection) -> None:
        """Engine settings of the tables, once they exist (inside the opening write)."""
        return None  # SQLite: none

    # -- opening ---------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Create the tables (if missing) and check the schema version; the engine's
        ``__init__`` calls it once it can connect."""
        try:
            with self.write() as conn:
                for statement in self._schema():
                    conn.execute(statement)
                self._tune(conn)
                conn.execute(
                    "INSERT INTO fleet_meta VALUES ('schema_version', ?)"
                    " ON CONFLICT (key) DO NOTHING",
                    (str(SCHEMA_VERSION),),
                )
                row = conn.execute(
                    "SELECT value FROM fleet_meta WHERE key = 'schema_version'"
                ).fetchone()
        except HubStoreError as e:
            self.close()
            raise HubStoreError(f"{self.where}: cannot initialise the fleet tables: {e}") from e
        if row is None or int(row[0]) != SCHEMA_VERSION:
            self.close()
            raise HubStoreError(
                f"{self.where}: fleet tables are at schema {row[0] if row else '?'}, not "
                f"{SCHEMA_VERSION}"
            )

    # -- connections -----------------------------------------------------------------------
    @property
    def open_connections(self) -> int:
        """Connections held open: one per thread that used the database, until the next
        connection opened after that thread ended."""
        with self._all_lock:
            return len(self._all)

    def connection(self) -> FleetConnection:
        conn: FleetConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            if self._local.depth or self._usable(conn):
                return conn
            self._forget(conn)  # lost (a server restart): this thread gets a new one
        conn = self._open()
        self._local.conn = conn
        self._local.depth = 0
        self._local.writing = False
        with self._all_lock:
            ended = [c for thread, c in self._all if not thread.is_alive()]
            self._all = [(t, c) for t, c in self._all if t.is_alive()]
            self._all.append((threading.current_thread(), conn))
        # A thread that ended cannot be using its connection any more.
        for old in ended:
            self._close_connection(old)
        return conn

    def _forget(self, conn: Any) -> None:
        with self._all_lock:
            self._all = [(t, c) for t, c in self._all if c is not conn]
        self._close_connection(conn)
        self._local.conn = None

    # -- fencing ---------------------------------------------------------------------------
    #: How the lease row is read under a shared lock ("": an SQLite write holds the file).
    lease_lock: str = ""

    @contextmanager
    def fenced(self, lease: str, epoch: int) -> Iterator[None]:
        """Write transactions this thread opens in the block are refused (``FencedError``,
        nothing written) unless the hub store's lease ``lease`` still has ``epoch``: the
        lease row lives in the same database, so the check and the write are one
        transaction, and a hub that was paused or cut off after another took over its
        once-per-fleet work (alert monitor, maintenance) cannot write its late result."""
        previous = getattr(self._local, "fence", None)
        self._local.fence = (lease, epoch)
        try:
            yield
        finally:
            self._local.fence = previous

    def _check_fence(self, conn: FleetConnection) -> None:
        fence = getattr(self._local, "fence", None)
        if fence is None:
            return
        lease, epoch = fence
        row = conn.execute(lease_epoch_query(self.lease_lock), (lease,)).fetchone()
        check_fence(lease, epoch, int(row[0]) if row is not None else None, "fleet write")

    # -- transactions ----------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[FleetConnection]:
        """A write transaction, serialised with every other fleet write; nested blocks
        join the outer one."""
        conn = self.connection()
        depth = self._local.depth
        if depth and not self._local.writing:
            # It would join a read transaction: not serialised with the other writes.
            raise HubStoreError(f"{self.where}: a fleet write inside a read transaction")
        if depth:
            self._local.depth = depth + 1
            try:
                yield conn
            finally:
                self._local.depth = depth
            return
        try:
            for statement in self.begin_write:
                conn.execute(statement)
            self._check_fence(conn)
        except Exception as e:
            self._abandon(conn)
            if self._is_error(e):
                raise HubStoreError(f"{self.where}: cannot start a write: {e}") from e
            raise
        self._local.depth, self._local.writing = 1, True
        try:
            yield conn
        except BaseException as e:
            self._local.depth, self._local.writing = 0, False
            self._abandon(conn)
            if self._is_error(e):
                raise HubStoreError(f"{self.where}: write failed: {e}") from e
            raise
        self._local.depth, self._local.writing = 0, False
        try:
            conn.execute("COMMIT")
        except Exception as e:
            self._abandon(conn)
            if self._is_error(e):
                raise HubStoreError(f"{self.where}: commit failed: {e}") from e
            raise

    @contextmanager
    def read(self) -> Iterator[FleetConnection]:
        """A read transaction: every SELECT inside sees the same snapshot."""
        conn = self.connection()
        if self._local.depth:
            yield conn
            return
        try:
            conn.execute(self.begin_read)
        except Exception as e:
            self._abandon(conn)
            if self._is_error(e):
                raise HubStoreError(f"{self.where}: cannot start a read: {e}") from e
            raise
        self._local.depth = 1
        try:
            yield conn
        except Exception as e:
            if self._is_error(e):
                raise HubStoreError(f"{self.where}: read failed: {e}") from e
            raise
        finally:
            self._local.depth = 0
            try:
                conn.execute("COMMIT")
            except Exception:  # noqa: BLE001 - the snapshot is over either way
                self._abandon(conn)

    def _abandon(self, conn: FleetConnection) -> None:
        """Roll back whatever is open on ``conn`` (nothing may be)."""
        try:
            conn.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - no transaction open, or the connection is gone
            pass

    # -- settings and counters -------------------------------------------------------------
    def buckets(self) -> tuple[int, int] | None:
        """(bucket_s, coarse_bucket_s) the stored rows were bucketed with, if recorded."""
        with self.read() as conn:
            rows = dict(
                conn.execute(
                    "SELECT key, value FROM fleet_meta WHERE key IN ('bucket_s', 'coarse_bucket_s')"
                ).fetchall()
            )
        if len(rows) != 2:
            return None
        return int(rows["bucket_s"]), int(rows["coarse_bucket_s"])

    def record_buckets(self, bucket_s: int, coarse_bucket_s: int) -> None:
        with self.write() as conn:
            conn.executemany(
                "INSERT INTO fleet_meta VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                [("bucket_s", str(bucket_s)), ("coarse_bucket_s", str(coarse_bucket_s))],
            )

    def insert_many(
        self,
        conn: FleetConnection,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
    ) -> None:
        """Insert ``rows`` (values of ``columns``) into ``table``, inside the caller's write
        transaction, the fastest way the engine has (here: ``executemany``)."""
        if rows:
            marks = ",".join("?" * len(columns))
            conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def bump(self, conn: FleetConnection, counts: Mapping[str, int]) -> None:
        """Add to persistent counters inside the caller's write transaction."""
        rows = [(k, int(v)) for k, v in counts.items() if v]
        if rows:
            conn.executemany(
                "INSERT INTO fleet_counters VALUES (?, ?) ON CONFLICT (name)"
                " DO UPDATE SET value = fleet_counters.value + excluded.value",
                rows,
            )

    def counters(self) -> dict[str, int]:
        with self.read() as conn:
            rows = conn.execute("SELECT name, value FROM fleet_counters").fetchall()
        return {str(name): int(value) for name, value in rows}

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for _, conn in conns:
            self._close_connection(conn)
        self._local = threading.local()


def open_fleet_database(location: Path | str) -> FleetDatabase:
    """The fleet tables at ``location``, the hub store's: a ``postgresql://`` URL, else an
    SQLite file (a separate fleet file an older hub left beside it is absorbed first)."""
    from edgefleet.hub.store.postgres import is_postgres_url

    if isinstance(location, str) and is_postgres_url(location):
        from edgefleet.hub.fleet.postgres_db import PostgresFleetDatabase

        return PostgresFleetDatabase(location)
    from edgefleet.hub.fleet.fleet_file import absorb_fleet_file
    from edgefleet.hub.fleet.sqlite_db import SqliteFleetDatabase

    db = SqliteFleetDatabase(Path(location))
    try:
        absorb_fleet_file(db)
    except BaseException:
        db.close()
        raise
    return db


def fleet_database_exists(location: Path | str) -> bool:
    """False for an SQLite file not created yet (no hub has run on it); a PostgreSQL
    database is taken to exist (opening it says otherwise)."""
    from edgefleet.hub.store.postgres import is_postgres_url

    if isinstance(location, str) and is_postgres_url(location):
        return True
    return Path(location).is_file()
