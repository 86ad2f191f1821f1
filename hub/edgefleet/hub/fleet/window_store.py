"""Stored telemetry windows and their rollups, in the fleet database.

Tables (see :mod:`~edgefleet.hub.fleet.database`):

``fleet_records``
    one row per received record, unique on ``(device, seq)``: inserting a retransmitted
    record is a no-op. Window rows carry model, version, the device's group and profile
    *at ingest*, ``start_s``/``end_s``, the fine time bucket of ``start_s``, the operational
    totals (JSON) and the ``WindowStats`` blob. ``rid`` grows with every insert, in commit
    order, so the alert monitor reads "everything received since rid N" without relying on
    clocks.
``fleet_rollups``
    merged windows per (level, model, version, bucket, device, group, profile, profile_id);
    level is the bucket length (fine = an hour, coarse = a day by default). Every window is
    rolled up twice: into its device's rollup (for ``--by device``) and into a rollup of its
    group and profile with ``device = ''`` (for the fleet, ``--by group`` and ``--by
    profile``), so those queries read a number of rows that does not grow with the fleet.
``fleet_cursor``
    per device: ``contiguous``, what the hub acks (every seq up to it is stored or was given
    up by the device on purpose), and ``pruned_through``, the highest seq whose row
    retention deleted.
``fleet_pending_spans``
    per device: spans ``(after_seq, last_seq]`` of batches stored beyond ``contiguous`` that
    do not follow on from it yet (a batch before them is missing). Together with
    ``contiguous`` they are the :class:`~edgefleet.core.protocol.telemetry.AckCursor` of the
    device, read and written in the batch's transaction.

Invariants:

- A window is counted exactly once by a query: either as a raw row with ``rolled = 0`` or
  inside exactly one rollup of the granularity the query reads (device or group).
  ``roll_up`` merges raw rows into both their rollups and sets ``rolled = 1`` in the same
  transaction; a *late* window (its bucket already rolled up)
  arrives with ``rolled = 0`` and the next ``roll_up`` merges it into the existing rollup —
  aggregates re-open rather than miss it.
- Coarsening (fine -> coarse rollups) and retention only move or delete whole rows inside
  one transaction, so totals stay exact; what retention drops is counted.
- Raw rows keep their blob after being rolled up until ``raw_retention_s`` so the alert
  monitor can read recently received windows whatever their bucket.
- Acks: a batch's records are stored (deduplicated) whether or not it follows on;
  ``contiguous`` moves only by ``AckCursor.receive``, so the hub never acks a seq it neither
  stored nor the device gave up. A record retention deleted counts as a duplicate only when
  it is at or below ``pruned_through`` *and* covered by the cursor (at or below
  ``contiguous`` or inside a pending span): a record of a missing batch below a pruned
  pending span is still new.
- At most ``MAX_PENDING_SPANS`` separate spans wait per device; a batch that would open
  one more is not stored (nor acked beyond ``contiguous``): the device sends it again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from edgefleet.core.protocol.telemetry import MAX_PENDING_SPANS, AckCursor
from edgefleet.hub.fleet.database import STATS_COLUMNS, FleetConnection, FleetDatabase
from edgefleet.hub.fleet.group_commit import GroupState, Prepared, prepare, seq_ranges
from edgefleet.hub.fleet.retention import MaintenanceResult, maintain
from edgefleet.hub.fleet.rollups import FoldItem, RollupCache, decode_items, fold
from edgefleet.hub.fleet.settings import FleetSettings
from edgefleet.hub.fleet.totals import WindowTotals

if TYPE_CHECKING:
    from edgefleet.core.drift import WindowStats

RAW_LEVEL = 0


@dataclass(frozen=True)
class RecordRow:
    """One record ready to store (built from a TelemetryRecord by the ingest layer)."""

    seq: int
    kind: str  # "window", "event", another kind, or "malformed"
    model: str | None = None
    version: int | None = None
    start_s: float | None = None
    end_s: float | None = None
    requests: int = 0
    errors: int = 0
    summary: str | None = None  # a window's WindowTotals JSON; another record's body JSON
    drift: bytes | None = None  # WindowStats.to_bytes()
    totals: WindowTotals | None = field(default=None, compare=False)  # ``summary`` parsed
    stats: WindowStats | None = field(default=None, compare=False)  # ``drift`` decoded


@dataclass(frozen=True)
class DeviceBatch:
    """Rows of one device's batch, as received."""

    device: str
    group: str  # "" when the device has none
    profile: str
    rows: Sequence[Any]  # RecordRow, or records with a ``seq`` when ``add`` gets ``build``
    highest_seq: int | None = None  # default: the highest seq in rows
    after_seq: int | None = None  # the batch's claim (see AckCursor); None: follows on


