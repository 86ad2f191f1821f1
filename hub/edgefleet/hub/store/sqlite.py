"""SQLite (WAL) implementation of :class:`~edgefleet.hub.store.base.HubStore`.

Invariants: one connection per store object, shared by the service's threads
under a re-entrant lock; WAL mode so ``hub rollout ...`` commands in another
process read and write while ``hub serve`` runs (``busy_timeout`` absorbs the
short write locks); writes happen inside ``BEGIN IMMEDIATE`` transactions so
a reader never sees half of a rollout; ``sqlite3`` errors are wrapped in
``HubStoreError`` at this boundary.

The telemetry methods and their retention rules live in
:mod:`edgefleet.hub.store.sqlite_telemetry` (a mixin of this class); rows become records
in :mod:`edgefleet.hub.store.sqlite_rows`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgefleet.hub.errors import HubStoreError
from edgefleet.hub.rollout.machine import RolloutState, RolloutStatus
from edgefleet.hub.store.records import (
    BundleRecord,
    DesiredAssignment,
    DeviceHead,
    DeviceRecord,
    DeviceRolloutRow,
    DirectiveHead,
    DirectiveRecord,
    RolloutDeviceRecord,
    RolloutEventRecord,
    RolloutRecord,
)
from edgefleet.hub.store.sqlite_rows import (
    bundle_from_row,
    device_from_row,
    directive_from_row,
    rollout_device_from_row,
    rollout_device_values,
    rollout_from_row,
    to_json,
)
from edgefleet.hub.store.sqlite_telemetry import SqliteTelemetryMixin

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, profile TEXT NOT NULL, grp TEXT, tags TEXT NOT NULL,
    password_hash TEXT NOT NULL, created_at REAL NOT NULL, last_seen REAL,
    online INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT '{}', state_at REAL,
    desired_rev INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS assignments (
    device TEXT NOT NULL REFERENCES devices(id), model TEXT NOT NULL, body TEXT NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (device, model));
CREATE TABLE IF NOT EXISTS directives (
    device TEXT NOT NULL REFERENCES devices(id), seq INTEGER NOT NULL, issued_at REAL NOT NULL,
    expires_at REAL NOT NULL, desired_rev INTEGER NOT NULL, envelope TEXT NOT NULL,
    published_at REAL, PRIMARY KEY (device, seq));
CREATE TABLE IF NOT EXISTS bundles (
    sha256 TEXT PRIMARY KEY, model TEXT NOT NULL, version INTEGER NOT NULL, profile TEXT,
    size INTEGER NOT NULL, path TEXT NOT NULL, manifest TEXT NOT NULL, signers TEXT NOT NULL,
    published_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS bundles_model ON bundles (model, version);
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version INTEGER NOT NULL, plan TEXT NOT NULL,
    status TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout TEXT NOT NULL REFERENCES rollouts(id), device TEXT NOT NULL, phase INTEGER NOT NULL,
    bundle_sha256 TEXT NOT NULL, size INTEGER NOT NULL, previous_version INTEGER,
    previous_sha256 TEXT, previous_size INTEGER, install TEXT NOT NULL, assigned_at REAL,
    settled_at REAL, detail TEXT NOT NULL DEFAULT '', PRIMARY KEY (rollout, device));
CREATE INDEX IF NOT EXISTS rollout_devices_device ON rollout_devices (device);
CREATE TABLE IF NOT EXISTS rollout_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rollout TEXT NOT NULL, at REAL NOT NULL,
    event TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS telemetry (
    device TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, model TEXT,
    version INTEGER, received_at REAL NOT NULL, body TEXT NOT NULL, PRIMARY KEY (device, seq));
CREATE INDEX IF NOT EXISTS telemetry_model ON telemetry (model, version, kind, received_at);
CREATE INDEX IF NOT EXISTS telemetry_received ON telemetry (received_at);
-- Hub stores written by earlier versions kept the highest last_seq per device here. Nothing
-- ever read it (the acks come from the fleet database's own cursor), so it is dropped on open.
DROP TABLE IF EXISTS telemetry_cursor;
CREATE TABLE IF NOT EXISTS telemetry_pruned (device TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SqliteHubStore(SqliteTelemetryMixin):
    """The default hub store: one SQLite file in WAL mode."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._depth = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path),
                timeout=busy_timeout_s,
                isolation_level=None,  # explicit BEGIN/COMMIT below
                check_same_thread=False,
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self.transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                    )
                elif int(row["value"]) > SCHEMA_VERSION:
                    raise HubStoreError(
                        f"{self.path}: store schema {row['value']} is newer than this hub "
                        f"({SCHEMA_VERSION}); upgrade edgefleet"
                    )
        except sqlite3.Error as e:
            raise HubStoreError(f"cannot open hub store {self.path}: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            outer = self._depth == 0
            try:
                if outer:
                    self._db.execute("BEGIN IMMEDIATE")
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                if outer:
                    self._db.execute("COMMIT")
            except BaseException as e:
                if outer and self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise HubStoreError(f"hub store {self.path}: {e}") from e
                raise

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, params)
            except sqlite3.Error as e:
                raise HubStoreError(f"hub store {self.path}: {e}") from e

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._exec(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._exec(sql, params).fetchone()
            return row

    # -- devices ---------------------------------------------------------------

    def add_device(self, device: DeviceRecord) -> None:
        with self.transaction():
            if self.get_device(device.device_id) is not None:
                raise HubStoreError(f"device {device.device_id} is already enrolled")
            self._exec(
                "INSERT INTO devices (id, profile, grp, tags, password_hash, created_at,"
                " last_seen, online, state, state_at, desired_rev)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    device.device_id,
                    device.profile,
                    device.group,
                    to_json(dict(device.tags)),
                    device.password_hash,
                    device.created_at,
                    device.last_seen,
                    int(device.online),
                    to_json(dict(device.state)),
                    device.state_at,
                    device.desired_rev,
                ),
            )

    def replace_device_credentials(self, device_id: str, password_hash: str) -> None:
        with self.transaction():
            cur = self._exec(
                "UPDATE devices SET password_hash=? WHERE id=?", (password_hash, device_id)
            )
            if cur.rowcount != 1:
                raise HubStoreError(f"no such device {device_id}")

    def get_device(self, device_id: str) -> DeviceRecord | None:
        row = self._one("SELECT * FROM devices WHERE id=?", (device_id,))
        return device_from_row(row) if row else None

    def list_devices(self) -> list[DeviceRecord]:
        return [device_from_row(r) for r in self._all("SELECT * FROM devices ORDER BY id")]

    def device_heads(self) -> dict[str, DeviceHead]:
        """Every device's presence and ``desired_rev``, without decoding its state."""
        rows = self._all("SELECT id, online, desired_rev FROM devices ORDER BY id")
        return {r["id"]: DeviceHead(bool(r["online"]), r["desired_rev"]) for r in rows}

    def count_devices(self) -> tuple[int, int]:
        """(enrolled, online) without reading every device's row into a record."""
        row = self._one("SELECT COUNT(*), COALESCE(SUM(online), 0) FROM devices")
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def set_presence(self, device_id: str, online: bool, at: float) -> None:
        with self.transaction():
            self._exec(
                "UPDATE devices SET online=?, last_seen=MAX(COALESCE(last_seen, 0), ?) WHERE id=?",
                (int(online), at, device_id),
            )

    def set_device_state(self, device_id: str, state: Mapping[str, Any], at: float) -> None:
        with self.transaction():
            self._exec(
                "UPDATE devices SET state=?, state_at=?, last_seen=MAX(COALESCE(last_seen, 0), ?)"
                " WHERE id=?",
                (to_json(dict(state)), at, at, device_id),
            )

    def touch_device(self, device_id: str, at: float) -> None:
        with self.transaction():
            self._exec(
                "UPDATE devices SET last_seen=MAX(COALESCE(last_seen, 0), ?) WHERE id=?",
                (at, device_id),
            )

    def remove_device(self, device_id: str) -> None:
        with self.transaction():
            self._exec("DELETE FROM assignments WHERE device=?", (device_id,))
            self._exec("DELETE FROM directives WHERE device=?", (device_id,))
            cur = self._exec("DELETE FROM devices WHERE id=?", (device_id,))
            if cur.rowcount != 1:
                raise HubStoreError(f"no such device {device_id}")

    # -- assignments and directives -------------------------------------------

    def get_assignments(self, device_id: str) -> dict[str, DesiredAssignment]:
        rows = self._all("SELECT model, body FROM assignments WHERE device=?", (device_id,))
        return {r["model"]: DesiredAssignment.from_dict(json.loads(r["body"])) for r in rows}

    def list_assignments(self) -> dict[str, dict[str, DesiredAssignment]]:
        """Every device's assignments in one read (a fleet listing, not one query per device)."""
        out: dict[str, dict[str, DesiredAssignment]] = {}
        for r in self._all("SELECT device, model, body FROM assignments"):
            out.setdefault(r["device"], {})[r["model"]] = DesiredAssignment.from_dict(
                json.loads(r["body"])
            )
        return out

    def set_assignment(
        self, device_id: str, model: str, assignment: DesiredAssignment | None, at: float
    ) -> None:
        with self.transaction():
            if assignment is None:
                self._exec("DELETE FROM assignments WHERE device=? AND model=?", (device_id, model))
            else:
                self._exec(
                    "INSERT INTO assignments (device, model, body, updated_at) VALUES (?,?,?,?)"
                    " ON CONFLICT (device, model) DO UPDATE SET body=excluded.body,"
                    " updated_at=excluded.updated_at",
                    (device_id, model, to_json(assignment.to_dict()), at),
                )
            cur = self._exec(
                "UPDATE devices SET desired_rev = desired_rev + 1 WHERE id=?", (device_id,)
            )
            if cur.rowcount != 1:
                raise HubStoreError(f"no such device {device_id}")

    def record_directive(self, directive: DirectiveRecord) -> None:
        with self.transaction():
            last = self.latest_directive(directive.device_id)
            if last is not None and directive.seq <= last.seq:
                raise HubStoreError(
                    f"directive seq {directive.seq} for {directive.device_id} is not above "
                    f"{last.seq}"
                )
            self._exec(
                "INSERT INTO directives VALUES (?,?,?,?,?,?,?)",
                (
                    directive.device_id,
                    directive.seq,
                    directive.issued_at,
                    directive.expires_at,
                    directive.desired_rev,
                    to_json(dict(directive.envelope)),
                    directive.published_at,
                ),
            )

    def latest_directive(self, device_id: str) -> DirectiveRecord | None:
        row = self._one(
            "SELECT * FROM directives WHERE device=? ORDER BY seq DESC LIMIT 1", (device_id,)
        )
        return directive_from_row(row) if row is not None else None

    def directive_heads(self) -> dict[str, DirectiveHead]:
        """Per device, the seq, expiry, revision and publication of its latest directive."""
        rows = self._all(
            "SELECT device, seq, expires_at, desired_rev, published_at FROM directives"
            " WHERE (device, seq) IN (SELECT device, MAX(seq) FROM directives GROUP BY device)"
        )
        return {
            r["device"]: DirectiveHead(
                r["seq"], r["expires_at"], r["desired_rev"], r["published_at"]
            )
            for r in rows
        }

    def latest_directives(self, *, unpublished_only: bool = False) -> list[DirectiveRecord]:
        """Every device's latest directive (only those not yet published, if asked)."""
        rows = self._all(
            "SELECT * FROM directives"
            " WHERE (device, seq) IN (SELECT device, MAX(seq) FROM directives GROUP BY device)"
            + (" AND published_at IS NULL" if unpublished_only else "")
            + " ORDER BY device"
        )
        return [directive_from_row(r) for r in rows]

    def mark_directive_published(self, device_id: str, seq: int, at: float) -> None:
        with self.transaction():
            self._exec(
                "UPDATE directives SET published_at=? WHERE device=? AND seq=?",
                (at, device_id, seq),
            )

    # -- bundles ---------------------------------------------------------------

    def add_bundle(self, bundle: BundleRecord) -> bool:
        with self.transaction():
            cur = self._exec(
                "INSERT OR IGNORE INTO bundles VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    bundle.sha256,
                    bundle.model,
                    bundle.version,
                    bundle.profile,
                    bundle.size,
                    bundle.path,
                    to_json(dict(bundle.manifest)),
                    to_json(list(bundle.signer_keyids)),
                    bundle.published_at,
                ),
            )
            return cur.rowcount == 1

    def get_bundle(self, sha256: str) -> BundleRecord | None:
        row = self._one("SELECT * FROM bundles WHERE sha256=?", (sha256,))
        return bundle_from_row(row) if row else None

    def list_bundles(self) -> list[BundleRecord]:
        rows = self._all("SELECT * FROM bundles ORDER BY model, version, profile, sha256")
        return [bundle_from_row(r) for r in rows]

    def find_bundles(self, model: str, version: int) -> list[BundleRecord]:
        rows = self._all(
            "SELECT * FROM bundles WHERE model=? AND version=? ORDER BY published_at",
            (model, version),
        )
        return [bundle_from_row(r) for r in rows]

    # -- rollouts --------------------------------------------------------------

    def create_rollout(
        self, rollout: RolloutRecord, devices: Sequence[RolloutDeviceRecord]
    ) -> None:
        with self.transaction():
            self._exec(
                "INSERT INTO rollouts VALUES (?,?,?,?,?,?,?)",
                (
                    rollout.rollout_id,
                    rollout.plan.model,
                    rollout.plan.version,
                    to_json(rollout.plan.to_dict()),
                    to_json(rollout.status.to_dict()),
                    rollout.status.state.value,
                    rollout.created_at,
                ),
            )
            for device in devices:
                self._exec(
                    "INSERT INTO rollout_devices VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    rollout_device_values(device),
                )

    def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        row = self._one("SELECT * FROM rollouts WHERE id=?", (rollout_id,))
        return rollout_from_row(row) if row else None

    def list_rollouts(self, states: Collection[RolloutState] | None = None) -> list[RolloutRecord]:
        if states is None:
            rows = self._all("SELECT * FROM rollouts ORDER BY created_at, id")
        else:
            values = sorted(s.value for s in states)
            marks = ",".join("?" * len(values))
            rows = self._all(
                f"SELECT * FROM rollouts WHERE state IN ({marks}) ORDER BY created_at, id", values
            )
        return [rollout_from_row(r) for r in rows]

    def update_rollout_status(self, rollout_id: str, status: RolloutStatus) -> None:
        with self.transaction():
            cur = self._exec(
                "UPDATE rollouts SET status=?, state=? WHERE id=?",
                (to_json(status.to_dict()), status.state.value, rollout_id),
            )
            if cur.rowcount != 1:
                raise HubStoreError(f"no such rollout {rollout_id}")

    def list_rollout_devices(self, rollout_id: str) -> list[RolloutDeviceRecord]:
        rows = self._all(
            "SELECT * FROM rollout_devices WHERE rollout=? ORDER BY phase, device", (rollout_id,)
        )
        return [rollout_device_from_row(r) for r in rows]

    def device_rollout_rows(self, device_id: str, model: str) -> list[DeviceRolloutRow]:
        """The device's rows in rollouts of ``model`` not rolled back, oldest rollout first."""
        rows = self._all(
            "SELECT d.*, r.version AS rollout_version FROM rollout_devices d"
            " JOIN rollouts r ON r.id = d.rollout"
            " WHERE d.device=? AND r.model=? AND r.state != ?"
            " ORDER BY r.created_at, r.id",
            (device_id, model, RolloutState.ROLLED_BACK.value),
        )
        return [DeviceRolloutRow(r["rollout_version"], rollout_device_from_row(r)) for r in rows]

    def update_rollout_device(self, device: RolloutDeviceRecord) -> None:
        with self.transaction():
            cur = self._exec(
                "UPDATE rollout_devices SET install=?, assigned_at=?, settled_at=?, detail=?"
                " WHERE rollout=? AND device=?",
                (
                    device.install.value,
                    device.assigned_at,
                    device.settled_at,
                    device.detail,
                    device.rollout_id,
                    device.device_id,
                ),
            )
            if cur.rowcount != 1:
                raise HubStoreError(
                    f"device {device.device_id} is not part of rollout {device.rollout_id}"
                )

    def add_rollout_event(self, rollout_id: str, at: float, event: str, detail: str) -> None:
        with self.transaction():
            self._exec(
                "INSERT INTO rollout_events (rollout, at, event, detail) VALUES (?,?,?,?)",
                (rollout_id, at, event, detail),
            )

    def rollout_events(self, rollout_id: str) -> list[RolloutEventRecord]:
        rows = self._all(
            "SELECT rollout, at, event, detail FROM rollout_events WHERE rollout=? ORDER BY id",
            (rollout_id,),
        )
        return [RolloutEventRecord(r["rollout"], r["at"], r["event"], r["detail"]) for r in rows]

    # -- counters --------------------------------------------------------------

    def bump_counter(self, name: str, n: int = 1) -> None:
        with self.transaction():
            self._exec(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name)"
                " DO UPDATE SET value = value + excluded.value",
                (name, n),
            )

    def counters(self) -> dict[str, int]:
        return {r["name"]: r["value"] for r in self._all("SELECT * FROM counters ORDER BY name")}
