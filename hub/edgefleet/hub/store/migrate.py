"""Copy a hub store from SQLite into an empty PostgreSQL store (``hub store migrate``).

Invariants:

- the source is opened as a store first, so it is at the current schema before a row
  is read; every table of :data:`~edgefleet.hub.store.schema.TABLES` but ``meta`` is
  copied row for row (JSON columns byte for byte, bundle bytes a few parts per batch),
  in foreign-key order;
- the fleet tables live in the store's database (``fleet/database.py``), so they move
  with it, in the same target transaction: every one row for row with its ids (the
  alert monitor's row-id cursors stay right), ``fleet_meta`` merged (the target's own
  schema version row exists as soon as its fleet tables do). They are created on both
  sides first; an older hub's separate fleet file beside the source is absorbed into it;
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
from edgefleet.hub.fleet.database import TABLES as FLEET_TABLES
from edgefleet.hub.fleet.database import open_fleet_database
from edgefleet.hub.store.postgres import PostgresHubStore
from edgefleet.hub.store.schema import TABLES
from edgefleet.hub.store.sqlite import SqliteHubStore

COPY_BATCH = 2000
# Rows per batch where a row is large: bundle_blobs rows are 1 MiB parts.
TABLE_BATCH = {"bundle_blobs": 4}
FLEET_COPIED = tuple(t for t in FLEET_TABLES if t != "fleet_meta")
COPIED_TABLES = tuple(t for t in TABLES if t != "meta") + FLEET_COPIED
# Identity columns whose sequence must move past the ids copied along.
_IDENTITIES = (("rollout_events", "id"), ("fleet_records", "rid"), ("fleet_alerts", "id"))


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
    for location in (source.path, target.url):  # the fleet tables on both sides
        open_fleet_database(location).close()
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
            settings = source._all(
                "SELECT key, value FROM fleet_meta WHERE key != 'schema_version'"
            )
        target._run_many(
            "INSERT INTO fleet_meta VALUES (?, ?) ON CONFLICT (key)"
            " DO UPDATE SET value = excluded.value",
            [(r["key"], r["value"]) for r in settings],
        )
        # Rows came with their ids: move each identity past them.
        for table, column in _IDENTITIES:
            target._one(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                f" COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
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
