"""Fleet drift aggregation: stored windows merged by scope and time, then scored.

A query names a model (and version; the newest one with telemetry by default), an optional
breakdown (``group``, ``profile`` or ``device``) and a start time. Every stored window in
range (device rollups and raw windows) is decoded once and folded into the accumulator of
its scope and of its time bucket, per device: a device's windows merge exactly
(``WindowStats.merge_all``: counts add, moments combine by the parallel formula), and a
scope's devices are then combined by :func:`~edgefleet.core.drift.pooling.pool_devices` —
the exact merge too, unless one device holds more than its capped share of the scope's rows
(the evidence rule of :mod:`edgefleet.core.evidence`), so no device decides a scope's drift.
The fleet is the pool of all devices. Each scope is scored against the reference profile of
the model version (:func:`~edgefleet.core.drift.score_window`) and says how many devices'
statistics counted (``drift_devices``) and whether the cap bound (``drift_pooled``).

Invariants:

- Each stored window contributes once to its scope, once to its bucket and once to the
  fleet (the store returns every window once; see ``window_store``).
- Windows built for another reference profile are never merged (they are counted in
  ``profile_mismatch``); undecodable blobs are counted in ``undecodable``.
- Small scopes: when a scope holds fewer rows than the minimum for a verdict
  (``DriftThresholds.min_n``), older windows of that scope are merged in, newest first,
  until it qualifies or nothing older is stored; the result says how far back it reached
  (``extended_from_s``). The timeline likewise merges consecutive buckets until each point
  qualifies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.core.drift import DriftReport, DriftThresholds, ReferenceProfile, WindowStats
from edgefleet.core.drift import score_window as _score_window
from edgefleet.core.drift.pooling import contributing_devices, needs_pooling, pool_devices
from edgefleet.core.drift.wire_batch import decode_many
from edgefleet.core.errors import DriftError
from edgefleet.core.evidence import EvidenceRule
from edgefleet.hub.errors import HubNotFoundError
from edgefleet.hub.fleet.references import References
from edgefleet.hub.fleet.totals import WindowTotals
from edgefleet.hub.fleet.window_store import FleetWindowStore, StoredStats

BY_CHOICES = ("group", "profile", "device")
NO_NAME = "(none)"
_COLUMN = {"group": "grp", "profile": "profile", "device": "device"}
_COMPACT_AT = 64  # decoded windows held per accumulator before merging them down


@dataclass(frozen=True)
class DriftQuery:
    model: str
    version: int | None = None
    by: str | None = None
    since_s: float | None = None
    timeline: bool = True
    extend_small: bool = True

    def __post_init__(self) -> None:
        if self.by is not None and self.by not in BY_CHOICES:
            raise ValueError(f"by must be one of {BY_CHOICES}")


class _Accumulator:
    """Windows of one scope, per device, each device's merged down every ``_COMPACT_AT``
    to bound memory; :meth:`merged` pools the devices by the evidence rule."""

    def __init__(self, rule: EvidenceRule | None = None) -> None:
        self.rule = rule or EvidenceRule()
        self.parts: dict[str, list[WindowStats]] = {}
        self.totals = WindowTotals()
        self.devices: set[str] = set()
        self.profile_mismatch = 0
        self.undecodable = 0
        self.extended_from_s: float | None = None
        self._merged: WindowStats | None = None

    def add(self, row: StoredStats, stats: WindowStats | None, totals: WindowTotals) -> None:
        self.totals.add(totals)
        # A group rollup names its devices; a raw window or a device rollup is one device.
        self.devices |= totals.devices or {row.device}
        if stats is not None:
            self._keep(row.device, [stats])

    def _keep(self, device: str, stats: list[WindowStats]) -> None:
        self._merged = None
        parts = self.parts.setdefault(device, [])
        parts.extend(stats)
        if len(parts) >= _COMPACT_AT:
            self.parts[device] = [WindowStats.merge_all(parts)]

    def absorb(self, other: _Accumulator) -> None:
        self.totals.add(other.totals)
        self.devices |= other.devices
        self.profile_mismatch += other.profile_mismatch
        self.undecodable += other.undecodable
        for device, parts in other.parts.items():
            self._keep(device, parts)

    def merged(self) -> WindowStats | None:
        """Each device's windows merged exactly, the devices pooled by
        :func:`~edgefleet.core.drift.pooling.pool_devices` (exact unless one device holds
        more than its share of the rows)."""
        if self._merged is None and self.parts:
            for device, parts in self.parts.items():
                if len(parts) > 1:
                    self.parts[device] = [WindowStats.merge_all(parts)]
            self._merged = pool_devices([p[0] for p in self.parts.values()], self.rule)
        return self._merged

    def evidence(self) -> tuple[int, bool]:
        """Devices whose drift statistics count in the scope, and whether the cap bound
        (the scope pooled, not the exact merge)."""
        if self.merged() is None:
            return 0, False
        devices = [p[0] for p in self.parts.values()]
        return contributing_devices(devices, self.rule), needs_pooling(devices, self.rule)

    @property
    def n(self) -> int:
        merged = self.merged()
        return 0 if merged is None else merged.n


@dataclass
class ScopeResult:
    """One scope (the fleet, a group, a profile or a device) of a drift query."""

    name: str
    windows: int
    devices: int
    report: DriftReport | None
    totals: WindowTotals
    merged: WindowStats | None
    extended_from_s: float | None = None
    profile_mismatch: int = 0
    undecodable: int = 0
    drift_devices: int = 0  # devices whose drift statistics count (see pooling)
    drift_pooled: bool = False  # one device held more than its share: pooled, not merged

    @property
    def drifting(self) -> bool:
        """Some feature's verdict is ``drift``."""
        return self.report is not None and self.report.n_drifted > 0

    def drifted_features(self) -> list[str]:
        if self.report is None:
            return []
        return [f.name for f in self.report.features if f.verdict == "drift"]

    def to_dict(self, validation: Mapping[str, float]) -> dict[str, Any]:
        report = self.report
        return {
            "name": self.name,
            "windows": self.windows,
            "devices": self.devices,
            "drift_devices": self.drift_devices,
            "drift_pooled": self.drift_pooled,
            "rows": 0 if report is None else report.n,
            "start_s": self.totals.start_s,
            "end_s": self.totals.end_s,
            "extended_from_s": self.extended_from_s,
            "drifting": self.drifting,
            "drifted_features": self.drifted_features(),
            "dataset_drift": None if report is None else report.dataset_drift,
            "drift_share": None if report is None else report.drift_share,
            "features": {} if report is None else {f.name: f.to_dict() for f in report.features},
            "prediction": prediction_drift(report, self.totals),
            "data_quality": data_quality(report, self.totals),
            "performance": performance(self.totals, validation),
            "latency": {
                **self.totals.latency_summary(),
                "validation_p95_ms": validation.get("latency_p95_ms"),
            },
            "requests": self.totals.requests,
            "errors": dict(sorted(self.totals.errors.items())),
            "profile_mismatch": self.profile_mismatch,
            "undecodable": self.undecodable,
        }


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def data_quality(report: DriftReport | None, totals: WindowTotals) -> dict[str, Any]:
    """NaN, out-of-range, unseen-category, schema-violation and error rates."""
    nan = values = out_of_range = finite = unseen = categorical = 0
    per_feature: dict[str, dict[str, float | None]] = {}
    for f in report.features if report is not None else ():
        seen = f.n + f.nan + f.inf
        nan += f.nan + f.inf
        values += seen
        entry: dict[str, float | None] = {"nan_rate": _rate(f.nan + f.inf, seen)}
        if f.kind == "categorical":
            unseen += f.unseen
            categorical += f.n
            entry["unseen_rate"] = _rate(f.unseen, f.n)
        else:
            out_of_range += f.below_min + f.above_max
            finite += f.n
            entry["out_of_range_rate"] = _rate(f.below_min + f.above_max, f.n)
        per_feature[f.name] = entry
    return {
        "nan_rate": _rate(nan, values),
        "out_of_range_rate": _rate(out_of_range, finite),
        "unseen_category_rate": _rate(unseen, categorical),
        "schema_violation_rate": totals.schema_violation_rate,
        "schema_violations": totals.schema_violations,
        "error_rate": totals.error_rate,
        "features": per_feature,
    }


