"""Keeping the telemetry buffer within its byte budget (docs/agent.md, Budget).

The database plus its WAL stay within ``budget_bytes``; the shared-memory
index (``-shm``, a fixed 32 KiB) is not counted. The WAL gets
:func:`wal_limit_for` of it and is checkpointed and truncated whenever it holds
half of that; the database gets the rest minus a few pages.

Once the database passes its share it is brought down to ``LOW_WATERMARK`` of
it by applying :func:`~edgefleet.agent.telemetry.coarsening.plan_budget`:
merging windows (exact) first, dropping only when nothing can merge, every
drop counted in ``meta``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from edgefleet.agent.telemetry.coarsening import RecordMeta, plan_budget
from edgefleet.agent.telemetry.records import BudgetReport
from edgefleet.agent.telemetry.window_body import StatsCodec, merge_bodies
from edgefleet.core.canonical import canonical_json

# After passing its share of the budget the store is brought down to this fraction.
LOW_WATERMARK = 0.8


def wal_limit_for(budget_bytes: int) -> int:
    """The part of the budget kept for the WAL file."""
    return max(32 * 1024, min(budget_bytes // 8, 4 * 1024 * 1024))


class BufferBudget:
    """The budget half of :class:`~edgefleet.agent.telemetry.buffer.TelemetryBuffer`."""

    path: Path
    budget_bytes: int
    wal_limit: int
    codec: StatsCodec
    _lock: threading.RLock
    _conn: sqlite3.Connection

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _bump_meta(self, conn: sqlite3.Connection, key: str, by: int) -> None:
        raise NotImplementedError

    def _bound_wal(self) -> None:
        """Keep the WAL file well inside its share of the budget.

        SQLite's automatic checkpoint neither runs at a byte limit nor
        truncates the file; an explicit TRUNCATE checkpoint once the WAL holds
        half its share does both.
        """
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            if wal.stat().st_size > self.wal_limit // 2:
                self.checkpoint()
        except FileNotFoundError:
            pass

    def _pages(self, conn: sqlite3.Connection) -> tuple[int, int]:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
        return page_size, page_count

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += (self.path.parent / (self.path.name + suffix)).stat().st_size
            except FileNotFoundError:
                pass
        return total

    @property
    def data_target_bytes(self) -> int:
        """What the database file itself may use (the rest is kept for the WAL)."""
        return self.budget_bytes - self.wal_limit - 4 * 4096

    def _logical_size(self) -> int:
        with self._lock:
            self._vacuum()
            page_size, page_count = self._pages(self._conn)
        return page_size * page_count

    def enforce_budget(self, max_rounds: int = 64) -> BudgetReport:
        """Coarsen (then drop) until the database fits its share of the budget.

        Runs only once the database passes its share, and then frees down to
        80% of it, so a full store is not rewritten on every flush (an SD card
        wears with every rewrite).
        """
        merges = dropped = dropped_requests = 0
        if self._logical_size() <= self.data_target_bytes:
            return BudgetReport()
        target = int(self.data_target_bytes * LOW_WATERMARK)
        for _ in range(max_rounds):
            excess = self._logical_size() - target
            if excess <= 0:
                break
            with self._lock:
                metas = self._record_metas()
            plan = plan_budget(metas, excess)
            if plan.empty:
                break
            if plan.merges:
                merges += self._apply_merges(plan.merges)
            else:
                n, requests = self._apply_drops(plan.drops)
                dropped += n
                dropped_requests += requests
        if merges or dropped:
            self.checkpoint()
        return BudgetReport(merges, dropped, dropped_requests)

    def _vacuum(self) -> None:
        # Through sqlite3_exec: a stepped statement frees only one page per step
        # and the sqlite3 module steps a row-less PRAGMA once.
        self._conn.executescript("PRAGMA incremental_vacuum;")

    def checkpoint(self) -> None:
        with self._lock:
            try:
                self._vacuum()
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # a reader holds the WAL; the next checkpoint gets it

    def _record_metas(self) -> list[RecordMeta]:
        rows = self._conn.execute(
            "SELECT seq, kind, model, version, start_s, end_s, size, shipped FROM records"
        ).fetchall()
        return [
            RecordMeta(int(s), k, m, v, a, b, int(z), bool(sh)) for s, k, m, v, a, b, z, sh in rows
        ]

    def _apply_merges(self, pairs: Sequence[tuple[int, int]]) -> int:
        done = 0
        with self._tx() as conn:
            for keep, absorbed in pairs:
                a = conn.execute(
                    "SELECT body FROM records WHERE seq = ? AND shipped = 0", (keep,)
                ).fetchone()
                b = conn.execute(
                    "SELECT body FROM records WHERE seq = ? AND shipped = 0", (absorbed,)
                ).fetchone()
                if a is None or b is None:
                    continue
                merged = merge_bodies(json.loads(a[0]), json.loads(b[0]), self.codec)
                data = canonical_json(merged)
                conn.execute(
                    "UPDATE records SET body = ?, size = ?, start_s = ?, end_s = ? WHERE seq = ?",
                    (data, len(data), merged["start_s"], merged["end_s"], keep),
                )
                conn.execute("DELETE FROM records WHERE seq = ?", (absorbed,))
                done += 1
            self._bump_meta(conn, "merges", done)
        return done

    def _apply_drops(self, seqs: Sequence[int]) -> tuple[int, int]:
        windows = events = requests = 0
        with self._tx() as conn:
            for seq in seqs:
                row = conn.execute(
                    "SELECT kind, body FROM records WHERE seq = ?", (seq,)
                ).fetchone()
                if row is None:
                    continue
                if row[0] == "window":
                    windows += 1
                    requests += int(json.loads(row[1]).get("requests", 0))
                else:
                    events += 1
                conn.execute("DELETE FROM records WHERE seq = ?", (seq,))
            self._bump_meta(conn, "dropped_records", windows + events)
            self._bump_meta(conn, "dropped_windows", windows)
            self._bump_meta(conn, "dropped_events", events)
            self._bump_meta(conn, "dropped_requests", requests)
        return windows + events, requests
