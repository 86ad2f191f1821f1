"""Alerts, alert trackers and monitor anchors in the fleet database.

Invariants:

- at most one ``open`` alert per key (rule, model, version, scope kind, scope); opening
  while one is open is refused (returns None), resolving a key with none open is a no-op;
- a tracker's state and the open/resolved alert rows change in the same transaction, so
  after a crash the monitor neither re-fires an open alert nor forgets one;
- a cursor (per model version) is the ``rid`` of the newest window the monitor has taken
  into a scope's carry; the carry holds the windows not yet used by a scored observation, so
  every window is counted in one observation per scope, once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.hub.fleet.alerts import Tracker, TrackerState
from edgefleet.hub.fleet.database import FleetConnection, FleetDatabase

OPEN, RESOLVED = "open", "resolved"


@dataclass(frozen=True)
class AlertRecord:
    id: int
    key: str
    rule: str
    model: str
    version: int
    scope_kind: str
    scope: str
    severity: str
    status: str
    opened_at: float
    resolved_at: float | None
    summary: str
    details: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule,
            "model": self.model,
            "version": self.version,
            "scope_kind": self.scope_kind,
            "scope": self.scope,
            "severity": self.severity,
            "status": self.status,
            "opened_at": self.opened_at,
            "resolved_at": self.resolved_at,
            "summary": self.summary,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class ScopeCarry:
    """Windows of one scope waiting to reach the minimum size of an observation."""

    last_data_at: float | None = None
    stats: bytes | None = None  # merged WindowStats
    totals: str | None = None  # WindowTotals JSON
    since: float | None = None  # when the oldest carried window was received


@dataclass(frozen=True)
class NewAlert:
    key: str
    rule: str
    model: str
    version: int
    scope_kind: str
    scope: str
    severity: str
    summary: str
    details: Mapping[str, Any]


_COLUMNS = (
    "id, key, rule, model, version, scope_kind, scope, severity, status, opened_at,"
    " resolved_at, summary, details"
)


def _record(row: tuple[Any, ...]) -> AlertRecord:
    return AlertRecord(
        id=int(row[0]),
        key=row[1],
        rule=row[2],
        model=row[3],
        version=int(row[4]),
        scope_kind=row[5],
        scope=row[6],
        severity=row[7],
        status=row[8],
        opened_at=float(row[9]),
        resolved_at=row[10],
        summary=row[11],
        details=json.loads(row[12]),
    )


class AlertStore:
    def __init__(self, db: FleetDatabase) -> None:
        self.db = db

    # -- trackers and anchors --------------------------------------------------------
    def trackers(self) -> dict[str, Tracker]:
        rows = self.db.connection().execute("SELECT key, state, count FROM fleet_alert_trackers")
        return {k: Tracker(TrackerState(s), int(c)) for k, s, c in rows}

    def cursor(self, model: str, version: int) -> int:
        row = (
            self.db.connection()
            .execute(
                "SELECT rid FROM fleet_alert_cursors WHERE model = ? AND version = ?",
                (model, version),
            )
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    @staticmethod
    def save_cursor(conn: FleetConnection, model: str, version: int, rid: int) -> None:
        conn.execute(
            "INSERT INTO fleet_alert_cursors VALUES (?, ?, ?) ON CONFLICT (model, version)"
            " DO UPDATE SET rid = excluded.rid",
            (model, version, rid),
        )

    def scope(self, scope_key: str) -> ScopeCarry:
        row = (
            self.db.connection()
            .execute(
                "SELECT last_data_at, carry, carry_totals, carry_since FROM fleet_alert_scopes"
                " WHERE scope_key = ?",
                (scope_key,),
            )
            .fetchone()
        )
        if row is None:
            return ScopeCarry()
        return ScopeCarry(row[0], None if row[1] is None else bytes(row[1]), row[2], row[3])

    def last_data(self) -> dict[str, float | None]:
        rows = self.db.connection().execute(
            "SELECT scope_key, last_data_at FROM fleet_alert_scopes"
        )
        return {str(k): t for k, t in rows}

    @staticmethod
    def save_scope(conn: FleetConnection, scope_key: str, carry: ScopeCarry) -> None:
        conn.execute(
            "INSERT INTO fleet_alert_scopes VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope_key)"
            " DO UPDATE SET last_data_at = excluded.last_data_at, carry = excluded.carry,"
            " carry_totals = excluded.carry_totals, carry_since = excluded.carry_since",
            (scope_key, carry.last_data_at, carry.stats, carry.totals, carry.since),
        )

    @staticmethod
    def save_tracker(conn: FleetConnection, key: str, tracker: Tracker, now: float) -> None:
        if tracker.state is TrackerState.OK and tracker.count == 0:
            conn.execute("DELETE FROM fleet_alert_trackers WHERE key = ?", (key,))
            return
        conn.execute(
            "INSERT INTO fleet_alert_trackers VALUES (?, ?, ?, ?) ON CONFLICT (key)"
            " DO UPDATE SET state = excluded.state, count = excluded.count,"
            " updated_at = excluded.updated_at",
            (key, tracker.state.value, tracker.count, now),
        )

    # -- alerts ----------------------------------------------------------------------
    @staticmethod
    def open_alert(conn: FleetConnection, alert: NewAlert, now: float) -> AlertRecord | None:
        exists = conn.execute(
            "SELECT 1 FROM fleet_alerts WHERE status = ? AND key = ?", (OPEN, alert.key)
        ).fetchone()
        if exists:
            return None
        cur = conn.execute(
            "INSERT INTO fleet_alerts (key, rule, model, version, scope_kind, scope, severity,"
            " status, opened_at, resolved_at, summary, details)"
            " VALUES (?,?,?,?,?,?,?,?,?,NULL,?,?) RETURNING id",
            (
                alert.key,
                alert.rule,
                alert.model,
                alert.version,
                alert.scope_kind,
                alert.scope,
                alert.severity,
                OPEN,
                now,
                alert.summary,
                json.dumps(dict(alert.details), sort_keys=True, default=str),
            ),
        )
        (new_id,) = cur.fetchone()
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM fleet_alerts WHERE id = ?", (new_id,)
        ).fetchone()
        return _record(row)

    @staticmethod
    def resolve_alert(
        conn: FleetConnection, key: str, now: float, reason: str
    ) -> AlertRecord | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM fleet_alerts WHERE status = ? AND key = ?", (OPEN, key)
        ).fetchone()
        if row is None:
            return None
        details = dict(json.loads(row[12]))
        details["resolution"] = reason
        conn.execute(
            "UPDATE fleet_alerts SET status = ?, resolved_at = ?, details = ? WHERE id = ?",
            (RESOLVED, now, json.dumps(details, sort_keys=True, default=str), row[0]),
        )
        updated = conn.execute(
            f"SELECT {_COLUMNS} FROM fleet_alerts WHERE id = ?", (row[0],)
        ).fetchone()
        return _record(updated)

    def open_alerts(self) -> dict[str, AlertRecord]:
        rows = self.db.connection().execute(
            f"SELECT {_COLUMNS} FROM fleet_alerts WHERE status = ?", (OPEN,)
        )
        return {r[1]: _record(r) for r in rows}

    def list_alerts(self, status: str | None = None, limit: int = 1000) -> list[AlertRecord]:
        """Newest first; ``status`` is ``open``, ``resolved`` or None for both."""
        sql = f"SELECT {_COLUMNS} FROM fleet_alerts"
        params: list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY opened_at DESC, id DESC LIMIT ?"
        params.append(limit)
        with self.db.read() as conn:
            return [_record(r) for r in conn.execute(sql, params)]

    def open_counts(self) -> dict[str, int]:
        """Open alerts by severity."""
        rows = self.db.connection().execute(
            "SELECT severity, COUNT(*) FROM fleet_alerts WHERE status = ? GROUP BY severity",
            (OPEN,),
        )
        return {str(s): int(n) for s, n in rows}