def prediction_drift(report: DriftReport | None, totals: WindowTotals) -> dict[str, Any]:
    score = None if report is None or report.prediction is None else report.prediction
    return {
        "score": None if score is None else score.to_dict(),
        "verdict": None if score is None else score.verdict,
        "counts": dict(sorted(totals.predictions.items())),
    }


def performance(totals: WindowTotals, validation: Mapping[str, float]) -> dict[str, Any] | None:
    """Metrics from returned labels, next to the bundle's validation accuracy."""
    if totals.confusion is None or totals.confusion.n == 0:
        return None
    m = totals.confusion.metrics()
    expected = validation.get("accuracy")
    accuracy = m["accuracy"]
    return {
        "labels": m["n"],
        "unknown_labels": m["unknown"],
        "accuracy": accuracy,
        "macro": m["macro"],
        "per_class": m["per_class"],
        "validation_accuracy": expected,
        "accuracy_drop": None if expected is None or accuracy is None else expected - accuracy,
        "conflicting_windows": totals.confusion_conflicts,
    }


@dataclass
class TimelinePoint:
    start_s: float
    end_s: float
    windows: int
    report: DriftReport | None

    def to_dict(self) -> dict[str, Any]:
        r = self.report
        return {
            "start_s": self.start_s,
            "end_s": self.end_s,
            "windows": self.windows,
            "rows": 0 if r is None else r.n,
            "drift_share": None if r is None else r.drift_share,
            "dataset_drift": None if r is None else r.dataset_drift,
            "features": {}
            if r is None
            else {
                f.name: {
                    "psi": f.psi,
                    "js": f.js,
                    "wasserstein": f.wasserstein,
                    "verdict": f.verdict,
                }
                for f in r.features
            },
        }


