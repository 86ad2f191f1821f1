"""Copy a hub store from SQLite into an empty PostgreSQL store (``hub store migrate``).

Invariants:

- the source is opened as a store first, so it is at the current schema before a row
  is read; every table of :data:`~edgefleet.hub.store.schema.TABLES` but ``meta`` is
  copied row for row (JSON columns byte for byte, bundle bytes a few parts per batch),
  in foreign-key order;
- the target must be empty: a store that already holds any row is refused, never
  merged into;
- the whole copy is one target transaction, checked table by table (row counts) before
  it commits: a failure anywhere leaves the target as empty as it was;
- the source is read inside one transaction (a consistent snapshot) and is left as it
  was; the caller keeps ``hub serve`` off it (``ServeLock``) so nothing is written to
  the old store after the copy.
"""

from __future__ import annotations

from collections.abc import Callable

from edgefleet.hub.errors import HubStoreError, HubUsageError
from edgefleet.hub.store.postgres import PostgresHubStore
from edgefleet.hub.store.schema import TABLES
from edgefleet.hub.store.sqlite import SqliteHubStore

COPY_BATCH = 2000
# Rows per batch where a row is large: bundle_blobs rows are 1 MiB parts.
TABLE_BATCH = {"bundle_blobs": 4}
COPIED_TABLES = tuple(t for t in TABLES if t != "meta")


def row_counts(store: SqliteHubStore | PostgresHubStore) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table in COPIED_TABLES:
        row = store._one(f"SELECT COUNT(*) AS n FROM {table}")
        counts[table] = int(row["n"]) if row is not None else 0
    return counts


def copy_store(
    source: SqliteHubStore,
    target: PostgresHubStore,
    *,
    batch: int = COPY_BATCH,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Copy every row of ``source`` into the empty ``target``; the rows copied per table."""
    with target.transaction():
        held = {t: n for t, n in row_counts(target).items() if n}
        if held:
            table, n = sorted(held.items())[0]
            raise HubUsageError(
                f"{target.where} already holds a hub store ({n} rows in {table});"
                " migrate into an empty database"
            )
        with source.transaction():
            expected = row_counts(source)
            for table in COPIED_TABLES:
                _copy_table(
                    source, target, table, min(batch, TABLE_BATCH.get(table, batch)), progress
                )
        # rollout_events rows came with their ids: move the identity past them.
        target._one(
            "SELECT setval(pg_get_serial_sequence('rollout_events', 'id'),"
            " COALESCE((SELECT MAX(id) FROM rollout_events), 0) + 1, false)"
        )
        copied = row_counts(target)
        if copied != expected:
            wrong = sorted(t for t in expected if expected[t] != copied.get(t))
            raise HubStoreError(
                f"copy of {source.where} is incomplete in {wrong[0]}"
                f" ({copied.get(wrong[0])} of {expected[wrong[0]]} rows); nothing was written"
            )
    return copied


def _copy_table(
    source: SqliteHubStore,
    target: PostgresHubStore,
    table: str,
    batch: int,
    progress: Callable[[str, int], None] | None,
) -> None:
    last = 0
    done = 0
    while True:
        # rowid order and a rowid cursor: bounded memory for a large telemetry table.
        rows = source._all(
            f"SELECT rowid AS _rowid, * FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (last, batch),
        )
        if not rows:
            return
        # keys(), not iteration: a sqlite3.Row iterates over its values.
        names = rows[0].keys()  # type: ignore[attr-defined]
        columns = [c for c in names if c != "_rowid"]
        marks = ",".join("?" * len(columns))
        target._run_many(
            f"INSERT INTO {table} ({','.join(columns)}) VALUES ({marks})",
            [tuple(r[c] for c in columns) for r in rows],
        )
        last = rows[-1]["_rowid"]
        done += len(rows)
        if progress is not None:
            progress(table, done)
