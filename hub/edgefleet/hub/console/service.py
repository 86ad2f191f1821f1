"""The fleet console: one service layer for the hub's CLI commands, the API and the dashboard.

:class:`FleetConsole` answers every question the operator asks (devices, groups, bundles,
rollouts with why they wait, drift, alerts) and carries out every action (rollout create,
pause, resume, abort, rollback; alert acknowledgement; device re-issue, revoke, remove) on
the hub store through the rollout engine and the fleet modules, so a rule holds the same way
whoever asks and an error is the same error (``HubUsageError`` -> exit 2 / HTTP 400,
``HubNotFoundError`` -> exit 2 / HTTP 404, ``RolloutStateError`` -> exit 2 / HTTP 409).

It keeps no state of its own besides short-lived caches of device rows and drift results
(:mod:`~edgefleet.hub.console.answer_cache`; off unless asked for, as the CLI has it), so a
dashboard polling a 10,000-device fleet does not rescan it every few seconds; any number
of processes may run one against the same store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgefleet.core.errors import ProfileError
from edgefleet.core.profiles import load_profile
from edgefleet.hub.bundles import PublishedBundleStore
from edgefleet.hub.config import HubConfig
from edgefleet.hub.console import devices as dv
from edgefleet.hub.console import drift as dr
from edgefleet.hub.console import lifecycle
from edgefleet.hub.console.access_store import AccessStore
from edgefleet.hub.console.answer_cache import AnswerCache
from edgefleet.hub.console.drift_board import DriftBoard, DriftSnapshot
from edgefleet.hub.console.fleet_access import FleetView, open_view
from edgefleet.hub.console.rollouts import explain_waiting, rollout_headline
from edgefleet.hub.enrollment import DEFAULT_STATE_DIR, enroll_device, publisher_trust
from edgefleet.hub.errors import HubNotFoundError, HubUsageError
from edgefleet.hub.fleet.aggregate import DriftQuery, FleetAggregator
from edgefleet.hub.fleet.alert_store import AlertStore
from edgefleet.hub.fleet.database import fleet_database_exists
from edgefleet.hub.fleet.settings import fleet_location
from edgefleet.hub.rollout.engine import RolloutEngine, summary
from edgefleet.hub.rollout.machine import RolloutState
from edgefleet.hub.rollout.plan import DEFAULT_PHASES
from edgefleet.hub.store import DirectiveHead, HubStore
from edgefleet.hub.store.rows import to_json

ROLLOUT_ACTIONS = ("pause", "resume", "abort", "rollback")
DRIFT_SCOPES = ("fleet", "group", "profile", "device")
MAX_HEATMAP_ROWS = 200


@lru_cache(maxsize=64)
def _window_s(profile: str) -> float | None:
    try:
        return float(load_profile(profile).window_s)
    except (ProfileError, OSError, ValueError):
        return None


class FleetConsole:
    def __init__(
        self,
        config: HubConfig,
        store: HubStore,
        access: AccessStore | None = None,
        *,
        clock: Callable[[], float] = time.time,
        cache_s: float = 0.0,
        drift_cache_s: float = 0.0,
        stale_factor: float = 0.0,
        fleet_db: Path | str | None = None,
        drift_wait_s: float = 1.0,
    ) -> None:
        self.config, self.store, self.access, self.clock = config, store, access, clock
        self.engine = RolloutEngine(store)
        self._cache = AnswerCache(cache_s, clock, stale_s=cache_s * stale_factor)
        # Drift moves with telemetry windows (minutes apart) and a per-device breakdown of a
        # large fleet takes long to score: it is kept longer than the device rows.
        self._drift_cache = AnswerCache(drift_cache_s, clock, stale_s=drift_cache_s * stale_factor)
        self._fleet_db = fleet_db or fleet_location(config.store.location)
        self._view: FleetView | None = None
        self._view_lock = threading.Lock()
        # With answers kept (the API), drift comes from a board updated behind the requests;
        # without (commands, tests), the board is brought up to date inside each call.
        self._board = DriftBoard(self._fleet, clock, background=drift_cache_s > 0)
        self.drift_wait_s = drift_wait_s

    @property
    def fleet_db(self) -> Path | str:
        """Where this console reads the fleet tables (windows, rollups, alerts)."""
        return self._fleet_db

    def clear_caches(self) -> None:
        """Drop every kept answer; the drift board checks the database on the next
        request (it is not an answer: it mirrors the database, see ``drift_board``)."""
        self._cache.clear()
        self._drift_cache.clear()
        self._board.invalidate()

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the fleet database once no background computation uses it; one still
        running after ``timeout_s`` keeps it open (the process is ending: closing a
        connection under a running query could crash it)."""
        idle = (
            self._cache.wait_idle(timeout_s)
            and self._drift_cache.wait_idle(timeout_s)
            and self._board.wait_idle(timeout_s)
        )
        if self._view is not None and idle:
            self._view.db.close()
            self._view = None

    # -- devices -------------------------------------------------------------------------

    def _device_rows(self) -> list[dict[str, Any]]:
        def compute() -> list[dict[str, Any]]:
            assignments = self.store.all_assignments()
            heads = self.store.directive_heads()
            return [
                dv.device_summary(d, assignments.get(d.device_id, {}), heads.get(d.device_id))
                for d in self.store.list_devices()
            ]

        rows: list[dict[str, Any]] = self._cache.get("devices", compute)
        return rows

    def device_rows(self, f: dv.DeviceFilter) -> list[dict[str, Any]]:
        """Every device matching ``f``, in id order (``hub devices``)."""
        return [r for r in self._device_rows() if dv.matches(r, f)]

    def devices(self, f: dv.DeviceFilter, p: dv.PageRequest) -> dict[str, Any]:
        """One page of the devices matching ``f`` (the API's listing)."""
        if f.state is not None or f.model is not None:
            # Both filter on the device's state report against its assignments: every row.
            return {**dv.page(self.device_rows(f), p), "now": self.clock()}
        records, total = self.store.device_page(
            group=f.group,
            profile=f.profile,
            online=f.online,
            search=f.search,
            limit=p.limit,
            offset=p.offset,
        )
        ids = [d.device_id for d in records]
        assignments = self.store.assignments_of(ids)
        heads = self.store.directive_heads_of(ids)
        items = [
            dv.device_summary(d, assignments.get(d.device_id, {}), heads.get(d.device_id))
            for d in records
        ]
        return {
            "items": items,
            "total": total,
            "limit": p.limit,
            "offset": p.offset,
            "now": self.clock(),
        }

    def _device_overview(self) -> dict[str, Any]:
        """Totals, states, refusing devices and groups from counts, not from every row:
        devices without assignments come grouped by (group, presence, state report)."""

        def compute() -> dict[str, Any]:
            tallies = [
                (dv.tally_row(t.group, t.online, t.state), t.devices)
                for t in self.store.device_tallies()
            ]
            assignments = self.store.all_assignments()
            tallies += [
                (dv.device_summary(d, assignments.get(d.device_id, {}), None), 1)
                for d in self.store.assigned_devices()
            ]
            states: dict[str, int] = {}
            for row, n in tallies:
                states[row["state"]] = states.get(row["state"], 0) + n
            total = sum(n for _row, n in tallies)
            online = sum(n for row, n in tallies if row["online"])
            refusing = [
                device_id
                for device_id, state in self.store.devices_whose_state_mentions(_REFUSAL_MARK)
                if dv.refusal(state)
            ][:20]
            return {
                "devices": {"total": total, "online": online, "offline": total - online},
                "states": states,
                "refusing": refusing,
                "groups": dv.tally_summaries(tallies),
            }

        answer: dict[str, Any] = self._cache.get("overview", compute)
        return answer

    def device(self, device_id: str) -> dict[str, Any]:
        """One device: summary, state document, deployment history in every rollout."""
        d = self.store.get_device(device_id)
        if d is None:
            raise HubNotFoundError(f"no such device {device_id}")
        directive = self.store.latest_directive(device_id)
        head = None
        if directive is not None:
            head = DirectiveHead(
                directive.seq, directive.expires_at, directive.desired_rev, directive.published_at
            )
        desired = self.store.get_assignments(device_id)
        out = dv.device_summary(d, desired, head)
        history = []
        for rollout in self.store.list_rollouts():
            if device_id not in rollout.plan.devices:
                continue
            for row in self.store.list_rollout_devices(rollout.rollout_id):
                if row.device_id != device_id:
                    continue
                history.append(
                    {
                        "rollout": rollout.rollout_id,
                        "model": rollout.plan.model,
                        "version": rollout.plan.version,
                        "previous_version": row.previous_version,
                        "rollout_state": rollout.status.state.value,
                        "install": row.install.value if row.assigned_at else "not_started",
                        "assigned_at": row.assigned_at,
                        "settled_at": row.settled_at,
                        "detail": row.detail,
                    }
                )
        history.sort(key=lambda h: (h["assigned_at"] or 0.0, h["rollout"]), reverse=True)
        now = self.clock()
        out.update(
            {
                "created_at": d.created_at,
                "state_at": d.state_at,
                "telemetry_lag_s": None if d.last_seen is None else max(0.0, now - d.last_seen),
                "window_s": _window_s(d.profile),
                "desired_assignments": {m: a.to_dict() for m, a in desired.items()},
                "history": history,
                "report": dict(d.state),
                "now": now,
            }
        )
        return out

    def groups(self) -> list[dict[str, Any]]:
        return dv.group_summaries(self._device_rows())

    def bundles(self) -> list[dict[str, Any]]:
        models: dict[str, dict[str, Any]] = {}
        for b in sorted(self.store.list_bundles(), key=lambda b: (b.model, b.version)):
            m = models.setdefault(b.model, {"model": b.model, "versions": {}})
            m["versions"].setdefault(str(b.version), []).append(b.to_dict())
        return [
            {
                "model": m["model"],
                "versions": [{"version": int(v), "bundles": bs} for v, bs in m["versions"].items()],
            }
            for m in models.values()
        ]

    def publish_bundle(self, source: Path) -> dict[str, Any]:
        """Verify a bundle file against the trusted publisher keys and store it."""
        bundles = PublishedBundleStore(self.config.store.bundles_dir, self.store)
        try:
            result = bundles.publish(source, publisher_trust(self.config), self.clock())
        finally:
            bundles.close()
        return {**result.bundle.to_dict(), "created": result.created}

    # -- device lifecycle ----------------------------------------------------------------

    def _changed(self, result: dict[str, Any]) -> dict[str, Any]:
        self._cache.clear()
        return result

    def enroll_device(
        self,
        device_id: str,
        profile: str,
        *,
        group: str | None = None,
        tags: Sequence[str] = (),
        state_dir: str = DEFAULT_STATE_DIR,
        endpoint_port: int = 8080,
    ) -> dict[str, Any]:
        """Enroll a device (its broker password is in the answer, once) and admit it."""
        enrollment = enroll_device(
            self.store,
            self.config,
            device_id,
            profile,
            self.clock(),
            group=group,
            tags=tags,
            state_dir=state_dir,
            endpoint_port=endpoint_port,
        )
        result = enrollment.to_dict()
        result["broker"] = lifecycle.refresh_broker(self.config, self.store).to_dict()
        return self._changed(result)

    def reissue_device(
        self, device_id: str, *, state_dir: str = DEFAULT_STATE_DIR, endpoint_port: int = 8080
    ) -> dict[str, Any]:
        return self._changed(
            lifecycle.reissue(
                self.store, self.config, device_id, state_dir=state_dir, endpoint_port=endpoint_port
            )
        )

    def revoke_device(self, device_id: str) -> dict[str, Any]:
        return self._changed(lifecycle.revoke(self.store, self.config, device_id))

    def remove_device(self, device_id: str) -> dict[str, Any]:
        return self._changed(lifecycle.remove(self.store, self.config, device_id))

    # -- rollouts ------------------------------------------------------------------------

    def rollouts(self, state: str | None = None) -> list[dict[str, Any]]:
        states = None
        if state is not None:
            try:
                states = [RolloutState(state)]
            except ValueError as e:
                names = ", ".join(s.value for s in RolloutState)
                raise HubUsageError(f"state must be one of {names}") from e
        return [summary(r) for r in self.store.list_rollouts(states)]

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        """``hub rollout status ID`` plus what each waiting gate waits for and until when."""
        now = self.clock()
        detail = self.engine.status(rollout_id, now)
        profiles = self.store.profiles_of([dev["device"] for dev in detail["devices"]])
        windows = {
            dev["device"]: _window_s(profiles[dev["device"]])
            for dev in detail["devices"]
            if dev["device"] in profiles
        }
        waiting = explain_waiting(detail, windows, now)
        return {
            **detail,
            "waiting": waiting,
            "headline": rollout_headline(detail, waiting),
            "now": now,
        }

    def create_rollout(
        self,
        model: str,
        version: int,
        selector: str,
        *,
        phases: str = DEFAULT_PHASES,
        gates: Sequence[str] = (),
        rollout_id: str | None = None,
    ) -> dict[str, Any]:
        record = self.engine.create(
            model,
            version,
            selector,
            self.clock(),
            phases_text=phases,
            gate_overrides=gates,
            rollout_id=rollout_id,
        )
        self._cache.clear()
        return {**summary(record), "gates": record.plan.gates.to_dict()}

    def rollout_action(
        self, rollout_id: str, action: str, reason: str | None = None
    ) -> dict[str, Any]:
        if action not in ROLLOUT_ACTIONS:
            raise HubUsageError(f"action must be one of {', '.join(ROLLOUT_ACTIONS)}")
        method = getattr(self.engine, action)
        kwargs = {"reason": reason} if reason else {}
        record = method(rollout_id, self.clock(), **kwargs)
        self._cache.clear()
        return summary(record)

    # -- fleet database: drift and alerts --------------------------------------------------

    def _fleet(self) -> FleetView:
        with self._view_lock:
            if self._view is None:
                self._view = open_view(self._fleet_db, self.store, self.config)
            return self._view

    def drift_models(self) -> list[dict[str, Any]]:
        """Models and versions with telemetry (index lookups, no scan of the windows)."""
        if not fleet_database_exists(self._fleet_db):
            return []
        return [{"model": m, "versions": v} for m, v in self._board.models().items()]

    def _compute_query(self, q: DriftQuery) -> Callable[[], dict[str, Any]]:
        def compute() -> dict[str, Any]:
            view = self._fleet()
            aggregator = FleetAggregator(view.store, view.references, view.thresholds)
            result = aggregator.query(q, self.clock())
            out = result.to_dict()
            out["histograms"] = dr.histograms(result.profile, result.fleet.merged)
            return out

        return compute

    def _query(self, q: DriftQuery) -> dict[str, Any]:
        result: dict[str, Any] = self._drift_cache.get(("drift", q), self._compute_query(q))
        return result

    def _query_nowait(self, q: DriftQuery) -> dict[str, Any] | None:
        """The answer if one is held, else None while it is computed in the background
        (without background work, i.e. no cache, it is computed now)."""
        if self._drift_cache.ttl_s <= 0:
            return self._query(q)
        found, value = self._drift_cache.get_nowait(("drift", q), self._compute_query(q))
        return value if found else None

    def drift(
        self,
        model: str,
        version: int | None = None,
        *,
        scope: str = "group",
        since_s: float | None = None,
        name: str | None = None,
        limit: int = MAX_HEATMAP_ROWS,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Drift of ``model`` per ``scope`` with a headline naming every drifting group or
        device, and a feature x scope heat map (``limit`` rows from ``offset``, drifting
        scopes first) whose verdicts agree with the open alerts.

        Over whole days (``since_s`` a multiple of 86,400, or None: everything stored) the
        answer comes from the drift board: its last snapshot at once (``as_of`` says when
        it was taken, ``since`` where its windows start), never a wait for a whole fleet to
        be scored; ``computing`` while the first one is still being built. Other spans are
        a query of their own (cached)."""
        if scope not in DRIFT_SCOPES:
            raise HubUsageError(f"scope must be one of {', '.join(DRIFT_SCOPES)}")
        if not 1 <= limit <= 1000 or offset < 0:
            raise HubUsageError("limit must be 1..1000 and offset not negative")
        if since_s is not None and since_s % 86400:
            return self._drift_since(model, version, scope, since_s, name, limit, offset)
        if not fleet_database_exists(self._fleet_db):
            raise HubNotFoundError(f"no telemetry stored for model {model!r}")
        version, versions = self._board.resolve(model, version)
        open_drift = dr.drift_alerts(self.alerts("open", 1000)["items"], model)
        snap = self._board.snapshot(model, version, since_s, self.drift_wait_s)
        if snap is None:
            return _computing(model, version, versions, scope, open_drift)
        return _from_snapshot(snap, versions, scope, name, open_drift, limit, offset)

    def _drift_since(
        self,
        model: str,
        version: int | None,
        scope: str,
        since_s: float,
        name: str | None,
        limit: int,
        offset: int,
    ) -> dict[str, Any]:
        """A window of time: a query of its own over the stored windows (cached)."""
        # Queries start on whole hours anyway (fleet buckets); rounding here lets a repeated
        # question find its cached answer.
        since = float(int((self.clock() - since_s) // 3600) * 3600)
        by = None if scope == "fleet" else scope
        main = self._query(DriftQuery(model, version, by, since))
        version = main["version"]
        by_group = (
            main
            if scope == "group"
            else self._query(DriftQuery(model, version, "group", since, timeline=False))
        )
        # A per-device breakdown of a large fleet takes long to score: asked for another
        # scope, the headline uses it once it is there and says so while it is not.
        by_device = (
            main
            if scope == "device"
            else self._query_nowait(DriftQuery(model, version, "device", since, timeline=False))
        )
        open_drift = dr.drift_alerts(self.alerts("open", 1000)["items"], model)
        scopes = dr.drifting_scopes(by_group, by_device, open_drift)
        out: dict[str, Any] = {
            "model": model,
            "version": version,
            "versions": main["versions"],
            "scope": scope,
            "headline": dr.headline(main, scopes)
            + ("" if by_device is not None else " (per-device breakdown still being computed)"),
            "devices_scored": by_device is not None,
            "computing": by_device is None,
            "as_of": self.clock(),
            "since": since,
            "drifting": scopes[:MAX_HEATMAP_ROWS],
            "drifting_total": len(scopes),
            "fleet": main["fleet"],
            "timeline": main["timeline"],
            "histograms": main["histograms"],
            "thresholds": main["thresholds"],
            "reference": main["reference"],
            "open_alerts": [a["id"] for a in open_drift],
        }
        if by is not None:
            hm = dr.heatmap(main, open_drift, scope)
            out["heatmap"] = {
                **hm,
                "rows": hm["rows"][offset : offset + limit],
                "total": len(hm["rows"]),
                "offset": offset,
                "limit": limit,
            }
            if name is not None:
                if name not in main["groups"]:
                    raise HubNotFoundError(
                        f"no telemetry from {scope} {name} for {model}:{version}"
                    )
                out["selected"] = main["groups"][name]
        return out

    def drift_headline(
        self, model: str, version: int | None, since: float | None
    ) -> dict[str, Any]:
        """What ``hub drift``'s first line says: drifting groups and devices, open alerts."""
        return drift_headline(self._fleet(), model, version, since, self.clock())

    def alerts(
        self, status: str | None = "open", limit: int = 100, offset: int = 0
    ) -> dict[str, Any]:
        if status not in (None, "open", "resolved"):
            raise HubUsageError("status must be open, resolved or all")
        if not 1 <= limit <= 1000 or offset < 0:
            raise HubUsageError("limit must be 1..1000 and offset not negative")
        if not fleet_database_exists(self._fleet_db):
            return {"items": [], "open": 0, "limit": limit, "offset": offset, "total": 0}
        alerts = AlertStore(self._fleet().db)
        records = alerts.list_alerts(status, limit + offset)
        acks = self.access.acknowledgements() if self.access is not None else {}
        items = []
        for a in records[offset : offset + limit]:
            item = a.to_dict()
            item["acknowledged"] = acks.get(a.id)
            items.append(item)
        return {
            "items": items,
            "open": sum(alerts.open_counts().values()),
            "limit": limit,
            "offset": offset,
            "total": len(records) if len(records) < limit + offset else None,
        }

    def acknowledge(self, alert_id: int, by: str, note: str = "") -> dict[str, Any]:
        if self.access is None:  # pragma: no cover (the API always has one)
            raise HubUsageError("acknowledging needs the console store")
        if not fleet_database_exists(self._fleet_db):
            raise HubNotFoundError(f"no such alert {alert_id}")
        with self._fleet().db.read() as conn:
            row = conn.execute("SELECT 1 FROM fleet_alerts WHERE id = ?", (alert_id,)).fetchone()
        if row is None:
            raise HubNotFoundError(f"no such alert {alert_id}")
        return {
            "alert": alert_id,
            "acknowledged": self.access.acknowledge(alert_id, by, self.clock(), note),
        }

    # -- overview --------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        active = self.store.list_rollouts(
            [RolloutState.CREATED, RolloutState.RUNNING, RolloutState.PAUSED]
        )
        alerts = self.alerts("open", 20)
        return {
            **self._device_overview(),
            "rollouts": [_short_selector(summary(r)) for r in active],
            "alerts": {"open": alerts["open"], "items": alerts["items"]},
            "drift_models": self.drift_models(),
            "now": self.clock(),
        }