@dataclass
class FleetDriftResult:
    model: str
    version: int
    versions: list[int]
    by: str | None
    since_s: float | None
    until_s: float
    profile: ReferenceProfile | None
    validation: dict[str, float]
    fleet: ScopeResult
    groups: dict[str, ScopeResult] = field(default_factory=dict)
    timeline: list[TimelinePoint] = field(default_factory=list)

    def drifting_groups(self) -> list[str]:
        return sorted(name for name, g in self.groups.items() if g.drifting)

    def to_dict(self) -> dict[str, Any]:
        v = self.validation
        return {
            "model": self.model,
            "version": self.version,
            "versions": self.versions,
            "by": self.by,
            "since_s": self.since_s,
            "until_s": self.until_s,
            "profile_id": None if self.profile is None else self.profile.profile_id,
            "reference": self.profile is not None,
            "validation": dict(v),
            "thresholds": None
            if self.fleet.report is None
            else self.fleet.report.thresholds.to_dict(),
            "fleet": self.fleet.to_dict(v),
            "groups": {name: g.to_dict(v) for name, g in sorted(self.groups.items())},
            "drifting_groups": self.drifting_groups(),
            "timeline": [p.to_dict() for p in self.timeline],
        }


class FleetAggregator:
    def __init__(
        self,
        store: FleetWindowStore,
        references: References,
        thresholds: DriftThresholds | None = None,
        rule: EvidenceRule | None = None,
    ) -> None:
        self.store = store
        self.references = references
        self.thresholds = thresholds or DriftThresholds()
        self.rule = rule or EvidenceRule()

    def resolve_version(self, model: str, version: int | None) -> tuple[int, list[int]]:
        versions = self.store.versions(model)
        if not versions:
            raise HubNotFoundError(f"no telemetry stored for model {model!r}")
        if version is None:
            return versions[-1], versions
        if version not in versions:
            listed = ", ".join(str(v) for v in versions)
            raise HubNotFoundError(f"no telemetry for {model}:{version} (versions: {listed})")
        return version, versions

    def query(self, q: DriftQuery, now: float) -> FleetDriftResult:
        version, versions = self.resolve_version(q.model, q.version)
        profile = self.references.profile(q.model, version)
        # Device rollups, always: a scope's devices are pooled, not summed (see pooling).
        rows = self.store.stats(q.model, version, q.since_s, per_device=True)
        scopes: dict[str, _Accumulator] = {}
        buckets: dict[int, _Accumulator] = {}
        for row, stats, totals in self._decoded(rows, profile, scopes, q.by, batch=True):
            key = _scope_name(row, q.by)
            scopes.setdefault(key, _Accumulator(self.rule)).add(row, stats, totals)
            if q.timeline:
                buckets.setdefault(row.bucket_s, _Accumulator(self.rule)).add(row, stats, totals)
        if q.extend_small and q.since_s is not None and profile is not None:
            for name, acc in scopes.items():
                if acc.n < self.thresholds.min_n:
                    self._extend(q, version, profile, name, acc)
        fleet = _Accumulator(self.rule)
        for acc in scopes.values():
            fleet.absorb(acc)
        extended = [a.extended_from_s for a in scopes.values() if a.extended_from_s is not None]
        fleet.extended_from_s = min(extended, default=None)
        fleet_result = self._result("fleet", fleet, profile)
        groups = {}
        if q.by is not None:
            groups = {name: self._result(name, acc, profile) for name, acc in scopes.items()}
        timeline = self._timeline(buckets, profile) if q.timeline else []
        return FleetDriftResult(
            model=q.model,
            version=version,
            versions=versions,
            by=q.by,
            since_s=q.since_s,
            until_s=now,
            profile=profile,
            validation=self.references.validation(q.model, version),
            fleet=fleet_result,
            groups=groups,
            timeline=timeline,
        )

    def _decoded(
        self,
        rows: Iterable[StoredStats],
        profile: ReferenceProfile | None,
        scopes: dict[str, _Accumulator],
        by: str | None,
        *,
        batch: bool = False,
    ) -> Iterable[tuple[StoredStats, WindowStats | None, WindowTotals]]:
        """Each row with its statistics; ``batch`` decodes them all at once (``decode_many``,
        several times cheaper per window), else one by one as they are consumed."""
        decoded: list[WindowStats | None] | None = None
        if batch and profile is not None:
            rows = list(rows)
            decoded = decode_many([bytes(r.drift or b"") for r in rows])
        for i, row in enumerate(rows):
            stats: WindowStats | None = None
            if row.drift is not None and profile is not None:
                if decoded is not None:
                    stats = decoded[i]
                else:
                    try:
                        stats = WindowStats.from_bytes(bytes(row.drift))
                    except DriftError:
                        stats = None
                if stats is None:
                    scopes.setdefault(
                        _scope_name(row, by), _Accumulator(self.rule)
                    ).undecodable += 1
                elif stats.profile_id != profile.profile_id:
                    scopes.setdefault(
                        _scope_name(row, by), _Accumulator(self.rule)
                    ).profile_mismatch += 1
                    stats = None
            yield row, stats, row.totals()

    def _extend(
        self, q: DriftQuery, version: int, profile: ReferenceProfile, name: str, acc: _Accumulator
    ) -> None:
        assert q.since_s is not None
        start = self.store.settings.bucket_of(q.since_s)
        if q.by is None:
            older = self._older_all(q.model, version, start)
        else:
            value = "" if name == NO_NAME and q.by != "device" else name
            older = self.store.stats_before(
                q.model, version, start, _COLUMN[q.by], value, per_device=True
            )
        reached: float | None = None
        for row, stats, totals in self._decoded(older, profile, {}, q.by):
            if acc.n >= self.thresholds.min_n:
                break
            acc.add(row, stats, totals)
            reached = row.bucket_s
        if reached is not None:
            acc.extended_from_s = float(reached)

    def _older_all(self, model: str, version: int, before: int) -> list[StoredStats]:
        rows = [r for r in self.store.stats(model, version, per_device=True) if r.bucket_s < before]
        return sorted(rows, key=lambda r: r.bucket_s, reverse=True)

    def _result(
        self,
        name: str,
        acc: _Accumulator,
        profile: ReferenceProfile | None,
    ) -> ScopeResult:
        merged = acc.merged()
        report = None
        if profile is not None and merged is not None:
            report = _score_window(profile, merged, self.thresholds)
        drift_devices, drift_pooled = acc.evidence()
        return ScopeResult(
            name=name,
            windows=acc.totals.windows,
            devices=len(acc.devices),
            report=report,
            drift_devices=drift_devices,
            drift_pooled=drift_pooled,
            totals=acc.totals,
            merged=merged,
            extended_from_s=acc.extended_from_s,
            profile_mismatch=acc.profile_mismatch,
            undecodable=acc.undecodable,
        )

    def _timeline(
        self, buckets: Mapping[int, _Accumulator], profile: ReferenceProfile | None
    ) -> list[TimelinePoint]:
        points: list[TimelinePoint] = []
        pending: _Accumulator | None = None
        start: int | None = None
        ordered: Sequence[int] = sorted(buckets)
        for i, bucket in enumerate(ordered):
            if pending is None:
                pending, start = _Accumulator(self.rule), bucket
            pending.absorb(buckets[bucket])
            last = i == len(ordered) - 1
            if pending.n >= self.thresholds.min_n or last:
                merged = pending.merged()
                report = None
                if profile is not None and merged is not None:
                    report = _score_window(profile, merged, self.thresholds)
                end = pending.totals.end_s
                if end is None:
                    end = float(bucket + self.store.settings.bucket_s)
                assert start is not None
                points.append(TimelinePoint(float(start), end, pending.totals.windows, report))
                pending = None
        return points


def _scope_name(row: StoredStats, by: str | None) -> str:
    if by is None:
        return "fleet"
    if by == "group":
        return row.group or NO_NAME
    if by == "profile":
        return row.profile or NO_NAME
    return row.device
