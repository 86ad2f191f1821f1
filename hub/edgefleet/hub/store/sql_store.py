"""The hub store's queries, shared by both engines (:class:`SqlHubStore`).

The SQL is written once, with ``?`` placeholders, in the dialect both SQLite and
PostgreSQL understand (``ON CONFLICT``, row values, ``COALESCE``); the two places where
they differ come from the engine's :class:`~edgefleet.hub.store.schema.Engine`
(``greatest``, ``for_update``). An engine subclass supplies the connection side:
``transaction`` and the four query helpers, which wrap the driver's errors in
``HubStoreError``.

Read-modify-writes are safe on both engines: SQLite serialises every write transaction
(``BEGIN IMMEDIATE``); on PostgreSQL the rows a write depends on are locked first
(``SELECT ... FOR UPDATE``: the device for a directive, the rollout for a transition) and
inserts that may race use ``ON CONFLICT``.

The telemetry methods live in :mod:`edgefleet.hub.store.sql_telemetry`, the leases
and fencing in :mod:`edgefleet.hub.store.sql_lease`, bundle bytes in
:mod:`edgefleet.hub.store.sql_blobs` (mixins). An engine calls
``_check_fence()`` first thing in every outermost transaction.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from edgefleet.hub.errors import HubStoreError
from edgefleet.hub.rollout.machine import RolloutState, RolloutStatus
from edgefleet.hub.store.records import (
    BundleRecord,
    DesiredAssignment,
    DeviceHead,
    DeviceRecord,
    DeviceRolloutRow,
    DeviceTally,
    DirectiveHead,
    DirectiveRecord,
    RolloutDeviceRecord,
    RolloutEventRecord,
    RolloutRecord,
)
from edgefleet.hub.store.rows import (
    Row,
    bundle_from_row,
    device_from_row,
    directive_from_row,
    multi_row_inserts,
    rollout_device_from_row,
    rollout_device_values,
    rollout_from_row,
    to_json,
)
from edgefleet.hub.store.schema import SCHEMA_VERSION, Engine, create_statements, plan_schema
from edgefleet.hub.store.sql_blobs import SqlBlobMixin
from edgefleet.hub.store.sql_lease import SqlLeaseMixin
from edgefleet.hub.store.sql_telemetry import SqlTelemetryMixin


class SqlHubStore(SqlTelemetryMixin, SqlLeaseMixin, SqlBlobMixin):
    """The queries of :class:`~edgefleet.hub.store.base.HubStore`; engines subclass it."""

    engine: Engine
    where: str  # names the store in errors: a file path, or a URL without its password

    # -- what an engine supplies ----------------------------------------------

    def close(self) -> None:
        raise NotImplementedError

    def transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute one statement; the number of rows it changed."""
        raise NotImplementedError

    def _run_many(self, sql: str, params: Sequence[Sequence[Any]]) -> int:
        raise NotImplementedError

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        raise NotImplementedError

    # -- schema ----------------------------------------------------------------

    def _prepare_schema(self) -> None:
        """Create or migrate the tables; call inside the engine's opening transaction."""
        self._run("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self._one("SELECT value FROM meta WHERE key='schema'")
        try:
            found = int(row["value"]) if row is not None else None
        except ValueError:
            raise HubStoreError(
                f"{self.where}: store schema {str(row['value'])[:40]!r} is not a version number"  # type: ignore[index]
            ) from None
        steps = plan_schema(self.engine, found, self.where)
        for statement in steps:
            self._run(statement)
        for statement in create_statements(self.engine):
            self._run(statement)
        if found != SCHEMA_VERSION:
            self._run(
                "INSERT INTO meta VALUES ('schema', ?) ON CONFLICT (key)"
                " DO UPDATE SET value=excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def schema_version(self) -> int:
        row = self._one("SELECT value FROM meta WHERE key='schema'")
        return int(row["value"]) if row is not None else 0

    # -- devices ---------------------------------------------------------------

    def add_device(self, device: DeviceRecord) -> None:
        with self.transaction():
            if self.get_device(device.device_id) is not None:
                raise HubStoreError(f"device {device.device_id} is already enrolled")
            self._run(
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
            n = self._run(
                "UPDATE devices SET password_hash=? WHERE id=?", (password_hash, device_id)
            )
            if n != 1:
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

    def device_profiles(self) -> dict[str, str]:
        """Every device's profile in one query, without decoding states or tags."""
        return {r["id"]: r["profile"] for r in self._all("SELECT id, profile FROM devices")}

    def count_devices(self) -> tuple[int, int]:
        """(enrolled, online) without reading every device's row into a record."""
        row = self._one(
            "SELECT COUNT(*) AS enrolled, COALESCE(SUM(online), 0) AS online FROM devices"
        )
        return (int(row["enrolled"]), int(row["online"])) if row else (0, 0)

    def set_presence(self, device_id: str, online: bool, at: float) -> bool:
        """Record a status report received at ``at``; False when a report received later
        is stored already (that one stands: presence never goes back in time).

        The comparison sits in the UPDATE's WHERE, so it holds between hubs: a slow hub
        handling an old last-will "offline" cannot overwrite the "online" another hub
        stored from the device's newer connection. Equal times: the later write wins.
        """
        with self.transaction():
            n = self._run(
                f"UPDATE devices SET online=?, presence_at=?,"
                f" last_seen={self.engine.greatest}(COALESCE(last_seen, 0), ?)"
                " WHERE id=? AND (presence_at IS NULL OR presence_at <= ?)",
                (int(online), at, at, device_id, at),
            )
            return n == 1

    def set_device_state(self, device_id: str, state: Mapping[str, Any], at: float) -> bool:
        """Store a state report received at ``at``; False (nothing written) when one
        received later is stored already, as for presence."""
        with self.transaction():
            n = self._run(
                f"UPDATE devices SET state=?, state_at=?,"
                f" last_seen={self.engine.greatest}(COALESCE(last_seen, 0), ?)"
                " WHERE id=? AND (state_at IS NULL OR state_at <= ?)",
                (to_json(dict(state)), at, at, device_id, at),
            )
            return n == 1

    def touch_devices(self, seen: Sequence[tuple[str, float]]) -> None:
        """``touch_device`` for many devices in one transaction, in id order (lock order)."""
        with self.transaction():
            self._run_many(
                f"UPDATE devices SET last_seen={self.engine.greatest}(COALESCE(last_seen, 0), ?)"
                " WHERE id=?",
                [(at, device_id) for device_id, at in sorted(seen)],
            )

    def touch_device(self, device_id: str, at: float) -> None:
        with self.transaction():
            self._run(
                f"UPDATE devices SET last_seen={self.engine.greatest}(COALESCE(last_seen, 0), ?)"
                " WHERE id=?",
                (at, device_id),
            )

    def remove_device(self, device_id: str) -> None:
        with self.transaction():
            self._run("DELETE FROM assignments WHERE device=?", (device_id,))
            self._run("DELETE FROM directives WHERE device=?", (device_id,))
            if self._run("DELETE FROM devices WHERE id=?", (device_id,)) != 1:
                raise HubStoreError(f"no such device {device_id}")

    # -- assignments and directives -------------------------------------------

    def get_assignments(self, device_id: str) -> dict[str, DesiredAssignment]:
        rows = self._all("SELECT model, body FROM assignments WHERE device=?", (device_id,))
        return {r["model"]: DesiredAssignment.from_dict(json.loads(r["body"])) for r in rows}

    def all_assignments(self) -> dict[str, dict[str, DesiredAssignment]]:
        """Every device's desired assignments in one query (device -> model -> assignment)."""
        out: dict[str, dict[str, DesiredAssignment]] = {}
        for r in self._all("SELECT device, model, body FROM assignments ORDER BY device, model"):
            out.setdefault(r["device"], {})[r["model"]] = DesiredAssignment.from_dict(
                json.loads(r["body"])
            )
        return out

    def set_assignment(
        self, device_id: str, model: str, assignment: DesiredAssignment | None, at: float
    ) -> None:
        with self.transaction():
            if assignment is None:
                self._run("DELETE FROM assignments WHERE device=? AND model=?", (device_id, model))
            else:
                self._run(
                    "INSERT INTO assignments (device, model, body, updated_at) VALUES (?,?,?,?)"
                    " ON CONFLICT (device, model) DO UPDATE SET body=excluded.body,"
                    " updated_at=excluded.updated_at",
                    (device_id, model, to_json(assignment.to_dict()), at),
                )
            n = self._run(
                "UPDATE devices SET desired_rev = desired_rev + 1 WHERE id=?", (device_id,)
            )
            if n != 1:
                raise HubStoreError(f"no such device {device_id}")

    def record_directive(self, directive: DirectiveRecord) -> None:
        with self.transaction():
            # Two hubs recording for one device: the second waits here for the first's
            # commit, then sees its seq (PostgreSQL; SQLite's BEGIN IMMEDIATE serialises).
            self._one(
                f"SELECT id FROM devices WHERE id=?{self.engine.for_update}", (directive.device_id,)
            )
            last = self.latest_directive(directive.device_id)
            if last is not None and directive.seq <= last.seq:
                raise HubStoreError(
                    f"directive seq {directive.seq} for {directive.device_id} is not above "
                    f"{last.seq}"
                )
            self._run(
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
            self._run(
                "UPDATE directives SET published_at=? WHERE device=? AND seq=?",
                (at, device_id, seq),
            )

    # -- bundles ---------------------------------------------------------------

    def add_bundle(self, bundle: BundleRecord) -> bool:
        with self.transaction():
            n = self._run(
                "INSERT INTO bundles VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
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
            return n == 1

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
            self._run(
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
            rows = [rollout_device_values(device) for device in devices]
            for sql, params in multi_row_inserts("INSERT INTO rollout_devices", rows):
                self._run(sql, params)

    def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        row = self._one("SELECT * FROM rollouts WHERE id=?", (rollout_id,))
        return rollout_from_row(row) if row else None

    def lock_rollout(self, rollout_id: str) -> RolloutRecord | None:
        """The rollout, locked until the caller's transaction ends (call inside one).

        A transition read and written under this lock cannot interleave with another
        hub's: the second reader waits for the first's commit and reads its result.
        """
        row = self._one(f"SELECT * FROM rollouts WHERE id=?{self.engine.for_update}", (rollout_id,))
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
            n = self._run(
                "UPDATE rollouts SET status=?, state=? WHERE id=?",
                (to_json(status.to_dict()), status.state.value, rollout_id),
            )
            if n != 1:
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
            n = self._run(
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
            if n != 1:
                raise HubStoreError(
                    f"device {device.device_id} is not part of rollout {device.rollout_id}"
                )

    def add_rollout_event(self, rollout_id: str, at: float, event: str, detail: str) -> None:
        with self.transaction():
            self._run(
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
            self._run(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name)"
                " DO UPDATE SET value = counters.value + excluded.value",
                (name, n),
            )

    def counters(self) -> dict[str, int]:
        return {r["name"]: r["value"] for r in self._all("SELECT * FROM counters ORDER BY name")}

    # -- console reads: a page, a tally, a few devices (a dashboard on 10,000 devices) -----

    def device_page(
        self,
        *,
        group: str | None = None,
        profile: str | None = None,
        online: bool | None = None,
        search: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[DeviceRecord], int]:
        """One page of devices in id order, filtered in SQL, and how many match in all.

        ``group`` "" matches devices without a group; ``search`` is a case-insensitive
        substring of the device id (device ids are ASCII, so SQL's ``LOWER`` agrees with
        Python's)."""
        clauses: list[str] = []
        params: list[Any] = []
        if group is not None:
            clauses.append("COALESCE(grp, '') = ?")
            params.append(group)
        if profile is not None:
            clauses.append("profile = ?")
            params.append(profile)
        if online is not None:
            clauses.append("online <> 0" if online else "online = 0")
        if search:
            clauses.append("LOWER(id) LIKE ? ESCAPE '!'")
            params.append(_containing(search.lower()))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        total = self._one(f"SELECT COUNT(*) AS n FROM devices{where}", params)
        rows = self._all(
            f"SELECT * FROM devices{where} ORDER BY id LIMIT ? OFFSET ?", [*params, limit, offset]
        )
        return [device_from_row(r) for r in rows], int(total["n"]) if total else 0

    def _by_ids(self, sql: str, device_ids: Sequence[str]) -> list[Row]:
        """``sql`` (with one ``IN ({})``) over ``device_ids`` in chunks both engines accept."""
        rows: list[Row] = []
        ids = list(dict.fromkeys(device_ids))
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK]
            rows += self._all(sql.format(",".join("?" * len(chunk))), chunk)
        return rows

    def assignments_of(self, device_ids: Sequence[str]) -> dict[str, dict[str, DesiredAssignment]]:
        """:meth:`all_assignments` for these devices only."""
        out: dict[str, dict[str, DesiredAssignment]] = {}
        sql = "SELECT device, model, body FROM assignments WHERE device IN ({}) ORDER BY device, model"
        for r in self._by_ids(sql, device_ids):
            out.setdefault(r["device"], {})[r["model"]] = DesiredAssignment.from_dict(
                json.loads(r["body"])
            )
        return out

    def directive_heads_of(self, device_ids: Sequence[str]) -> dict[str, DirectiveHead]:
        """:meth:`directive_heads` for these devices only."""
        sql = (
            "SELECT device, seq, expires_at, desired_rev, published_at FROM directives"
            " WHERE (device, seq) IN (SELECT device, MAX(seq) FROM directives"
            " WHERE device IN ({}) GROUP BY device)"
        )
        return {
            r["device"]: DirectiveHead(
                r["seq"], r["expires_at"], r["desired_rev"], r["published_at"]
            )
            for r in self._by_ids(sql, device_ids)
        }

    def device_heads_of(self, device_ids: Sequence[str]) -> dict[str, DeviceHead]:
        """:meth:`device_heads` for these devices only (by primary key)."""
        rows = self._by_ids(
            "SELECT id, online, desired_rev FROM devices WHERE id IN ({})", device_ids
        )
        return {r["id"]: DeviceHead(bool(r["online"]), r["desired_rev"]) for r in rows}

    def profiles_of(self, device_ids: Sequence[str]) -> dict[str, str]:
        """Device id -> profile for these devices (enrolled ones only)."""
        rows = self._by_ids("SELECT id, profile FROM devices WHERE id IN ({})", device_ids)
        return {r["id"]: r["profile"] for r in rows}

    def device_tallies(self) -> list[DeviceTally]:
        """Devices without assignments, counted per (group, presence, state report)."""
        rows = self._all(
            "SELECT grp, online, state, COUNT(*) AS n FROM devices d WHERE NOT EXISTS"
            " (SELECT 1 FROM assignments a WHERE a.device = d.id) GROUP BY grp, online, state"
        )
        return [
            DeviceTally(r["grp"], bool(r["online"]), json.loads(r["state"]), int(r["n"]))
            for r in rows
        ]

    def assigned_devices(self) -> list[DeviceRecord]:
        """The devices that have a desired assignment, in id order."""
        rows = self._all(
            "SELECT * FROM devices d WHERE EXISTS"
            " (SELECT 1 FROM assignments a WHERE a.device = d.id) ORDER BY id"
        )
        return [device_from_row(r) for r in rows]

    def devices_whose_state_mentions(self, text: str) -> list[tuple[str, dict[str, Any]]]:
        """(id, state report) of the devices whose report contains ``text``, in id order: a
        narrow first cut (e.g. ``directive_error``) the caller checks exactly."""
        rows = self._all(
            "SELECT id, state FROM devices WHERE state LIKE ? ESCAPE '!' ORDER BY id",
            (_containing(text),),
        )
        return [(r["id"], json.loads(r["state"])) for r in rows]


# SQLite before 3.32 accepts 999 parameters per statement.
_ID_CHUNK = 500


def _containing(text: str) -> str:
    """A LIKE pattern (``ESCAPE '!'``) matching any value that contains ``text``."""
    escaped = text.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%"
