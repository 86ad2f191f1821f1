"""The alert monitor: reads newly received windows, scores each scope, runs the rules.

Each run (``run_once(now)``), per model version with windows received since its cursor:

1. the new windows are decoded once and folded into the *carry* of every scope they belong
   to (the fleet, their group/profile/device as the policy's ``scopes`` say), per device:
   a scope scores its devices pooled by the evidence rule
   (:func:`~edgefleet.core.drift.pooling.pool_devices`: the exact merge unless one device
   holds more than its share of the rows), so no one device makes it drift or hides it;
2. a carry that reached the minimum size (``DriftThresholds.min_n`` rows of drift
   statistics, or ``min_requests`` requests when the model has no drift data) becomes an
   observation: scored against the reference, evaluated by every rule, stepped through the
   alert state machine (:mod:`~edgefleet.hub.fleet.alerts`), and emptied; a smaller carry
   waits for more windows — small windows merge over time — but never longer than
   ``FleetSettings.monitor_lookback_s``;
3. trackers, carries, cursors and alert rows are written in one transaction; only then do
   the sinks see the events.

Observations follow arrival order, not the windows' own time: a device that was offline for
hours contributes its backlog when it arrives, once. Reports (``hub drift``) use the
windows' own time buckets instead.

An open alert whose scope sent nothing for ``stale_after_s`` resolves with reason "no data".
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from edgefleet.core.drift import ReferenceProfile, WindowStats, score_window
from edgefleet.core.drift.pooling import pool_devices
from edgefleet.core.drift.wire_batch import decode_many
from edgefleet.core.errors import DriftError, EdgefleetError
from edgefleet.core.evidence import DeviceEvidence, EvidenceRule, LatencySummary
from edgefleet.hub.fleet.alert_sinks import AlertEvent, AlertSink
from edgefleet.hub.fleet.alert_store import AlertStore, NewAlert, ScopeCarry
from edgefleet.hub.fleet.alerts import (
    FIRED,
    FLEET_SCOPE,
    AlertPolicy,
    Observation,
    Tracker,
    alert_key,
    device_evidence,
    evaluate,
    severity_of,
    step,
)
from edgefleet.hub.fleet.ingest import FleetTelemetry
from edgefleet.hub.fleet.references import References
from edgefleet.hub.fleet.totals import WindowTotals
from edgefleet.hub.fleet.window_store import StoredStats

log = logging.getLogger(__name__)


def scope_value(row: StoredStats, kind: str) -> str:
    if kind == "fleet":
        return FLEET_SCOPE
    if kind == "group":
        return row.group or "(none)"
    if kind == "profile":
        return row.profile or "(none)"
    return row.device


@dataclass
class _Carry:
    key: str
    kind: str
    scope: str
    totals: WindowTotals
    since: float | None
    last_data_at: float | None
    # Drift statistics per device, each device's windows merged exactly; the scope scores
    # them pooled by the evidence rule (edgefleet.core.drift.pooling), so no one device
    # makes a scope drift or hides its drift.
    parts: dict[str, WindowStats] = field(default_factory=dict)
    # Per device (scopes of several devices only): what the rules pool so that no one
    # device decides for the scope (edgefleet.core.evidence).
    devices: dict[str, DeviceEvidence] = field(default_factory=dict)

    def add(self, stats: WindowStats | None, totals: WindowTotals, at: float, device: str) -> None:
        if stats is not None:
            known_stats = self.parts.get(device)
            self.parts[device] = stats if known_stats is None else known_stats.merge(stats)
        self.totals.add(totals)
        if self.kind != "device":
            evidence = device_evidence(device, totals)
            known = self.devices.get(device)
            self.devices[device] = evidence if known is None else known.merge(evidence)
        self.since = at if self.since is None else min(self.since, at)
        self.last_data_at = at if self.last_data_at is None else max(self.last_data_at, at)

    def stats(self, rule: EvidenceRule) -> WindowStats | None:
        """The scope's drift statistics: its devices pooled (exact within the cap)."""
        return pool_devices(list(self.parts.values()), rule) if self.parts else None

    def clear(self) -> None:
        self.parts, self.totals, self.since, self.devices = {}, WindowTotals(), None, {}

    def to_record(self) -> ScopeCarry:
        empty = self.totals.windows == 0
        totals = None
        blob = None
        if not empty:
            # The per-device evidence rides along in the totals JSON (readers of the
            # totals ignore the extra keys); one device's statistics go in the blob column.
            extra: dict[str, Any] = {"per_device": _devices_to_json(self.devices)}
            if len(self.parts) == 1:
                blob = next(iter(self.parts.values())).to_bytes()
            elif self.parts:
                extra["per_device_stats"] = {
                    d: base64.b64encode(w.to_bytes()).decode("ascii") for d, w in self.parts.items()
                }
            totals = json.dumps(self.totals.to_dict() | extra, separators=(",", ":"))
        return ScopeCarry(self.last_data_at, blob, totals, None if empty else self.since)


