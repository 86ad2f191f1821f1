"""The fleet tables on PostgreSQL: in the hub store's database, shared by every hub.

Every fleet write transaction begins by taking one transaction-scoped advisory lock
(``pg_advisory_xact_lock``, released by its ``COMMIT`` or ``ROLLBACK``), so fleet writes
— of every thread of every hub process on the database — are serialised exactly as
SQLite's ``BEGIN IMMEDIATE`` serialises them. That is what the fleet code relies on: a
batch's dedupe check then insert (the ``UNIQUE (device, seq)`` key stays as the backstop),
the ack cursor's read-modify-write, one hot rollup row per group merged by whichever hub
received the window, the counters, and the alert monitor's row-id cursor, which is only
commit-order safe because row ids are drawn inside the lock: a later rid commits later.
The price is one writer at a time on the fleet tables; the ingest worker's group commits
(many batches per transaction) keep it small. Reads run in ``REPEATABLE READ``
transactions: one snapshot per ``read()``, never waiting for a writer.

Connections: one per thread, each ``synchronous_commit = on`` (an acked window survives a
power cut of the database host) and ``idle_in_transaction_session_timeout`` (a paused hub
cannot hold the fleet lock for ever). A connection the server dropped (a restart) is
replaced when its thread next asks for one; the transaction that met the drop fails
(its batch is not acked, the device resends).

psycopg is imported here and in the hub store's PostgreSQL engine only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from edgefleet.hub.errors import HubStoreError
from edgefleet.hub.fleet.database import FleetConnection, FleetCursor, FleetDatabase
from edgefleet.hub.fleet.dialect import postgres_ddl
from edgefleet.hub.store.postgres import (
    CONNECT_TIMEOUT_S,
    placeholders,
    psycopg_missing,
    redact_url,
)
from edgefleet.hub.store.schema import POSTGRES

#: The advisory lock every fleet write transaction holds (the hub store's schema lock is
#: ``0x6564_6765_0001``).
FLEET_WRITE_LOCK = 0x6564_6765_0002
#: Columns holding encoded window statistics.
_BLOBS = (("fleet_records", "drift"), ("fleet_rollups", "drift"), ("fleet_alert_scopes", "carry"))


class _Connection:
    """A psycopg connection with the fleet's calling convention (``?``, tuple rows)."""

    def __init__(self, conn: Any) -> None:
        self.raw = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> FleetCursor:
        cursor: FleetCursor = self.raw.execute(
            placeholders(sql), parameters if parameters else None
        )
        return cursor

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> FleetCursor:
        cursor = self.raw.cursor()
        rows = list(parameters)
        if rows:
            cursor.executemany(placeholders(sql), rows)
        result: FleetCursor = cursor
        return result


class PostgresFleetDatabase(FleetDatabase):
    """Per-thread psycopg connections to the fleet tables in a PostgreSQL database."""

    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ"
    begin_write = ("BEGIN", f"SELECT pg_advisory_xact_lock({FLEET_WRITE_LOCK})")
    lease_lock = POSTGRES.for_share  # a takeover's UPDATE of the lease row waits for this write

    def __init__(self, url: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        try:
            import psycopg
        except ImportError as e:
            raise psycopg_missing(e) from e
        super().__init__()
        self._psycopg = psycopg
        self.url = url
        self.where = redact_url(url)
        self.connect_timeout_s = connect_timeout_s
        self._types: dict[str, dict[str, str]] = {}  # table -> column -> type (insert_many)
        self._prepare()

    def insert_many(
        self,
        conn: FleetConnection,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
    ) -> None:
        """``COPY ... FROM STDIN`` in the binary format: one round trip and no per-row
        statement, several times faster than an ``executemany`` of window rows (the fleet
        lock is held meanwhile); binary, because the text format spells every byte of a
        statistics blob out in hex, which cost the hub more than the rest of the copy."""
        if not rows:
            return
        assert isinstance(conn, _Connection)
        types = self._column_types(conn, table, columns)
        sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        with conn.raw.cursor().copy(sql) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)

    def _column_types(self, conn: _Connection, table: str, columns: Sequence[str]) -> list[str]:
        """The columns' types as the server declares them (a binary copy must send each
        value in its column's exact type), read once per table."""
        known = self._types.get(table)
        if known is None:
            rows = conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = ?::regclass AND attnum > 0 AND NOT attisdropped",
                (table,),
            ).fetchall()
            known = self._types[table] = {str(name): str(kind) for name, kind in rows}
        return [known[column] for column in columns]

    def _schema(self) -> list[str]:
        return [postgres_ddl(s) for s in super()._schema()]

    def _tune(self, conn: FleetConnection) -> None:
        """Statistics blobs stored out of line *uncompressed* (``STORAGE EXTERNAL``): they
        hardly compress, and compressing every window and every rewritten rollup cost the
        server more CPU than the rest of the insert, under the fleet lock. Altered only
        when not set yet (``ALTER TABLE`` waits for every reader of the table)."""
        for table, column in _BLOBS:
            row = conn.execute(
                "SELECT attstorage FROM pg_attribute WHERE attrelid = ?::regclass AND attname = ?",
                (table, column),
            ).fetchone()
            if row is not None and str(row[0]) != "e":
                conn.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTERNAL")

    def _open(self) -> FleetConnection:
        try:
            conn = self._psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout_s))
            )
            conn.execute("SET synchronous_commit = on")
            conn.execute("SET idle_in_transaction_session_timeout = '60s'")
        except self._psycopg.Error as e:
            text = (str(e).strip() or type(e).__name__).splitlines()[0]
            raise HubStoreError(f"{self.where}: cannot open the fleet tables: {text}") from e
        return _Connection(conn)

    def _close_connection(self, conn: Any) -> None:
        try:
            conn.raw.close()
        except self._psycopg.Error:
            pass

    def _usable(self, conn: Any) -> bool:
        return not (conn.raw.closed or conn.raw.broken)

    def _is_error(self, error: BaseException) -> bool:
        return isinstance(error, self._psycopg.Error)
