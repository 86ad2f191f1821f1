"""Roll-up, coarsening and retention of stored windows (bounded steps, exact totals).

- ``roll_up``: raw windows received ``rollup_delay_s`` ago or earlier are merged into two
  hourly rollups each — their device's and their group+profile's (``device = ''``) — and
  flagged ``rolled`` in the same transaction. A rollup keeps absorbing windows, so a window
  that arrives late re-opens its hour; one older than the fine retention goes straight into
  its day. (With ``rollup_delay_s = 0``, the default, the ingest transaction already does
  this for every window it stores; see ``window_store``.)
- ``coarsen``: hourly rollups older than ``fine_retention_s`` are merged into daily ones and
  deleted, in one transaction.
- ``prune``: rolled-up raw rows older than ``raw_retention_s`` (and non-window records) are
  deleted — never one received at or after ``keep_since``, the oldest receipt an active
  rollout's gates still read (the rows are the gates' evidence too) —, remembering per device the highest seq deleted so a late retransmission still
  counts as a duplicate; daily rollups older than ``coarse_retention_s`` are deleted and
  counted.

Invariant: every step moves whole windows between rows inside one transaction; merging is
``WindowStats.merge_all`` (exact) and operational totals are counts, so totals never drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgefleet.core.drift import WindowStats
from edgefleet.hub.fleet.database import STATS_COLUMNS, FleetDatabase
from edgefleet.hub.fleet.rollups import (
    FoldItem,
    RollupCache,
    decode,
    decode_items,
    fold,
    merge_into,
)
from edgefleet.hub.fleet.settings import FleetSettings
from edgefleet.hub.fleet.totals import WindowTotals


@dataclass(frozen=True)
class MaintenanceResult:
    rolled_up: int = 0
    coarsened: int = 0
    pruned_records: int = 0
    dropped_rollups: int = 0
    more: bool = False  # a step used its whole budget; call again soon


def maintain(
    db: FleetDatabase,
    settings: FleetSettings,
    now: float,
    cache: RollupCache | None = None,
    keep_since: float | None = None,
) -> MaintenanceResult:
    """One bounded step of roll-up, coarsening and retention (raw rows received at or
    after ``keep_since`` are kept whatever their age)."""
    budget = settings.maintenance_budget
    rolled = roll_up(db, settings, now, budget, cache)
    coarsened = coarsen(db, settings, now, budget, cache)
    pruned, dropped = prune(db, settings, now, keep_since)
    return MaintenanceResult(
        rolled, coarsened, pruned, dropped, more=rolled >= budget or coarsened >= budget
    )


def roll_up(
    db: FleetDatabase,
    settings: FleetSettings,
    now: float,
    budget: int,
    cache: RollupCache | None = None,
) -> int:
    """Merge raw windows received ``rollup_delay_s`` ago or earlier into their rollups
    (the current hour's too: a rollup keeps absorbing windows); returns how many.

    With ``rollup_delay_s = 0`` the ingest path folds windows as it stores them; this then
    only meets windows a failed fold left behind, or rows from an older hub."""
    s = settings
    with db.write() as conn:
        rows = conn.execute(
            "SELECT rid, model, "
            + STATS_COLUMNS
            + " FROM fleet_records WHERE kind = 'window' AND rolled = 0 AND received_at <= ?"
            " ORDER BY rid LIMIT ?",
            (now - s.rollup_delay_s, budget),
        ).fetchall()
        if not rows:
            return 0
        items: list[FoldItem] = []
        for _rid, model, device, grp, profile, version, bucket_s, *_, summary, drift in rows:
            totals = WindowTotals.from_json(summary)
            items.append(
                FoldItem(model, version, device, grp, profile, bucket_s, totals, None, drift)
            )
        undecodable = decode_items(items)
        fold(conn, s, items, now, cache)
        conn.executemany(
            "UPDATE fleet_records SET rolled = 1 WHERE rid = ?", [(r[0],) for r in rows]
        )
        db.bump(conn, {"rolled_up": len(rows), "undecodable_windows": undecodable})
    return len(rows)


def coarsen(
    db: FleetDatabase,
    settings: FleetSettings,
    now: float,
    budget: int,
    cache: RollupCache | None = None,
) -> int:
    """Merge fine rollups older than the fine retention into coarse ones."""
    s = settings
    cutoff = now - s.fine_retention_s - s.bucket_s
    with db.write() as conn:
        rows = conn.execute(
            "SELECT model, version, bucket_s, device, grp, profile, profile_id, windows,"
            " summary, drift FROM fleet_rollups WHERE level = ? AND bucket_s <= ?"
            " ORDER BY bucket_s LIMIT ?",
            (s.bucket_s, cutoff, budget),
        ).fetchall()
        groups: dict[tuple[Any, ...], list[tuple[WindowTotals, WindowStats | None]]] = {}
        for model, version, bucket_s, device, grp, profile, pid, _w, summary, drift in rows:
            stats, _bad = decode(drift)
            key = (
                s.coarse_bucket_s,
                model,
                version,
                s.coarse_bucket_of(bucket_s),
                device,
                grp,
                profile,
                pid,
            )
            groups.setdefault(key, []).append((WindowTotals.from_json(summary), stats))
        for key, parts in groups.items():
            merge_into(conn, key, parts, now, cache)
        conn.executemany(
            "DELETE FROM fleet_rollups WHERE level = ? AND model = ? AND version = ?"
            " AND bucket_s = ? AND device = ? AND grp = ? AND profile = ? AND profile_id = ?",
            [(s.bucket_s, *r[:7]) for r in rows],
        )
    return len(rows)


def prune(
    db: FleetDatabase, settings: FleetSettings, now: float, keep_since: float | None = None
) -> tuple[int, int]:
    """Delete raw rows past retention (already rolled up), but none received at or after
    ``keep_since``, and expired coarse rollups."""
    s = settings
    cutoff = now - s.raw_retention_s
    if keep_since is not None:
        cutoff = min(cutoff, keep_since)
    dropped = 0
    with db.write() as conn:
        where = "received_at < ? AND (rolled = 1 OR kind != 'window')"
        highest = conn.execute(
            f"SELECT device, MAX(seq) FROM fleet_records WHERE {where} GROUP BY device",
            (cutoff,),
        ).fetchall()
        conn.executemany(
            "INSERT INTO fleet_cursor VALUES (?, ?, ?) ON CONFLICT (device) DO UPDATE"
            " SET pruned_through = CASE WHEN excluded.pruned_through > fleet_cursor.pruned_through"
            " THEN excluded.pruned_through ELSE fleet_cursor.pruned_through END",
            [(d, seq, seq) for d, seq in highest],
        )
        pruned = conn.execute(f"DELETE FROM fleet_records WHERE {where}", (cutoff,)).rowcount
        if s.coarse_retention_s is not None:
            old = now - s.coarse_retention_s - s.coarse_bucket_s
            row = conn.execute(
                "SELECT COALESCE(SUM(windows), 0) FROM fleet_rollups"
                " WHERE level = ? AND bucket_s <= ? AND device != ''",
                (s.coarse_bucket_s, old),
            ).fetchone()
            dropped = int(row[0])
            conn.execute(
                "DELETE FROM fleet_rollups WHERE level = ? AND bucket_s <= ?",
                (s.coarse_bucket_s, old),
            )
        db.bump(conn, {"pruned_records": pruned, "dropped_windows": dropped})
    return pruned, dropped
