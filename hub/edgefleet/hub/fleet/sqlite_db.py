"""The fleet tables on SQLite: in the hub store's own file (WAL), one hub process.

Writes begin with ``BEGIN IMMEDIATE``: SQLite's one write lock serialises every fleet
write — and, the tables sharing the file, every hub store write too (``busy_timeout``
absorbs the wait). ``synchronous=FULL``: an acked window survives a power cut.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from edgefleet.hub.errors import HubStoreError
from edgefleet.hub.fleet.database import FleetConnection, FleetDatabase


class SqliteFleetDatabase(FleetDatabase):
    """Per-thread SQLite connections to the file holding the fleet tables."""

    begin_write = ("BEGIN IMMEDIATE",)
    begin_read = "BEGIN"

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.where = str(self.path)
        self.busy_timeout_s = busy_timeout_s
        self._prepare()

    def _open(self) -> FleetConnection:
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
            raise HubStoreError(f"{self.path}: cannot open the fleet tables: {e}") from e
        return conn

    def _close_connection(self, conn: Any) -> None:
        try:
            conn.close()
        except sqlite3.Error:
            pass

    def _usable(self, conn: Any) -> bool:
        return True  # a file does not go away under an open connection

    def _is_error(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.Error)
