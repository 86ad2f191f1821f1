"""PostgreSQL engine of the hub store (``[store] url = "postgresql://..."``), psycopg 3.

Invariants:

- connections come from a ``psycopg_pool.ConnectionPool`` in autocommit mode; a
  transaction holds one connection for its whole length (``BEGIN``..``COMMIT``), kept
  per thread so nested ``transaction()`` blocks and the reads inside them join it; a
  read outside a transaction borrows one for that one statement (one round trip, no
  ``BEGIN``/``COMMIT`` around it);
- every connection runs ``synchronous_commit = on``: a commit returns once the WAL is
  flushed, so what the hub acknowledges survives a power cut of the database host
  whatever the server's default;
- the schema is created or migrated under a transaction-scoped advisory lock, so hubs
  starting together do not race each other's ``CREATE TABLE``;
- psycopg errors (also a pool that cannot connect in time) surface as ``HubStoreError``
  naming the URL without its password.

psycopg is imported here only, so a hub on SQLite needs none of it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from edgefleet.hub.errors import HubStoreError
from edgefleet.hub.store.rows import Row
from edgefleet.hub.store.schema import POSTGRES
from edgefleet.hub.store.sql_store import SqlHubStore

# The key of the advisory lock held while the schema is created or migrated.
_SCHEMA_LOCK = 0x6564_6765_0001
CONNECT_TIMEOUT_S = 10.0


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def is_postgres_url(location: str) -> bool:
    return urlsplit(location).scheme in ("postgresql", "postgres")


def psycopg_missing(e: ImportError) -> HubStoreError:
    """What a hub on a PostgreSQL store says when the ``postgres`` extra is not installed
    (the hub store and the fleet tables both open the database)."""
    return HubStoreError(
        f"[store] url is PostgreSQL but psycopg is not installed ({e.name});"
        " install edgefleet[postgres]"
    )


class PostgresHubStore(SqlHubStore):
    """The hub store on a PostgreSQL server, shared by any number of hub processes."""

    engine = POSTGRES

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        try:
            import psycopg
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool
        except ImportError as e:
            raise psycopg_missing(e) from e
        self._psycopg_error: type[Exception] = psycopg.Error
        self._connection_error: type[Exception] = psycopg.OperationalError
        self.url = url
        self.where = redact_url(url)
        self._local = threading.local()

        def configure(conn: Any) -> None:
            conn.execute("SET synchronous_commit = on")
            # A hub paused inside a transaction (SIGSTOP, a VM freeze) must not hold its
            # row locks (a lease, a rollout) forever: the server ends such a session.
            conn.execute("SET idle_in_transaction_session_timeout = '60s'")

        try:
            self._pool = ConnectionPool(
                url,
                min_size=min_size,
                max_size=max_size,
                kwargs={
                    "row_factory": dict_row,
                    "connect_timeout": max(1, int(connect_timeout_s)),
                    "autocommit": True,
                },
                configure=configure,
                open=False,
                name="edgefleet-hub-store",
            )
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except Exception as e:
            raise HubStoreError(f"cannot open hub store {self.where}: {_one_line(e)}") from e
        try:
            with self.transaction():
                self._run("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
                self._prepare_schema()
        except BaseException:
            self._pool.close()
            raise

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:  # nested: join the outer transaction
            yield
            return
        try:
            with self._pool.connection() as conn, conn.transaction():
                self._local.conn = conn
                try:
                    self._check_fence()
                    yield
                finally:
                    self._local.conn = None
        except self._psycopg_error as e:
            raise self._failed(e) from e
        except Exception as e:
            if type(e).__module__.startswith("psycopg_pool"):
                raise self._failed(e) from e
            raise

    def _failed(self, error: Exception) -> HubStoreError:
        """``error`` as a HubStoreError; after a lost connection (a server restart) the
        pool's idle connections are checked now, so only this one operation fails."""
        if isinstance(error, self._connection_error):
            try:
                self._pool.check()
            except Exception:  # noqa: BLE001 - the pool reconnects on its own schedule
                pass
        return HubStoreError(f"hub store {self.where}: {_one_line(error)}")

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        try:
            with self._pool.connection() as conn:
                yield conn
        except self._psycopg_error as e:
            raise self._failed(e) from e

    def _execute(self, sql: str, params: Sequence[Any]) -> Any:
        with self._connection() as conn:
            try:
                return conn.execute(placeholders(sql), params)
            except self._psycopg_error as e:
                raise self._failed(e) from e

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self._execute(sql, params).rowcount)

    def _run_many(self, sql: str, params: Sequence[Sequence[Any]]) -> int:
        if not params:
            return 0
        with self._connection() as conn:
            try:
                cur = conn.cursor()
                cur.executemany(placeholders(sql), params)
                return int(cur.rowcount)
            except self._psycopg_error as e:
                raise self._failed(e) from e

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._connection() as conn:
            try:
                return list(conn.execute(placeholders(sql), params).fetchall())
            except self._psycopg_error as e:
                raise self._failed(e) from e

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with self._connection() as conn:
            try:
                row: Row | None = conn.execute(placeholders(sql), params).fetchone()
                return row
            except self._psycopg_error as e:
                raise self._failed(e) from e


_converted: dict[str, str] = {}


def placeholders(sql: str) -> str:
    """The shared SQL's ``?`` placeholders as psycopg's ``%s`` (no literal ``?`` or ``%``)."""
    done = _converted.get(sql)
    if done is None:
        done = _converted[sql] = sql.replace("?", "%s")
    return done


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
