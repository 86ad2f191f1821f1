"""An older hub's separate fleet file, absorbed into the hub store's file on first open.

Hubs before the fleet tables moved into the hub store kept them in a file of their own
beside it: ``hub.db`` -> ``hub.fleet.db`` (:func:`separate_fleet_file`). When such a file
exists, :func:`absorb_fleet_file` copies its every fleet table into the hub store's file
and renames it aside (``hub.fleet.db.absorbed``, kept as a backup; its ``-wal`` too).

Invariants:

- the copy is one transaction of the target (``BEGIN IMMEDIATE``): a failure leaves the
  target as it was and the old file where it was, to be absorbed at the next open;
- a target whose fleet tables already hold telemetry, rollups or alerts is never merged
  into: that is refused with one line naming both files;
- rows keep their ids (``rid``, alert ids), so the alert monitor's cursors stay right;
- the old file is renamed only after the copy committed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edgefleet.hub.errors import HubStoreError
from edgefleet.hub.fleet.database import TABLES
from edgefleet.hub.fleet.sqlite_db import SqliteFleetDatabase

ABSORBED_SUFFIX = ".absorbed"
# Tables whose rows mean the target is in use (meta and counters alone do not).
_IN_USE = ("fleet_records", "fleet_rollups", "fleet_alerts", "fleet_cursor")


def separate_fleet_file(store_path: Path) -> Path:
    """Where an older hub kept the fleet tables of the store at ``store_path``."""
    return store_path.with_name(f"{store_path.stem}.fleet.db")


def absorb_fleet_file(db: SqliteFleetDatabase) -> int:
    """Move the separate fleet file beside ``db`` into it; the rows copied (0: none)."""
    old = separate_fleet_file(db.path)
    if not old.is_file() or old.resolve() == db.path.resolve():
        return 0
    copied = _copy(db, old)
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{old}{suffix}")
        if part.exists():
            part.rename(Path(f"{old}{ABSORBED_SUFFIX}{suffix}"))
    return copied


def _copy(db: SqliteFleetDatabase, old: Path) -> int:
    try:
        # Opening the old file through the fleet engine brings an older hub's file up to
        # the current tables (``CREATE ... IF NOT EXISTS``) and checks its schema version.
        SqliteFleetDatabase(old).close()
        conn = sqlite3.connect(db.path, timeout=db.busy_timeout_s, isolation_level=None)
    except (sqlite3.Error, OSError) as e:
        raise HubStoreError(f"{old}: cannot absorb the fleet file into {db.path}: {e}") from e
    try:
        conn.execute("ATTACH DATABASE ? AS old", (str(old),))  # not inside a transaction
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in _IN_USE:
                if conn.execute(f"SELECT 1 FROM main.{table} LIMIT 1").fetchone():
                    raise HubStoreError(
                        f"{db.path} already holds fleet data ({table}) and {old} too:"
                        f" move one of them away (the hub absorbs {old.name} only into a"
                        " store without fleet data)"
                    )
            copied = 0
            for table in TABLES:
                verb = "INSERT OR REPLACE"  # the target holds at most settings
                copied += conn.execute(
                    f"{verb} INTO main.{table} SELECT * FROM old.{table}"
                ).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("DETACH DATABASE old")
    except sqlite3.Error as e:
        raise HubStoreError(f"{old}: cannot absorb the fleet file into {db.path}: {e}") from e
    finally:
        conn.close()
    return copied
