"""The fleet database's per-thread connections: threads that end leave none behind."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edgefleet.hub.errors import HubStoreError
from edgefleet.hub.fleet.database import FleetDatabase, open_fleet_database


def _use_in_thread(db: FleetDatabase) -> None:
    thread = threading.Thread(target=lambda: db.connection().execute("SELECT 1").fetchone())
    thread.start()
    thread.join()


def test_connections_of_ended_threads_are_closed_when_the_next_one_opens(
    tmp_path: Path,
) -> None:
    db = open_fleet_database(tmp_path / "fleet.db")
    try:
        assert db.open_connections == 1  # the opening thread's
        for _ in range(20):
            _use_in_thread(db)
        # Each new thread's connection closed the one of the thread before it.
        assert db.open_connections == 2
        # The live thread's connection is untouched and still works.
        assert db.connection().execute("SELECT 1").fetchone() == (1,)
    finally:
        db.close()
    assert db.open_connections == 0


def test_a_live_threads_connection_is_kept(tmp_path: Path) -> None:
    db = open_fleet_database(tmp_path / "fleet.db")
    started, release = threading.Event(), threading.Event()
    results: list[tuple[int, ...]] = []

    def hold() -> None:
        conn = db.connection()
        started.set()
        release.wait(10)
        results.append(conn.execute("SELECT 1").fetchone())

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert started.wait(10)
        _use_in_thread(db)  # opens (and keeps) one more; the holder's stays open
        release.set()
        holder.join(10)
        assert results == [(1,)]
    finally:
        release.set()
        db.close()


def test_a_write_inside_a_read_is_refused(tmp_path: Path) -> None:
    """It would join the read transaction, not serialised with the other fleet writes."""
    db = open_fleet_database(tmp_path / "fleet.db")
    try:
        with db.read(), pytest.raises(HubStoreError, match="inside a read"), db.write():
            pass
        with db.write(), db.write() as conn:  # nested writes join the outer one
            conn.execute("INSERT INTO fleet_counters VALUES ('x', 1)")
        assert db.counters() == {"x": 1}
    finally:
        db.close()