@dataclass(frozen=True)
class BatchOutcome:
    stored: int
    duplicates: int
    windows_stored: int
    highest_seq: int | None
    malformed: int = 0  # stored as kind "malformed" (first receipt only)


@dataclass(frozen=True)
class StoredStats:
    """A raw window (``level == 0``) or a rollup, as read back for aggregation."""

    level: int
    device: str
    group: str
    profile: str
    version: int
    bucket_s: int
    windows: int
    start_s: float | None
    end_s: float | None
    summary: str
    drift: bytes | None
    rid: int = 0
    received_at: float | None = None

    def totals(self) -> WindowTotals:
        return WindowTotals.from_json(self.summary)


class FleetWindowStore:
    def __init__(self, db: FleetDatabase, settings: FleetSettings | None = None) -> None:
        self.db = db
        settings = settings or FleetSettings()
        # Rollup levels are bucket lengths: read with the ones the rows were written with.
        stored = db.buckets()
        if stored is not None and stored != (settings.bucket_s, settings.coarse_bucket_s):
            settings = replace(settings, bucket_s=stored[0], coarse_bucket_s=stored[1])
        self.settings = settings
        # Rollups this store wrote last, decoded (see ``rollups``); only writers use it.
        self.cache = RollupCache()

    # -- ingest ----------------------------------------------------------------------
    def add(
        self,
        batches: Sequence[DeviceBatch],
        now: float,
        build: Callable[[Any], RecordRow] | None = None,
    ) -> list[BatchOutcome]:
        """Store every batch in ONE transaction; records stored before are left alone.

        With ``build``, a batch's ``rows`` are the records as received (anything with a
        ``seq``) and ``build`` turns a record into a :class:`RecordRow` — called only for
        records not stored yet, so a retransmitted backlog costs an index lookup instead of
        a second validation and decode.

        With ``rollup_delay_s == 0`` every window stored is folded into its rollups in the
        same transaction and stored already flagged ``rolled``: a query never has to decode
        windows one by one, whatever the ingest load.
        """
        outcomes: list[BatchOutcome] = []
        items: list[FoldItem] = []
        counts = {"records_stored": 0, "windows_stored": 0, "duplicates": 0, "malformed": 0}
        ranges = seq_ranges(batches)
        fold_now = self.settings.rollup_delay_s <= 0
        # Build and decode outside the write transaction (group_commit.prepare).
        ready = prepare(self.db, batches, ranges, build, fold_now) if build else Prepared()
        try:
            with self.db.write() as conn:
                # Read once for the whole group, apply in memory, write once (group_commit).
                state = GroupState.load(conn, ranges)
                for batch in batches:
                    outcome = self._add_one(state, batch, now, build, ready, items, counts)
                    outcomes.append(outcome)
                    counts["records_stored"] += outcome.stored
                    counts["windows_stored"] += outcome.windows_stored
                    counts["duplicates"] += outcome.duplicates
                state.flush(self.db, conn)
                if items:
                    counts["undecodable_windows"] = decode_items(items)
                    fold(conn, self.settings, items, now, self.cache)
                    counts["rolled_up"] = len(items)
                self.db.bump(conn, counts)
        except BaseException:
            self.cache.clear()  # it may hold rollups this transaction did not commit
            raise
        return outcomes

    def _add_one(
        self,
        state: GroupState,
        batch: DeviceBatch,
        now: float,
        build: Callable[[Any], RecordRow] | None,
        ready: Prepared,
        items: list[FoldItem],
        counts: dict[str, int],
    ) -> BatchOutcome:
        entry = state.cursors[batch.device]
        cursor, pruned = entry.current, entry.pruned
        highest = batch.highest_seq
        if highest is None:
            highest = max((r.seq for r in batch.rows), default=None)
        after = cursor
        if highest is not None:
            after = cursor.receive(batch.after_seq, highest)
            if len(after.pending) > max(MAX_PENDING_SPANS, len(cursor.pending)):
                counts["batches_refused_spans_full"] = (
                    counts.get("batches_refused_spans_full", 0) + 1
                )
                return BatchOutcome(0, 0, 0, cursor.contiguous, 0)
            if not cursor.follows(batch.after_seq):
                counts["batches_ahead_of_cursor"] = counts.get("batches_ahead_of_cursor", 0) + 1
        # A row retention deleted is a duplicate only where the cursor covers it.
        received = [r for r in batch.rows if r.seq > pruned or not cursor.covers(r.seq)]
        # Inside the write transaction nobody else inserts: what is not stored now is new.
        known = state.known[batch.device]
        fresh = [r for r in received if r.seq not in known]
        rows: list[RecordRow] = (
            [ready.row(batch.device, r, build) for r in fresh] if build is not None else list(fresh)
        )
        known.update(r.seq for r in rows)
        windows = [r for r in rows if r.kind == "window"]
        others = [r for r in rows if r.kind != "window"]
        fold_now = self.settings.rollup_delay_s <= 0
        buckets = [self.settings.bucket_of(r.start_s or 0.0) for r in windows]
        state.windows.extend(
            [
                (
                    batch.device,
                    r.seq,
                    "window",
                    now,
                    r.model,
                    r.version,
                    batch.group,
                    batch.profile,
                    r.start_s,
                    r.end_s,
                    bucket,
                    r.requests,
                    r.errors,
                    r.summary,
                    r.drift,
                    int(fold_now),
                )
                for r, bucket in zip(windows, buckets, strict=True)
            ]
        )
        state.others.extend(
            (batch.device, r.seq, r.kind, now, r.model, r.version, r.summary) for r in others
        )
        malformed = sum(1 for r in others if r.kind == "malformed")
        counts["malformed"] += malformed
        if fold_now:
            for r, bucket in zip(windows, buckets, strict=True):
                if r.model is None or r.version is None:
                    continue
                totals = r.totals or WindowTotals.from_json(r.summary or "{}")
                stats = ready.stats.pop((batch.device, r.seq), None)
                items.append(
                    FoldItem(
                        r.model, r.version, batch.device, batch.group, batch.profile, bucket,
                        totals, stats, None if stats is not None else r.drift,
                    )
                )  # fmt: skip
        entry.current = after
        stored = len(rows)
        return BatchOutcome(
            stored, len(batch.rows) - stored, len(windows), after.contiguous, malformed
        )

    @staticmethod
    def _read_cursor(conn: FleetConnection, device: str) -> tuple[AckCursor, int]:
        """The device's ack cursor and ``pruned_through`` (-1: nothing pruned)."""
        row = conn.execute(
            "SELECT contiguous, pruned_through FROM fleet_cursor WHERE device = ?", (device,)
        ).fetchone()
        if row is None:
            return AckCursor(), -1
        spans = conn.execute(
            "SELECT after_seq, last_seq FROM fleet_pending_spans WHERE device = ?"
            " ORDER BY after_seq",
            (device,),
        ).fetchall()
        pending = tuple((int(a), int(b)) for a, b in spans)
        return AckCursor(int(row[0]), pending), int(row[1])

    def cursor(self, device: str) -> int | None:
        """What the hub acks to ``device`` (None: nothing received from it yet)."""
        return self.ack_cursor(device).contiguous

    def ack_cursor(self, device: str) -> AckCursor:
        """The device's whole ack cursor: ``contiguous`` and the spans waiting beyond it."""
        with self.db.read() as conn:
            return self._read_cursor(conn, device)[0]

    # -- queries ---------------------------------------------------------------------
    def versions(self, model: str) -> list[int]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT DISTINCT version FROM fleet_records WHERE kind = 'window' AND model = ?"
                " UNION SELECT DISTINCT version FROM fleet_rollups WHERE model = ?",
                (model, model),
            ).fetchall()
        return sorted(int(r[0]) for r in rows if r[0] is not None)

    def models(self) -> list[str]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT DISTINCT model FROM fleet_records WHERE kind = 'window'"
                " UNION SELECT DISTINCT model FROM fleet_rollups"
            ).fetchall()
        return sorted(str(r[0]) for r in rows if r[0] is not None)

    def stats(
        self,
        model: str,
        version: int,
        since_s: float | None = None,
        *,
        per_device: bool = False,
    ) -> list[StoredStats]:
        """Everything stored for ``model:version`` from ``since_s`` on, each window once.

        ``since_s`` is rounded down to the bucket of each level (an hour for fine rollups
        and raw windows, a day for coarse rollups). With ``per_device`` rollups are read at
        device granularity, else at group/profile granularity (``device == ''``).
        """
        s = self.settings
        fine = s.bucket_of(since_s) if since_s is not None else None
        coarse = s.coarse_bucket_of(since_s) if since_s is not None else None
        with self.db.read() as conn:
            out = self._rollups(conn, model, version, fine, coarse, None, per_device)
            out += self._raw(conn, model, version, fine, None)
        return out

    def stats_before(
        self,
        model: str,
        version: int,
        before_bucket: int,
        column: str,
        value: str,
        *,
        per_device: bool | None = None,
    ) -> list[StoredStats]:
        """Windows of one group/profile/device in buckets before ``before_bucket``; rollups
        at device granularity with ``per_device`` (default: for a device only)."""
        if column not in ("grp", "profile", "device"):
            raise ValueError(column)
        before = (column, value, before_bucket)
        if per_device is None:
            per_device = column == "device"
        with self.db.read() as conn:
            out = self._rollups(conn, model, version, None, None, before, per_device)
            out += self._raw(conn, model, version, None, before)
        return sorted(out, key=lambda r: r.bucket_s, reverse=True)

    def _rollups(
        self,
        conn: FleetConnection,
        model: str,
        version: int,
        fine: int | None,
        coarse: int | None,
        before: tuple[str, str, int] | None,
        per_device: bool,
    ) -> list[StoredStats]:
        sql = (
            f"SELECT level, windows, {STATS_COLUMNS} FROM fleet_rollups"
            " WHERE model = ? AND version = ? AND device " + ("!= ''" if per_device else "= ''")
        )
        params: list[Any] = [model, version]
        if fine is not None and coarse is not None:
            sql += " AND ((level = ? AND bucket_s >= ?) OR (level = ? AND bucket_s >= ?))"
            params += [self.settings.bucket_s, fine, self.settings.coarse_bucket_s, coarse]
        if before is not None:
            sql += f" AND {before[0]} = ? AND bucket_s < ?"
            params += [before[1], before[2]]
        return [
            StoredStats(int(r[0]), r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[1]), *r[7:11])
            for r in conn.execute(sql, params)
        ]

    def _raw(
        self,
        conn: FleetConnection,
        model: str,
        version: int,
        fine: int | None,
        before: tuple[str, str, int] | None,
    ) -> list[StoredStats]:
        sql = (
            f"SELECT rid, received_at, {STATS_COLUMNS} FROM fleet_records"
            " WHERE kind = 'window' AND rolled = 0 AND model = ? AND version = ?"
        )
        params: list[Any] = [model, version]
        if fine is not None:
            sql += " AND bucket_s >= ?"
            params.append(fine)
        if before is not None:
            sql += f" AND {before[0]} = ? AND bucket_s < ?"
            params += [before[1], before[2]]
        return [_raw_stats(r) for r in conn.execute(sql, params)]

    def received_after(
        self, model: str, version: int, anchor_rid: int, since_received: float
    ) -> list[StoredStats]:
        """Raw windows of ``model:version`` with ``rid > anchor_rid``, received at or after
        ``since_received`` (rolled up or not: the blob stays until raw retention)."""
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT rid, received_at, {STATS_COLUMNS} FROM fleet_records"
                " WHERE kind = 'window' AND model = ? AND version = ? AND rid > ?"
                " AND received_at >= ? ORDER BY rid",
                (model, version, anchor_rid, since_received),
            ).fetchall()
        return [_raw_stats(r) for r in rows]

    def max_rid(self) -> int:
        row = self.db.connection().execute("SELECT MAX(rid) FROM fleet_records").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def count_windows(self) -> dict[str, int]:
        """Raw rows unrolled / rolled and windows inside rollups (diagnostics, tests)."""
        with self.db.read() as conn:
            raw = conn.execute(
                "SELECT rolled, COUNT(*) FROM fleet_records WHERE kind = 'window' GROUP BY rolled"
            ).fetchall()
            levels = conn.execute(
                "SELECT device = '', COALESCE(SUM(windows), 0) FROM fleet_rollups"
                " GROUP BY device = ''"
            ).fetchall()
        counts = {int(k): int(v) for k, v in raw}
        rolled = {bool(k): int(v) for k, v in levels}
        return {
            "raw_unrolled": counts.get(0, 0),
            "raw_rolled": counts.get(1, 0),
            "in_rollups": rolled.get(False, 0),  # device granularity
            "in_group_rollups": rolled.get(True, 0),
        }

    # -- maintenance -----------------------------------------------------------------
    def maintain(self, now: float, keep_since: float | None = None) -> MaintenanceResult:
        """One bounded step of roll-up, coarsening and retention (see ``retention``)."""
        try:
            return maintain(self.db, self.settings, now, self.cache, keep_since)
        except BaseException:
            self.cache.clear()
            raise

    # -- reference cache -------------------------------------------------------------
    def put_reference(
        self, model: str, version: int, profile_json: str, validation: dict[str, Any], now: float
    ) -> None:
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO fleet_references VALUES (?, ?, ?, ?, ?) ON CONFLICT (model, version)"
                " DO UPDATE SET profile = excluded.profile, validation = excluded.validation,"
                " updated_at = excluded.updated_at",
                (model, version, profile_json, json.dumps(validation, sort_keys=True), now),
            )

    def get_reference(self, model: str, version: int) -> tuple[str, dict[str, Any]] | None:
        row = (
            self.db.connection()
            .execute(
                "SELECT profile, validation FROM fleet_references WHERE model = ? AND version = ?",
                (model, version),
            )
            .fetchone()
        )
        return None if row is None else (str(row[0]), json.loads(row[1]))


def _raw_stats(r: Sequence[Any]) -> StoredStats:
    rid, received_at, device, grp, profile, version, bucket_s, start_s, end_s, summary, drift = r
    return StoredStats(
        RAW_LEVEL,
        device,
        grp,
        profile,
        int(version),
        int(bucket_s),
        1,
        start_s,
        end_s,
        summary,
        drift,
        rid=int(rid),
        received_at=received_at,
    )
