"""Drift for the console, kept current from new windows instead of rescoring the fleet.

A :class:`DriftBoard` holds, per model version, one digest per device: the exact merge
(``WindowStats.merge_all``) of every window the fleet database holds for it, its
operational totals, and its scored verdict. It is built once from the device rollups and
the windows not yet rolled up (one read snapshot, which also fixes the highest record id
read), and from then on only the windows received after that id are read, decoded and
merged into their devices' digests. Only the devices that received windows are rescored,
and only the groups and profiles they belong to (and the fleet) are pooled and scored
again; a request reads the latest :class:`DriftSnapshot` and never waits for that work.

Scopes are pooled from the device digests with
:func:`~edgefleet.core.drift.pooling.pool_devices`, exactly as
:class:`~edgefleet.hub.fleet.aggregate.FleetAggregator` pools a query's devices, so a scope's
verdict is the one ``hub drift`` gives for the whole stored history. The timeline (a
trend, not a verdict) merges each hour's group rollups exactly.

Invariants:

- every window counts once: the build reads rollups and unrolled windows in the snapshot
  that gave the record id watermark; updates read only records above it;
- a snapshot is never changed once published (updates copy the maps they change), so a
  request may read one while the next is built;
- retention and coarsening move or drop whole stored rows, which new windows do not
  announce: the board is rebuilt from the database every ``rebuild_s`` (in the background;
  the last snapshot keeps being served meanwhile);
- a device counts in the group and profile of its latest window.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from edgefleet.core.drift import DriftThresholds, ReferenceProfile, WindowStats
from edgefleet.core.drift import score_window as _score_window
from edgefleet.core.drift.pooling import contributing_devices, needs_pooling, pool_devices
from edgefleet.core.drift.wire_batch import decode_many
from edgefleet.core.evidence import EvidenceRule
from edgefleet.hub.console import drift as dr
from edgefleet.hub.console.fleet_access import FleetView
from edgefleet.hub.console.fleet_index import models_and_versions
from edgefleet.hub.errors import HubNotFoundError
from edgefleet.hub.fleet.aggregate import NO_NAME, ScopeResult, TimelinePoint
from edgefleet.hub.fleet.totals import WindowTotals
from edgefleet.hub.fleet.window_store import StoredStats

log = logging.getLogger(__name__)

SCOPES = ("group", "profile", "device")
# Windows decoded at a time while a board is built: decoding holds the interpreter lock,
# and requests answered meanwhile wait for a chunk (20,000 windows: over a second).
_CHUNK = 2_000
_Key = tuple[str, int, float | None]  # model, version, window_s
REBUILD_S = 900.0


@dataclass
class DeviceDigest:
    """Everything stored for one device of one model version, merged."""

    group: str
    profile: str
    totals: WindowTotals = field(default_factory=WindowTotals)
    merged: WindowStats | None = None
    profile_mismatch: int = 0
    undecodable: int = 0


@dataclass(frozen=True)
class DriftSnapshot:
    """One model version's drift as of ``as_of``: what a request reads."""

    model: str
    version: int
    since: float | None  # windows from this bucket on (None: everything stored)
    validation: Mapping[str, float]
    reference: bool
    thresholds: Mapping[str, Any] | None
    fleet: Mapping[str, Any]
    histograms: Mapping[str, Any]
    timeline: list[dict[str, Any]]
    #: per scope kind: names with drifting ones first, then by name (the heat map's order)
    order: Mapping[str, list[str]]
    #: per scope kind: the drifting ones, most drifted features first (the headline's order)
    ranked: Mapping[str, list[str]]
    #: per scope kind: name -> the scope's result (answers are made from it on request,
    #: a page at a time: 10,000 devices' answers would be millions of objects to keep)
    results: Mapping[str, Mapping[str, ScopeResult]]
    as_of: float
    built_at: float
    windows: int

    def drifting(self, kind: str, limit: int) -> dict[str, Mapping[str, Any]]:
        """The ``limit`` most drifted scopes of ``kind`` (``ranked``) with their verdicts."""
        return {name: verdicts(self.results[kind][name]) for name in self.ranked[kind][:limit]}

    def page(self, kind: str, offset: int, limit: int) -> dict[str, Mapping[str, Any]]:
        """The verdicts of ``limit`` scopes from ``offset`` in the heat map's order."""
        names = self.order[kind][offset : offset + limit]
        return {name: verdicts(self.results[kind][name]) for name in names}

    def selected(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.results[kind].get(name)
        return None if result is None else result.to_dict(self.validation)


def verdicts(result: ScopeResult) -> dict[str, Any]:
    """The part of a scope's answer the heat map and the headline read."""
    report = result.report
    return {
        "drifting": result.drifting,
        "drifted_features": result.drifted_features(),
        "dataset_drift": None if report is None else report.dataset_drift,
        "drift_share": None if report is None else report.drift_share,
        "devices": result.devices,
        "rows": 0 if report is None else report.n,
        "features": {}
        if report is None
        else {f.name: {"psi": f.psi, "verdict": f.verdict} for f in report.features},
    }


def _order(results: Mapping[str, ScopeResult]) -> list[str]:
    return sorted(results, key=lambda name: (not results[name].drifting, name))


@dataclass
class _Bucket:
    """One time bucket of the timeline: its windows merged exactly."""

    windows: int = 0
    end_s: float | None = None
    exact: WindowStats | None = None


class _Scorer:
    """Windows -> device digests, each scope's exact merge and the timeline's buckets;
    digests -> scope results. Pure: no I/O."""

    def __init__(
        self,
        profile: ReferenceProfile | None,
        thresholds: DriftThresholds,
        rule: EvidenceRule,
        bucket_s: int,
    ) -> None:
        self.profile, self.thresholds, self.rule = profile, thresholds, rule
        self.bucket_s = bucket_s
        # (kind, name) -> the exact merge of the scope's windows ("fleet", "fleet" too):
        # a scope's devices are pooled from their digests only when one device holds more
        # than its share (see pooling); else this merge is the scope's window.
        self.exact: dict[tuple[str, str], WindowStats] = {}
        self.buckets: dict[int, _Bucket] = {}
        self._points: dict[tuple[tuple[int, int], ...], dict[str, Any]] = {}
        self._bucket_rev: dict[int, int] = {}

    def add(
        self, digests: dict[str, DeviceDigest], rows: list[StoredStats]
    ) -> tuple[set[str], set[tuple[str, str]]]:
        """Merge ``rows`` into their devices' digests, their scopes' exact merges and their
        buckets; returns the devices touched and the scopes to merge again from their
        members' digests (a touched device left them: it changed group or profile)."""
        touched: set[str] = set()
        left: set[tuple[str, str]] = set()
        # A device's rows together: its windows merge once per chunk; decoded a chunk at
        # a time, so a whole fleet's windows are never held decoded at once.
        rows = sorted(rows, key=lambda r: (r.device, r.bucket_s))
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            self._add_chunk(digests, chunk, touched, left)
            time.sleep(0)  # let a waiting request thread run between chunks
        for key in left:
            self.exact.pop(key, None)
        return touched, left

    def _add_chunk(
        self,
        digests: dict[str, DeviceDigest],
        rows: list[StoredStats],
        touched: set[str],
        left: set[tuple[str, str]],
    ) -> None:
        decoded: list[WindowStats | None] = [None] * len(rows)
        if self.profile is not None:
            decoded = decode_many([bytes(r.drift or b"") for r in rows])
        fresh: dict[str, list[WindowStats]] = {}
        scopes: dict[tuple[str, str], list[WindowStats]] = {}
        buckets: dict[int, list[WindowStats]] = {}
        for row, stats in zip(rows, decoded, strict=True):
            digest = digests.get(row.device)
            if digest is None:
                digest = digests[row.device] = DeviceDigest(row.group, row.profile)
            elif (digest.group, digest.profile) != (row.group, row.profile):
                # Its earlier windows are in the old scopes' merges, not the new ones'.
                left.add(("group", digest.group or NO_NAME))
                left.add(("profile", digest.profile or NO_NAME))
                left.add(("group", row.group or NO_NAME))
                left.add(("profile", row.profile or NO_NAME))
                digest.group, digest.profile = row.group, row.profile
            totals = row.totals()
            if row.device not in touched:
                # A published device result holds this object: add to a copy.
                digest.totals = _copy(digest.totals)
            digest.totals.add(totals)
            touched.add(row.device)
            parts = fresh.setdefault(row.device, [])
            bucket = self.buckets.setdefault(row.bucket_s, _Bucket())
            bucket.windows += totals.windows
            if totals.end_s is not None:
                bucket.end_s = max(bucket.end_s or totals.end_s, totals.end_s)
            self._bucket_rev[row.bucket_s] = self._bucket_rev.get(row.bucket_s, 0) + 1
            if row.drift is None or self.profile is None:
                continue
            if stats is None:
                digest.undecodable += 1
            elif stats.profile_id != self.profile.profile_id:
                digest.profile_mismatch += 1
            else:
                parts.append(stats)
                for key in (
                    ("group", row.group or NO_NAME),
                    ("profile", row.profile or NO_NAME),
                    ("fleet", "fleet"),
                ):
                    scopes.setdefault(key, []).append(stats)
                buckets.setdefault(row.bucket_s, []).append(stats)
        for device, parts in fresh.items():
            digest = digests[device]
            digest.merged = _merged(digest.merged, parts)
        for key, parts in scopes.items():
            merged = _merged(self.exact.get(key), parts)
            if merged is not None:
                self.exact[key] = merged
        for b, parts in buckets.items():
            self.buckets[b].exact = _merged(self.buckets[b].exact, parts)

    def score(self, kind: str, name: str, members: list[DeviceDigest]) -> ScopeResult:
        """One scope from its members' digests: their exact merge unless one device holds
        more than its share (then pooled), scored against the reference."""
        if len(members) == 1:
            totals = members[0].totals  # never changed in place (see ``add``)
        else:
            totals = WindowTotals()
            for d in members:
                totals.add(d.totals)
        parts = [d.merged for d in members if d.merged is not None]
        pooled = bool(parts) and needs_pooling(parts, self.rule)
        merged: WindowStats | None = None
        if len(parts) == 1:
            merged = parts[0]
        elif pooled:
            merged = pool_devices(parts, self.rule)
        elif parts:
            merged = self.exact.get((kind, name))
            if merged is None:  # a member moved here or away: merge the members again
                merged = self.exact[(kind, name)] = WindowStats.merge_all(parts)
        report = None
        if self.profile is not None and merged is not None:
            report = _score_window(self.profile, merged, self.thresholds)
        return ScopeResult(
            name=name,
            windows=totals.windows,
            devices=len(members),
            report=report,
            totals=totals,
            merged=merged,
            profile_mismatch=sum(d.profile_mismatch for d in members),
            undecodable=sum(d.undecodable for d in members),
            drift_devices=contributing_devices(parts, self.rule) if parts else 0,
            drift_pooled=pooled,
        )

    def timeline(self) -> list[dict[str, Any]]:
        """Consecutive buckets merged until each point has enough rows for a verdict (as
        the aggregator's timeline); a point is scored again only when a bucket in it got
        new windows."""
        points: list[dict[str, Any]] = []
        used: dict[tuple[tuple[int, int], ...], dict[str, Any]] = {}
        pending: list[int] = []
        ordered = sorted(self.buckets)
        for i, b in enumerate(ordered):
            pending.append(b)
            parts = [s for s in (self.buckets[p].exact for p in pending) if s is not None]
            n = sum(s.n for s in parts)
            if n >= self.thresholds.min_n or i == len(ordered) - 1:
                key = tuple((p, self._bucket_rev.get(p, 0)) for p in pending)
                point = self._points.get(key)
                if point is None:
                    point = self._points[key] = self._point(pending, parts)
                used[key] = point
                points.append(point)
                pending = []
        self._points = used  # points of older bucket contents are not asked for again
        return points

    def _point(self, buckets: list[int], parts: list[WindowStats]) -> dict[str, Any]:
        merged = parts[0] if len(parts) == 1 else (WindowStats.merge_all(parts) if parts else None)
        report = None
        if self.profile is not None and merged is not None:
            report = _score_window(self.profile, merged, self.thresholds)
        last = self.buckets[buckets[-1]]
        end = last.end_s if last.end_s is not None else float(buckets[-1] + self.bucket_s)
        windows = sum(self.buckets[b].windows for b in buckets)
        return TimelinePoint(float(buckets[0]), end, windows, report).to_dict()


def _ranked(results: Mapping[str, ScopeResult]) -> list[str]:
    drifting = {n: len(r.drifted_features()) for n, r in results.items() if r.drifting}
    return sorted(drifting, key=lambda n: (-drifting[n], n))


def _copy(totals: WindowTotals) -> WindowTotals:
    out = WindowTotals()
    out.add(totals)
    return out


def _merged(old: WindowStats | None, new: list[WindowStats]) -> WindowStats | None:
    parts = ([old] if old is not None else []) + new
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else WindowStats.merge_all(parts)


def _scope_key(kind: str, device: str, digest: DeviceDigest) -> str:
    if kind == "device":
        return device
    value = digest.group if kind == "group" else digest.profile
    return value or NO_NAME


@dataclass
class _Board:
    """The mutable state behind one model version's snapshots (one writer at a time)."""

    model: str
    version: int
    since: float | None
    scorer: _Scorer
    validation: Mapping[str, float]
    digests: dict[str, DeviceDigest]
    rid: int
    built_at: float
    snapshot: DriftSnapshot | None = None


class DriftBoard:
    """Per model version, the latest :class:`DriftSnapshot`, refreshed in the background.

    ``background=False`` (commands and tests) brings the board up to date inside each
    call instead, so an answer always reflects the database as it is.
    """

    def __init__(
        self,
        view: Callable[[], FleetView],
        clock: Callable[[], float] = time.time,
        *,
        background: bool = True,
        refresh_s: float = 5.0,
        rebuild_s: float = REBUILD_S,
        rule: EvidenceRule | None = None,
        max_boards: int = 4,
    ) -> None:
        self._view, self.clock = view, clock
        self.max_boards = max_boards
        self._used: dict[_Key, float] = {}
        self.background, self.refresh_s, self.rebuild_s = background, refresh_s, rebuild_s
        self.rule = rule or EvidenceRule()
        self._boards: dict[_Key, _Board] = {}
        self._lock = threading.Lock()
        self._working: dict[_Key, threading.Thread] = {}
        self._checked: dict[_Key, float] = {}
        self._ready: dict[_Key, threading.Event] = {}

    # -- what requests call ------------------------------------------------------------

    def models(self) -> dict[str, list[int]]:
        """Models with telemetry and their versions (index lookups: milliseconds)."""
        view = self._view()
        with view.db.read() as conn:
            return models_and_versions(conn, view.db.buckets())

    def resolve(self, model: str, version: int | None) -> tuple[int, list[int]]:
        versions = self.models().get(model)
        if not versions:
            raise HubNotFoundError(f"no telemetry stored for model {model!r}")
        if version is None:
            return versions[-1], versions
        if version not in versions:
            listed = ", ".join(str(v) for v in versions)
            raise HubNotFoundError(f"no telemetry for {model}:{version} (versions: {listed})")
        return version, versions

    def snapshot(
        self, model: str, version: int, window_s: float | None, wait_s: float = 0.0
    ) -> DriftSnapshot | None:
        """The latest snapshot of the windows of the last ``window_s`` seconds (from the
        start of that hour; None: everything stored). With ``background`` an update is
        started behind when the last check is older than ``refresh_s``, and the call that
        starts the first build waits at most ``wait_s`` for it: when a new hour
        moves the start, the snapshot of the previous start is the answer until the board
        is rebuilt (its ``since`` says so). None: nothing built yet."""
        key = (model, version, window_s)
        if not self.background:
            self._work(key)
            return self._boards[key].snapshot
        with self._lock:
            board = self._boards.get(key)
            due = self.clock() - self._checked.get(key, float("-inf")) >= self.refresh_s
            ready = self._ready.setdefault(key, threading.Event())
            started = due and key not in self._working
            if started:
                self._checked[key] = self.clock()
                thread = threading.Thread(
                    target=self._work_behind, args=(key,), name="drift-board", daemon=True
                )
                self._working[key] = thread
                thread.start()
            self._used[key] = self.clock()
            # Boards nobody asked for lately go (each holds a digest per device).
            for old in sorted(self._used, key=self._used.__getitem__)[: -self.max_boards]:
                for held in (self._boards, self._used, self._checked, self._ready):
                    held.pop(old, None)
        if (board is None or board.snapshot is None) and started:
            # Only the request that started the build waits (a small fleet's board is
            # there by then); the ones after it answer at once.
            ready.wait(wait_s)
            board = self._boards.get(key)
        return None if board is None else board.snapshot

    def invalidate(self) -> None:
        """Check the database on the next request (its answer still the last snapshot)."""
        with self._lock:
            self._checked.clear()

    def wait_idle(self, timeout_s: float) -> bool:
        with self._lock:
            threads = list(self._working.values())
        for thread in threads:
            thread.join(timeout_s)
        return not any(t.is_alive() for t in threads)

    # -- the work ----------------------------------------------------------------------

    def _work_behind(self, key: _Key) -> None:
        try:
            self._work(key)
            # A board of 10,000 devices is millions of long-lived objects: left to the
            # cyclic collector, every full collection walks them all (a second's pause of
            # whatever request triggers it). They are freed by reference counting when a
            # newer snapshot replaces them.
            gc.freeze()
        except Exception:  # the last snapshot stays; the next request tries again
            log.exception("updating the drift board of %s:%s failed", *key)
        finally:
            with self._lock:
                self._working.pop(key, None)
                self._ready.setdefault(key, threading.Event()).set()

    def _work(self, key: _Key) -> None:
        board = self._boards.get(key)
        now = self.clock()
        model, version, window_s = key
        since = None if window_s is None else float(int((now - window_s) // 3600) * 3600)
        if board is None or board.since != since or now - board.built_at >= self.rebuild_s:
            built = self._build(model, version, since, now)
            with self._lock:
                self._boards[key] = built
        else:
            self._update(board, now)

    def _build(self, model: str, version: int, since: float | None, now: float) -> _Board:
        view = self._view()
        with view.db.read():
            rid = view.store.max_rid()
            rows = view.store.stats(model, version, since, per_device=True)
        scorer = _Scorer(
            view.references.profile(model, version),
            view.thresholds,
            self.rule,
            view.store.settings.bucket_s,
        )
        validation = view.references.validation(model, version)
        board = _Board(model, version, since, scorer, validation, {}, rid, now)
        touched, _left = scorer.add(board.digests, rows)
        board.snapshot = self._publish(board, None, touched, set(), now)
        return board

    def _update(self, board: _Board, now: float) -> None:
        view = self._view()
        with view.db.read():
            top = view.store.max_rid()
            first = -(2**62) if board.since is None else view.store.settings.bucket_of(board.since)
            rows = [
                r
                for r in view.store.received_after(board.model, board.version, board.rid, 0.0)
                if r.rid <= top and r.bucket_s >= first
            ]
        board.rid = max(board.rid, top)
        if not rows:
            assert board.snapshot is not None
            board.snapshot = replace(board.snapshot, as_of=now)
            return
        touched, left = board.scorer.add(board.digests, rows)
        board.snapshot = self._publish(board, board.snapshot, touched, left, now)

    def _publish(
        self,
        board: _Board,
        last: DriftSnapshot | None,
        touched: set[str],
        left: set[tuple[str, str]],
        now: float,
    ) -> DriftSnapshot:
        """A new snapshot: the touched devices and their groups and profiles rescored,
        everything else taken over from ``last``."""
        scorer, digests = board.scorer, board.digests
        members: dict[str, dict[str, list[DeviceDigest]]] = {"group": {}, "profile": {}}
        for device, digest in digests.items():
            for kind in ("group", "profile"):
                members[kind].setdefault(_scope_key(kind, device, digest), []).append(digest)
        results: dict[str, dict[str, ScopeResult]] = {}
        for kind in SCOPES:
            results[kind] = dict(last.results[kind]) if last is not None else {}
            if kind == "device":
                stale = [n for n in results[kind] if n not in digests]
                todo = [(d, [digests[d]]) for d in touched]
            else:
                # A touched device may have moved: its old scope is rescored too.
                names = {_scope_key(kind, d, digests[d]) for d in touched}
                names |= {n for k, n in left if k == kind and n in members[kind]}
                stale = [n for n in results[kind] if n not in members[kind]]
                todo = [(n, members[kind][n]) for n in sorted(names)]
            for name in stale:
                results[kind].pop(name, None)
            for name, group in todo:
                results[kind][name] = scorer.score(kind, name, group)
        fleet = scorer.score("fleet", "fleet", list(digests.values()))
        return DriftSnapshot(
            model=board.model,
            version=board.version,
            since=board.since,
            validation=board.validation,
            reference=scorer.profile is not None,
            thresholds=None if fleet.report is None else fleet.report.thresholds.to_dict(),
            fleet=fleet.to_dict(board.validation),
            histograms=dr.histograms(scorer.profile, fleet.merged),
            timeline=scorer.timeline(),
            order={kind: _order(results[kind]) for kind in SCOPES},
            ranked={kind: _ranked(results[kind]) for kind in SCOPES},
            results=results,
            as_of=now,
            built_at=board.built_at,
            windows=fleet.windows,
        )