def _devices_to_json(devices: Mapping[str, DeviceEvidence]) -> dict[str, Any]:
    return {
        d: [
            e.requests,
            e.errors,
            [[lo, None if math.isinf(hi) else hi, n] for (lo, hi), n in e.latency.buckets.items()],
        ]
        for d, e in devices.items()
    }


def _devices_from_json(raw: Any) -> dict[str, DeviceEvidence]:
    out: dict[str, DeviceEvidence] = {}
    for device, (requests, errors, buckets) in dict(raw or {}).items():
        latency = LatencySummary(
            {(float(lo), math.inf if hi is None else float(hi)): int(n) for lo, hi, n in buckets}
        )
        out[str(device)] = DeviceEvidence(str(device), int(requests), int(errors), latency)
    return out


class FleetMonitor:
    def __init__(
        self,
        telemetry: FleetTelemetry,
        references: References,
        policy: AlertPolicy | None = None,
        sinks: Sequence[AlertSink] = (),
    ) -> None:
        self.telemetry = telemetry
        self.store = telemetry.store
        self.settings = telemetry.settings
        self.alerts = AlertStore(telemetry.db)
        self.references = references
        self.policy = policy or AlertPolicy()
        self.sinks = list(sinks)
        self.rule = EvidenceRule()  # how a scope's devices are pooled (core.evidence)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # -- one evaluation --------------------------------------------------------------
    def run_once(self, now: float) -> list[AlertEvent]:
        with self._lock:
            events = self._evaluate(now)
        for event in events:
            for sink in self.sinks:
                try:
                    sink.send(event)
                except Exception:  # sinks promise not to raise; belt and braces
                    log.exception("alert sink failed")
        return events

    def _evaluate(self, now: float) -> list[AlertEvent]:
        lookback_from = now - self.settings.monitor_lookback_s
        trackers = self.alerts.trackers()
        changed: dict[str, Tracker] = {}
        carries: dict[str, _Carry] = {}
        cursors: dict[tuple[str, int], int] = {}
        pending: list[tuple[str, NewAlert | None, str]] = []  # (key, alert to open, event)
        for model, version in self._pairs(lookback_from):
            cursor = self.alerts.cursor(model, version)
            rows = self.store.received_after(model, version, cursor, lookback_from)
            if not rows:
                continue
            cursors[(model, version)] = max(r.rid for r in rows)
            profile = self.references.profile(model, version)
            validation = self.references.validation(model, version)
            touched: dict[str, _Carry] = {}
            for row, stats in zip(rows, _decode_all(rows, profile), strict=True):
                totals = row.totals()
                at = row.received_at if row.received_at is not None else now
                for kind in self.policy.scopes:
                    scope = scope_value(row, kind)
                    scope_key = f"{model}|{version}|{kind}|{scope}"
                    carry = touched.get(scope_key)
                    if carry is None:
                        carry = self._load_carry(scope_key, kind, scope, lookback_from)
                        touched[scope_key] = carry
                    carry.add(stats, totals, at, row.device)
            for scope_key, carry in touched.items():
                carries[scope_key] = carry
                stats = carry.stats(self.rule)
                if not self._ready(carry, stats):
                    continue
                report = None
                if profile is not None and stats is not None:
                    report = score_window(profile, stats, self.policy.thresholds)
                observation = Observation(
                    report, carry.totals, validation, tuple(carry.devices.values())
                )
                outcomes = evaluate(observation, self.policy)
                for rule, outcome in outcomes.items():
                    key = alert_key(rule, model, version, carry.kind, carry.scope)
                    before = changed.get(key, trackers.get(key, Tracker()))
                    after, event = step(before, outcome.signal, self.policy)
                    if after != before:
                        changed[key] = after
                    if event == FIRED:
                        alert = NewAlert(
                            key,
                            rule,
                            model,
                            version,
                            carry.kind,
                            carry.scope,
                            severity_of(rule),
                            outcome.summary or f"{rule} in {carry.kind} {carry.scope}",
                            {
                                "value": outcome.value,
                                "rows": 0 if report is None else report.n,
                                "windows": carry.totals.windows,
                                **dict(outcome.details),
                            },
                        )
                        pending.append((key, alert, FIRED))
                    elif event is not None:
                        pending.append((key, None, "signal cleared"))
                carry.clear()
        return self._commit(now, trackers, changed, carries, cursors, pending)

    def _commit(
        self,
        now: float,
        trackers: dict[str, Tracker],
        changed: dict[str, Tracker],
        carries: dict[str, _Carry],
        cursors: dict[tuple[str, int], int],
        pending: list[tuple[str, NewAlert | None, str]],
    ) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        last_data = self.alerts.last_data()
        for carry in carries.values():
            last_data[carry.key] = carry.last_data_at
        with self.telemetry.db.write() as conn:
            for key, alert, what in pending:
                if alert is not None:
                    record = self.alerts.open_alert(conn, alert, now)
                    if record is not None:
                        events.append(AlertEvent("fired", record, now))
                else:
                    record = self.alerts.resolve_alert(conn, key, now, what)
                    if record is not None:
                        events.append(AlertEvent("resolved", record, now))
            for key, record in self.alerts.open_alerts().items():
                scope_key = f"{record.model}|{record.version}|{record.scope_kind}|{record.scope}"
                seen = last_data.get(scope_key)
                if seen is not None and now - seen >= self.policy.stale_after_s:
                    resolved = self.alerts.resolve_alert(conn, key, now, "no data")
                    if resolved is not None:
                        events.append(AlertEvent("resolved", resolved, now))
                    changed[key] = Tracker()
            for key, tracker in changed.items():
                self.alerts.save_tracker(conn, key, tracker, now)
            for carry in carries.values():
                self.alerts.save_scope(conn, carry.key, carry.to_record())
            for (model, version), rid in cursors.items():
                self.alerts.save_cursor(conn, model, version, rid)
        return events

    def _pairs(self, since_received: float) -> list[tuple[str, int]]:
        with self.telemetry.db.read() as conn:
            rows = conn.execute(
                "SELECT DISTINCT model, version FROM fleet_records WHERE kind = 'window'"
                " AND received_at >= ? AND model IS NOT NULL",
                (since_received,),
            ).fetchall()
        return [(str(m), int(v)) for m, v in rows]

    def _load_carry(self, scope_key: str, kind: str, scope: str, lookback_from: float) -> _Carry:
        record = self.alerts.scope(scope_key)
        carry = _Carry(scope_key, kind, scope, WindowTotals(), None, record.last_data_at)
        fresh = record.since is not None and record.since >= lookback_from
        if fresh and record.totals is not None:
            saved = json.loads(record.totals)
            carry.totals = WindowTotals.from_dict(saved)
            carry.devices = _devices_from_json(saved.get("per_device"))
            carry.since = record.since
            carry.parts = _parts_from_record(record.stats, saved.get("per_device_stats"))
        return carry

    def _ready(self, carry: _Carry, stats: WindowStats | None) -> bool:
        if stats is not None:
            return stats.n >= self.policy.thresholds.min_n
        return carry.totals.requests >= self.policy.min_requests

    # -- background thread -----------------------------------------------------------
    def start(
        self,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        active: Callable[[], bool] = lambda: True,
        scope: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        """Run ``run_once`` every ``interval_s`` in a thread of its own (not the ingest one),
        each time ``active()`` says so: with several hubs on one store only the holder of
        the once-per-fleet work evaluates, so an alert and its webhook fire once; each round
        runs inside ``scope()`` (the lease fence: a round a paused hub finishes after another
        took over writes nothing and notifies no one)."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    if not active():
                        continue
                    with scope():
                        self.run_once(clock())
                except EdgefleetError as e:
                    log.error("alert evaluation failed: %s", e)
                except Exception:
                    log.exception("alert evaluation failed")

        self._thread = threading.Thread(target=loop, name="fleet-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None


def _decode_all(
    rows: Sequence[StoredStats], profile: ReferenceProfile | None
) -> list[WindowStats | None]:
    """Each row's statistics (decoded together), None where absent, undecodable or built
    for another profile."""
    if profile is None:
        return [None] * len(rows)
    decoded = decode_many([b"" if r.drift is None else bytes(r.drift) for r in rows])
    return [s if s is not None and s.profile_id == profile.profile_id else None for s in decoded]


def _parts_from_record(blob: bytes | None, per_device: Any) -> dict[str, WindowStats]:
    """A saved carry's per-device statistics (what does not decode is dropped: a carry is
    only the not-yet-scored remainder). A carry saved with one merged blob and no devices
    comes back as one part."""
    parts: dict[str, WindowStats] = {}
    if isinstance(per_device, dict):
        for device, encoded in per_device.items():
            try:
                parts[str(device)] = WindowStats.from_bytes(base64.b64decode(str(encoded)))
            except (DriftError, binascii.Error, ValueError):
                continue
    elif blob is not None:
        try:
            parts[""] = WindowStats.from_bytes(blob)
        except DriftError:
            pass
    return parts
