"""The telemetry buffer: an SQLite (WAL) store of records waiting for the hub.

Tables::

    records       seq, kind ('window' | 'event'), model, version, start_s, end_s,
                  body (canonical JSON), shipped (ever leased), size
    open_windows  the windows still being filled, one row per model version,
                  rewritten every flush (they get a seq only when they close)
    ring          the prediction-id ring for late labels (bounded, slot = n % size)
    meta          next_seq, acked_seq, shipped_through, drop and merge counters

Invariants:

- ``seq`` is strictly increasing per device and never reused: it comes from
  ``meta.next_seq``, bumped in the same transaction that inserts the record. A new
  buffer starts at the wall clock in milliseconds, not at 1: a device whose state
  directory was wiped (SD card replaced, re-provisioned with the same credentials)
  must not reuse seqs the hub already holds, or the hub would take its new records
  for copies of old ones and drop them. The agent writes far fewer than 1,000 records
  a second, so the new seqs start above every old one (given a sane clock; see
  docs/sync.md).
  Seqs are not contiguous: coarsening absorbs records into older ones and the
  budget may drop records, leaving gaps on purpose.
- Data leaves only by :meth:`TelemetryBuffer.ack`: ``ack(n)`` deletes every
  record with ``seq <= n`` in one transaction and never deletes a record that
  was not handed out by :meth:`lease` (the ack is clamped to
  ``shipped_through``), so an acked record never comes back and an unacked one
  never vanishes except through a counted budget drop.
- :meth:`lease` hands out the oldest records first, one lease at a time; a
  lease that is not acked expires and the same records are handed out again
  (at-least-once; the hub dedupes on (device, seq)).
- Records that were ever leased are never merged (the hub may hold them).
- Every commit is durable (``synchronous=FULL``): a kill -9 or a power loss
  loses nothing that a method had returned from. The serving path only loses
  what it accumulated since the recorder's last flush.
- The database plus its WAL stay within ``budget_bytes`` (the shm index, a
  fixed 32 KiB, is not counted): :meth:`enforce_budget` coarsens, then drops.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

from edgefleet.agent.errors import TelemetryBufferError
from edgefleet.agent.telemetry.budget import BufferBudget, wal_limit_for
from edgefleet.agent.telemetry.records import (
    BudgetReport,
    BufferedRecord,
    BufferStats,
    Lease,
    RingEntry,
)
from edgefleet.agent.telemetry.window_body import DriftCodec, StatsCodec
from edgefleet.core.canonical import canonical_json

KINDS = ("window", "event")
# Bytes one ring row takes on disk, with its unique index (measured, rounded up).
RING_ROW_BYTES = 160
_META_KEYS = (
    "next_seq",
    "acked_seq",
    "shipped_through",
    "dropped_records",
    "dropped_windows",
    "dropped_events",
    "dropped_requests",
    "merges",
    "ring_next",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    model TEXT,
    version INTEGER,
    start_s REAL,
    end_s REAL,
    body BLOB NOT NULL,
    size INTEGER NOT NULL,
    shipped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS open_windows (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    start_s REAL NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS ring (
    slot INTEGER PRIMARY KEY,
    prediction_id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    predicted TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class TelemetryBuffer(BufferBudget):
    """The SQLite buffer; one connection shared by the agent's threads under a lock."""

    def __init__(
        self,
        path: Path,
        budget_bytes: int,
        *,
        ring_size: int = 10_000,
        codec: StatsCodec | None = None,
        lease_s: float = 60.0,
        readonly: bool = False,
        first_seq: int | None = None,
    ) -> None:
        if budget_bytes < 64 * 1024:
            raise TelemetryBufferError(f"telemetry budget {budget_bytes} is below 64 KiB")
        self.path = Path(path)
        self.budget_bytes = budget_bytes
        self.wal_limit = wal_limit_for(budget_bytes)
        # The ring may take at most a quarter of the budget.
        self.ring_size = max(0, min(ring_size, budget_bytes // 4 // RING_ROW_BYTES))
        self.codec: StatsCodec = codec or DriftCodec()
        self.lease_s = lease_s
        self._lock = threading.RLock()
        self._lease: Lease | None = None
        # A new buffer numbers from the wall clock in milliseconds (see the invariants).
        self._first_seq = first_seq if first_seq is not None else max(1, int(time.time() * 1000))
        self._conn = self._connect(readonly)

    # --- connection --------------------------------------------------------
    def _connect(self, readonly: bool) -> sqlite3.Connection:
        try:
            if readonly:
                uri = f"file:{self.path}?mode=ro"
                conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10
                )
                conn.execute("PRAGMA busy_timeout=10000")
                return conn
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10
            )
            # auto_vacuum only takes effect before the first table exists: it lets
            # the file shrink after deletions (incremental_vacuum) instead of
            # keeping its high-water mark forever.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise TelemetryBufferError(f"{self.path}: cannot switch to WAL mode ({mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA cache_size=-256")
            conn.execute("PRAGMA busy_timeout=10000")
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA journal_size_limit={self.wal_limit}")
            conn.execute(f"PRAGMA wal_autocheckpoint={max(8, self.wal_limit // page_size // 2)}")
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            for key in _META_KEYS:
                start = self._first_seq if key == "next_seq" else 0
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, start))
            conn.execute("COMMIT")
            return conn
        except sqlite3.Error as e:
            raise TelemetryBufferError(f"{self.path}: cannot open telemetry buffer: {e}") from e

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction, rolled back on any error."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise TelemetryBufferError(f"{self.path}: {e}") from e
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                conn.execute("ROLLBACK")
                raise TelemetryBufferError(f"{self.path}: commit failed: {e}") from e

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # a reader holds the WAL; the next open checkpoints
            self._conn.close()

    def integrity_ok(self) -> bool:
        with self._lock:
            row = self._conn.execute("PRAGMA integrity_check").fetchone()
        return bool(row) and row[0] == "ok"

    # --- meta ----------------------------------------------------------------
    def _meta(self, conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, conn: sqlite3.Connection, key: str, value: int) -> None:
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def _bump_meta(self, conn: sqlite3.Connection, key: str, by: int) -> None:
        if by:
            conn.execute("UPDATE meta SET value = value + ? WHERE key = ?", (by, key))

    # --- writing -------------------------------------------------------------
    def _insert(self, conn: sqlite3.Connection, kind: str, body: Mapping[str, Any]) -> int:
        if kind not in KINDS:
            raise TelemetryBufferError(f"unknown telemetry record kind {kind!r}")
        try:
            data = canonical_json(dict(body))
        except (TypeError, ValueError) as e:
            raise TelemetryBufferError(f"telemetry body is not JSON: {e}") from e
        seq = self._meta(conn, "next_seq")
        conn.execute(
            "INSERT INTO records(seq, kind, model, version, start_s, end_s, body, size) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                kind,
                body.get("model"),
                body.get("version"),
                body.get("start_s") if kind == "window" else body.get("at"),
                body.get("end_s") if kind == "window" else body.get("at"),
                data,
                len(data),
            ),
        )
        self._set_meta(conn, "next_seq", seq + 1)
        return seq

    def append(self, kind: str, body: Mapping[str, Any]) -> int:
        """Store one record durably; returns its seq."""
        try:
            with self._tx() as conn:
                seq = self._insert(conn, kind, body)
        except sqlite3.Error as e:
            raise TelemetryBufferError(f"{self.path}: cannot append: {e}") from e
        self._bound_wal()
        return seq

    def commit_flush(
        self,
        closed_windows: Sequence[Mapping[str, Any]],
        open_windows: Sequence[Mapping[str, Any]],
        ring: Sequence[RingEntry] = (),
        forget: Sequence[str] = (),
    ) -> list[int]:
        """One durable transaction: close finished windows (they get seqs), rewrite
        the open ones, remember new prediction ids and forget labelled ones.
        Returns the new seqs."""
        try:
            seqs = self._commit_flush(closed_windows, open_windows, ring, forget)
        except sqlite3.Error as e:
            raise TelemetryBufferError(f"{self.path}: flush failed: {e}") from e
        self._bound_wal()
        return seqs

    def _commit_flush(
        self,
        closed_windows: Sequence[Mapping[str, Any]],
        open_windows: Sequence[Mapping[str, Any]],
        ring: Sequence[RingEntry],
        forget: Sequence[str],
    ) -> list[int]:
        with self._tx() as conn:
            seqs = []
            for body in closed_windows:
                conn.execute(
                    "DELETE FROM open_windows WHERE model = ? AND version = ? AND start_s = ?",
                    (body["model"], body["version"], body["start_s"]),
                )
                seqs.append(self._insert(conn, "window", body))
            for body in open_windows:
                conn.execute(
                    "INSERT OR REPLACE INTO open_windows(model, version, start_s, body) "
                    "VALUES (?, ?, ?, ?)",
                    (
                        body["model"],
                        body["version"],
                        body["start_s"],
                        canonical_json(dict(body)),
                    ),
                )
            if ring and self.ring_size:
                self._remember(conn, ring)
            if forget:
                conn.executemany(
                    "DELETE FROM ring WHERE prediction_id = ?", [(pid,) for pid in forget]
                )
            return seqs

    def open_windows(self) -> list[dict[str, Any]]:
        """Bodies of the windows that were still open at the last flush."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT body FROM open_windows ORDER BY start_s, model, version"
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    # --- prediction ring -----------------------------------------------------
    def _remember(self, conn: sqlite3.Connection, entries: Sequence[RingEntry]) -> None:
        start = self._meta(conn, "ring_next")
        size = self.ring_size
        skip = max(0, len(entries) - size)  # only the newest ring_size ids can stay
        # REPLACE drops whichever row held the slot (the oldest id) or the same id.
        conn.executemany(
            "INSERT OR REPLACE INTO ring(slot, prediction_id, model, version, predicted) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                ((start + i) % size, e.prediction_id, e.model, e.version, e.predicted)
                for i, e in enumerate(islice(entries, skip, None))
            ),
        )
        self._set_meta(conn, "ring_next", start + len(entries) - skip)

    def lookup_prediction(self, prediction_id: str) -> RingEntry | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT prediction_id, model, version, predicted FROM ring WHERE prediction_id = ?",
                (prediction_id,),
            ).fetchone()
        return None if row is None else RingEntry(row[0], row[1], int(row[2]), row[3])

    # --- shipping ------------------------------------------------------------
    def lease(
        self, now: float, *, max_records: int = 500, max_bytes: int = 512 * 1024
    ) -> Lease | None:
        """The oldest unacked records (at most one lease is out at a time)."""
        with self._lock:
            if self._lease is not None and now < self._lease.expires_at:
                return None
            try:
                with self._tx() as conn:
                    rows = conn.execute(
                        "SELECT seq, kind, body, size FROM records ORDER BY seq LIMIT ?",
                        (max_records,),
                    ).fetchall()
                    chosen: list[BufferedRecord] = []
                    total = 0
                    for seq, kind, body, size in rows:
                        if chosen and total + size > max_bytes:
                            break
                        chosen.append(BufferedRecord(int(seq), kind, json.loads(body)))
                        total += int(size)
                    if not chosen:
                        self._lease = None
                        return None
                    last = chosen[-1].seq
                    conn.execute("UPDATE records SET shipped = 1 WHERE seq <= ?", (last,))
                    if last > self._meta(conn, "shipped_through"):
                        self._set_meta(conn, "shipped_through", last)
                    covers_from = self._meta(conn, "acked_seq") + 1
            except sqlite3.Error as e:
                raise TelemetryBufferError(f"{self.path}: lease failed: {e}") from e
            self._lease = Lease(covers_from, chosen[0].seq, last, tuple(chosen), now + self.lease_s)
            return self._lease

    def ack(self, highest_seq: int) -> int:
        """The hub stored everything up to ``highest_seq``: delete it for good.

        Clamped to what was ever handed out, so a confused hub cannot delete
        records it never received. Returns how many records went.
        """
        with self._lock:
            try:
                with self._tx() as conn:
                    effective = min(int(highest_seq), self._meta(conn, "shipped_through"))
                    if effective <= self._meta(conn, "acked_seq"):
                        return 0
                    cur = conn.execute("DELETE FROM records WHERE seq <= ?", (effective,))
                    self._set_meta(conn, "acked_seq", effective)
                    deleted = cur.rowcount
            except sqlite3.Error as e:
                raise TelemetryBufferError(f"{self.path}: ack failed: {e}") from e
            if self._lease is not None and self._lease.last_seq <= effective:
                self._lease = None
            return int(deleted)

    def release_lease(self) -> None:
        """Forget the outstanding lease (the link dropped); its records go out again."""
        with self._lock:
            self._lease = None

    def records(self, after_seq: int = 0, limit: int = 1_000_000) -> list[BufferedRecord]:
        """Unacked records in seq order (status, tests, the hub sync)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, kind, body FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [BufferedRecord(int(s), k, json.loads(b)) for s, k, b in rows]

    # --- status ------------------------------------------------------------------
    def stats(self) -> BufferStats:
        with self._lock:
            conn = self._conn
            row = conn.execute(
                "SELECT count(*), coalesce(sum(kind = 'window'), 0), "
                "coalesce(sum(kind = 'event'), 0), coalesce(sum(size), 0), min(seq), max(seq) "
                "FROM records"
            ).fetchone()
            meta = {k: int(v) for k, v in conn.execute("SELECT key, value FROM meta").fetchall()}
            open_count = conn.execute("SELECT count(*) FROM open_windows").fetchone()[0]
        return BufferStats(
            records=int(row[0]),
            windows=int(row[1]),
            events=int(row[2]),
            body_bytes=int(row[3]),
            first_seq=row[4],
            last_seq=row[5],
            next_seq=meta.get("next_seq", 1),
            acked_seq=meta.get("acked_seq", 0),
            open_windows=int(open_count),
            dropped_records=meta.get("dropped_records", 0),
            dropped_windows=meta.get("dropped_windows", 0),
            dropped_events=meta.get("dropped_events", 0),
            dropped_requests=meta.get("dropped_requests", 0),
            merges=meta.get("merges", 0),
            size_bytes=self.size_bytes(),
            budget_bytes=self.budget_bytes,
        )


__all__ = [
    "BudgetReport",
    "BufferStats",
    "BufferedRecord",
    "Lease",
    "RingEntry",
    "TelemetryBuffer",
    "wal_limit_for",
]