# How a state report with a string ``directive_error`` starts that entry as the store writes
# it (sorted keys, compact separators): reports with ``"directive_error": null`` are not read.
_REFUSAL_MARK = to_json({"directive_error": ""})[1:-2]


def _computing(
    model: str,
    version: int,
    versions: list[int],
    scope: str,
    open_drift: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The answer while the first snapshot of a model version is being built: the open
    drift alerts (they are known at once), no verdicts yet."""
    scopes = dr.drifting_scopes(None, None, open_drift)
    named = dr.headline({}, scopes).replace("; pooled fleet: not enough data", "")
    return {
        "model": model,
        "version": version,
        "versions": versions,
        "scope": scope,
        "headline": f"{named}; drift is being computed (this page refreshes by itself)",
        "devices_scored": False,
        "computing": True,
        "as_of": None,
        "since": None,
        "drifting": scopes,
        "drifting_total": len(scopes),
        "fleet": {},
        "timeline": [],
        "histograms": {},
        "thresholds": None,
        "reference": None,
        "open_alerts": [a["id"] for a in open_drift],
        **(
            {"heatmap": {"kind": scope, "features": [], "rows": [], "total": 0}}
            if scope != "fleet"
            else {}
        ),
    }


def _from_snapshot(
    snap: DriftSnapshot,
    versions: list[int],
    scope: str,
    name: str | None,
    open_drift: Sequence[Mapping[str, Any]],
    limit: int,
    offset: int,
) -> dict[str, Any]:
    """The API's drift answer from a board snapshot: only the heat map page is built."""
    fleet_like = {"fleet": snap.fleet}
    # The most drifted scopes only: on a large fleet thousands of devices may drift.
    by_group = snap.drifting("group", MAX_HEATMAP_ROWS)
    by_device = snap.drifting("device", MAX_HEATMAP_ROWS)
    scopes = dr.drifting_scopes({"groups": by_group}, {"groups": by_device}, open_drift)
    hidden = len(snap.ranked["group"]) - len(by_group) + len(snap.ranked["device"]) - len(by_device)
    out: dict[str, Any] = {
        "model": snap.model,
        "version": snap.version,
        "versions": versions,
        "scope": scope,
        "headline": dr.headline(fleet_like, scopes, more=hidden),
        "devices_scored": True,
        "computing": False,
        "as_of": snap.as_of,
        "since": snap.since,
        "drifting": scopes[:MAX_HEATMAP_ROWS],
        "drifting_total": len(scopes) + hidden,
        "fleet": snap.fleet,
        "timeline": snap.timeline,
        "histograms": snap.histograms,
        "thresholds": snap.thresholds,
        "reference": snap.reference,
        "open_alerts": [a["id"] for a in open_drift],
    }
    if scope != "fleet":
        page = snap.page(scope, offset, limit)
        hm = dr.heatmap({"groups": page, "fleet": snap.fleet}, open_drift, scope)
        total = len(snap.order[scope])
        out["heatmap"] = {**hm, "total": total, "offset": offset, "limit": limit}
        if name is not None:
            selected = snap.selected(scope, name)
            if selected is None:
                raise HubNotFoundError(
                    f"no telemetry from {scope} {name} for {snap.model}:{snap.version}"
                )
            out["selected"] = selected
    return out


def _short_selector(row: dict[str, Any], limit: int = 80) -> dict[str, Any]:
    """An ``ids=`` selector of 100 devices is 1 KB: the overview shows only its start."""
    selector = row["selector"]
    if len(selector) > limit:
        row = {**row, "selector": selector[:limit] + "..."}
    return row


def drift_headline(
    view: FleetView, model: str, version: int | None, since: float | None, now: float
) -> dict[str, Any]:
    """The headline of a drift report over ``view``: every drifting group and device and
    every open drift alert of ``model`` before the pooled verdict (see ``console.drift``)."""
    aggregator = FleetAggregator(view.store, view.references, view.thresholds)
    by_group = aggregator.query(DriftQuery(model, version, "group", since, timeline=False), now)
    by_device = aggregator.query(
        DriftQuery(model, by_group.version, "device", since, timeline=False), now
    )
    records = AlertStore(view.db).list_alerts("open", 1000)
    open_drift = dr.drift_alerts([a.to_dict() for a in records], model)
    group_dict, device_dict = by_group.to_dict(), by_device.to_dict()
    scopes = dr.drifting_scopes(group_dict, device_dict, open_drift)
    return {"headline": dr.headline(group_dict, scopes), "drifting": scopes}
