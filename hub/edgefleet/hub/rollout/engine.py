"""The rollout engine: applies the pure plan, machine and gates to the hub store.

Both ``hub serve`` (every tick) and the ``hub rollout`` commands (in another
process) drive rollouts through this class; the store is the only shared
state. Invariants:

- every state change goes through :func:`~edgefleet.hub.rollout.machine.handle`
  and is written in one store transaction together with its side effects
  (device assignments, rollout-device rows, the event log); a tick and an operator
  command both read the rollout with ``store.lock_rollout`` inside that transaction
  (``SELECT ... FOR UPDATE`` on PostgreSQL), so the second waits for the first's
  commit, and a tick drops its decision if the status changed meanwhile;
- the engine never publishes anything: it changes *desired assignments*, and
  the directive issuer turns changed assignments into signed directives;
- a device is "moved" once its phase started (``assigned_at`` set); rollback
  only touches moved devices whose current assignment still comes from this
  rollout, so rolling back an old rollout never undoes a newer one;
- a moved device's install status changes only through
  :func:`~edgefleet.hub.rollout.progress.next_install`, from what the device's
  events and state reports say about the rollout's bundle; a device whose slot
  points at the new bundle while its probation runs is installing, not committed;
- nothing here reads a clock: every entry point takes ``now``.

A transition's writes live in :mod:`~edgefleet.hub.rollout.transitions`, the reads behind a
gate decision in :mod:`~edgefleet.hub.rollout.evaluation`; this class decides when each runs.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from edgefleet.hub.errors import HubNotFoundError, HubUsageError, RolloutStateError
from edgefleet.hub.rollout.evaluation import evaluate_rollout
from edgefleet.hub.rollout.gates import InstallStatus, PhaseEvaluation, Verdict
from edgefleet.hub.rollout.machine import (
    ACTIVE_STATES,
    RolloutEvent,
    RolloutState,
    RolloutStatus,
)
from edgefleet.hub.rollout.plan import DEFAULT_PHASES, Gates, RolloutPlan, parse_phases
from edgefleet.hub.rollout.progress import (
    SETTLING,
    BundleRef,
    ModelReport,
    Observation,
    next_install,
    observe_event,
    observe_state,
)
from edgefleet.hub.rollout.report import status_report
from edgefleet.hub.rollout.report import summary as summary  # imported from here by the CLI
from edgefleet.hub.rollout.transitions import apply_transition
from edgefleet.hub.selectors import Selector
from edgefleet.hub.store import (
    BundleRecord,
    DesiredAssignment,
    DeviceHead,
    DeviceRecord,
    HubStore,
    RolloutDeviceRecord,
    RolloutRecord,
)

log = logging.getLogger(__name__)

#: The states a tick acts on; finished rollouts are not read back every second.
TICKED_STATES = frozenset({RolloutState.CREATED, RolloutState.RUNNING})


@dataclass(frozen=True)
class TickResult:
    rollout_id: str
    event: RolloutEvent | None
    decision: PhaseEvaluation | None


class RolloutEngine:
    """Creates, advances, pauses, aborts and rolls back rollouts in a :class:`HubStore`."""

    def __init__(self, store: HubStore) -> None:
        self.store = store

    # -- creation --------------------------------------------------------------

    def create(
        self,
        model: str,
        version: int,
        selector_text: str,
        now: float,
        *,
        phases_text: str = DEFAULT_PHASES,
        gate_overrides: Sequence[str] = (),
        gates: Gates | None = None,
        rollout_id: str | None = None,
    ) -> RolloutRecord:
        """Plan a rollout of ``model:version`` to the selected devices (state ``created``)."""
        selector = Selector.parse(selector_text)
        phases = parse_phases(phases_text)
        gates = (gates or Gates()).with_overrides(gate_overrides)
        bundles = self.store.find_bundles(model, version)
        if not bundles:
            raise HubNotFoundError(f"no published bundle for {model}:{version} (hub publish FILE)")
        devices = {d.device_id: d for d in self.store.list_devices()}
        selected = selector.select(devices.values())
        if not selected:
            raise HubUsageError(f"selector {selector} matches no enrolled device")
        by_profile = _bundles_by_profile(bundles)
        missing = sorted(
            {devices[i].profile for i in selected if _pick(by_profile, devices[i]) is None}
        )
        if missing:
            raise HubUsageError(
                f"no bundle of {model}:{version} for profile(s) {', '.join(missing)}; "
                "pack and publish one per profile"
            )
        busy = self._busy_devices(model, selected)
        if busy:
            rid, devs = next(iter(busy.items()))
            raise HubUsageError(
                f"rollout {rid} of {model} is still active on {len(devs)} of these devices "
                f"(e.g. {devs[0]}); pause is not enough, abort or finish it first"
            )
        rollout_id = rollout_id or f"r-{secrets.token_hex(4)}"
        if self.store.get_rollout(rollout_id) is not None:
            raise HubUsageError(f"rollout {rollout_id} already exists")
        plan = RolloutPlan.build(
            rollout_id, model, version, str(selector), selected, phases, gates, phases_text
        )
        rows = []
        # One query for every device's assignments (not one per device: 10,000 devices
        # would be 10,000 round trips), and each bundle a device reports looked up once.
        assignments = self.store.all_assignments()
        known: dict[str, BundleRecord | None] = {}
        for device_id in plan.devices:
            bundle = _pick(by_profile, devices[device_id])
            assert bundle is not None
            prev = self._previous(
                devices[device_id], assignments.get(device_id, {}).get(model), model, known
            )
            rows.append(
                RolloutDeviceRecord(
                    rollout_id=rollout_id,
                    device_id=device_id,
                    phase=plan.phase_of(device_id),
                    bundle_sha256=bundle.sha256,
                    size=bundle.size,
                    previous_version=prev[0],
                    previous_sha256=prev[1],
                    previous_size=prev[2],
                )
            )
        record = RolloutRecord(plan, RolloutStatus(updated_at=now), now)
        with self.store.transaction():
            self.store.create_rollout(record, rows)
            self.store.add_rollout_event(
                rollout_id,
                now,
                "created",
                f"{model}:{version} to {selector} ({len(selected)} devices, phases "
                f"{'/'.join(str(s) for s in plan.phase_sizes)})",
            )
        return record

    def _busy_devices(self, model: str, device_ids: Sequence[str]) -> dict[str, list[str]]:
        wanted = set(device_ids)
        busy: dict[str, list[str]] = {}
        for rollout in self.store.list_rollouts(ACTIVE_STATES):
            if rollout.plan.model != model:
                continue
            overlap = sorted(wanted & set(rollout.plan.devices))
            if overlap:
                busy[rollout.rollout_id] = overlap
        return busy

    def _previous(
        self,
        device: DeviceRecord,
        current: DesiredAssignment | None,
        model: str,
        known: dict[str, BundleRecord | None],
    ) -> tuple[int | None, str | None, int | None]:
        """What the device runs of ``model`` before the rollout (``known``: bundle cache)."""
        if current is not None:
            return current.version, current.bundle_sha256, current.size
        # Not assigned by this hub: trust what the device says it runs.
        for entry in device.state.get("models", []) if isinstance(device.state, Mapping) else []:
            if isinstance(entry, Mapping) and entry.get("name") == model:
                active = entry.get("active")
                if isinstance(active, Mapping) and isinstance(active.get("version"), int):
                    sha = active.get("bundle_sha256")
                    if isinstance(sha, str) and sha not in known:
                        known[sha] = self.store.get_bundle(sha)
                    bundle = known.get(sha) if isinstance(sha, str) else None
                    return (
                        active["version"],
                        sha if isinstance(sha, str) else None,
                        (bundle.size if bundle else None),
                    )
        return None, None, None

    # -- operator actions ------------------------------------------------------

    def pause(
        self, rollout_id: str, now: float, reason: str = "paused by operator"
    ) -> RolloutRecord:
        return self._operator(rollout_id, RolloutEvent.PAUSE, now, reason)

    def resume(
        self, rollout_id: str, now: float, reason: str = "resumed by operator"
    ) -> RolloutRecord:
        return self._operator(rollout_id, RolloutEvent.RESUME, now, reason)

    def abort(
        self, rollout_id: str, now: float, reason: str = "aborted by operator"
    ) -> RolloutRecord:
        return self._operator(rollout_id, RolloutEvent.ABORT, now, reason)

    def rollback(
        self, rollout_id: str, now: float, reason: str = "rolled back by operator"
    ) -> RolloutRecord:
        return self._operator(rollout_id, RolloutEvent.ROLLBACK, now, reason)

    def _operator(
        self, rollout_id: str, event: RolloutEvent, now: float, reason: str
    ) -> RolloutRecord:
        with self.store.transaction():
            # Locked (FOR UPDATE on PostgreSQL) until the commit: a tick of another hub
            # that read the rollout before waits here and then sees the changed status.
            rollout = self.store.lock_rollout(rollout_id)
            if rollout is None:
                raise HubNotFoundError(f"no such rollout {rollout_id}")
            apply_transition(self.store, rollout, event, now, reason)
            return self.get(rollout_id)

    def get(self, rollout_id: str) -> RolloutRecord:
        rollout = self.store.get_rollout(rollout_id)
        if rollout is None:
            raise HubNotFoundError(f"no such rollout {rollout_id}")
        return rollout

    # -- device reports ---------------------------------------------------------

    def on_deployment(
        self,
        device_id: str,
        model: str,
        version: int | None,
        state: str,
        at: float,
        *,
        reason: str | None = None,
        rollout_id: str | None = None,
        bundle_sha256: str | None = None,
        kind: str | None = None,
    ) -> list[str]:
        """A device reported a deployment step (an ``event`` record); update its rollouts.

        ``kind`` is the driver's deployment kind ("install" or "rollback") when the
        event carries one: a finished rollback *to* a rollout's bundle is a success.
        Returns the ids of the rollouts whose device row changed.
        """
        return self._observe(
            device_id,
            model,
            at,
            lambda ref: observe_event(
                ref,
                state=state,
                version=version,
                bundle_sha256=bundle_sha256,
                rollout_id=rollout_id,
                reason=reason,
                kind=kind,
            ),
        )

    def on_device_state(self, device_id: str, state: Mapping[str, Any], at: float) -> list[str]:
        """Derive deployment progress from a retained state report (see ``progress``)."""
        changed: list[str] = []
        models = state.get("models", [])
        if not isinstance(models, list):
            return changed
        for entry in models:
            report = ModelReport.from_entry(entry)
            if report is not None:
                changed += self._observe(
                    device_id, report.name, at, partial(observe_state, model=report)
                )
        return sorted(set(changed))

    def _observe(
        self,
        device_id: str,
        model: str,
        at: float,
        observe: Callable[[BundleRef], Observation | None],
    ) -> list[str]:
        """Apply one report to the device's row in every rollout of ``model`` it was moved by."""
        changed = []
        with self.store.transaction():
            # One indexed read of this device's rows: a report costs the same whatever
            # the number of rollouts and devices (reports arrive from the whole fleet).
            for entry in self.store.device_rollout_rows(device_id, model):
                row = entry.row
                if row.assigned_at is None:
                    continue
                seen = observe(BundleRef(row.rollout_id, row.bundle_sha256, entry.rollout_version))
                if seen is None:
                    continue
                status = next_install(row.install, seen.status)
                if status is None or (status is row.install and seen.detail == row.detail):
                    continue
                settled = at if status in SETTLING else None
                self.store.update_rollout_device(
                    replace(row, install=status, settled_at=settled, detail=seen.detail)
                )
                changed.append(row.rollout_id)
        return changed

    # -- evaluation -------------------------------------------------------------

    def evaluate(
        self,
        rollout: RolloutRecord,
        now: float,
        *,
        rows: Sequence[RolloutDeviceRecord] | None = None,
        devices: Mapping[str, DeviceHead] | None = None,
    ) -> PhaseEvaluation | None:
        """The gate decision for the current phase (None unless running).

        ``rows`` (the rollout's device rows) and ``devices`` (every device's head) are read
        from the store when not given: a caller that holds them already passes them in.
        """
        return evaluate_rollout(self.store, rollout, now, rows=rows, devices=devices)

    def tick(self, now: float) -> list[TickResult]:
        """Start created rollouts and evaluate running ones; apply the decisions.

        The device heads are read once per tick, before the first evaluation, and shared by
        every running rollout: the gates only read presence from them, which applying
        another rollout's decision does not change.
        """
        results = []
        heads: dict[str, DeviceHead] | None = None
        for rollout in self.store.list_rollouts(TICKED_STATES):
            state = rollout.status.state
            if state is RolloutState.CREATED:
                results.append(self._guarded(rollout, RolloutEvent.START, now, "started", None))
            elif state is RolloutState.RUNNING:
                if heads is None:
                    heads = self.store.device_heads()
                decision = self.evaluate(rollout, now, devices=heads)
                if decision is None:
                    continue
                results.append(self._act(rollout, decision, now))
        return results

    def _act(self, rollout: RolloutRecord, decision: PhaseEvaluation, now: float) -> TickResult:
        plan = rollout.plan
        with self.store.transaction():
            current = self.store.lock_rollout(plan.rollout_id)
            if current is None or current.status != rollout.status:
                return TickResult(plan.rollout_id, None, None)  # an operator got there first
            if decision.timed_out:
                rows = {r.device_id: r for r in self.store.list_rollout_devices(plan.rollout_id)}
                for device_id in decision.timed_out:
                    self.store.update_rollout_device(
                        replace(
                            rows[device_id],
                            install=InstallStatus.TIMED_OUT,
                            settled_at=now,
                            detail=f"no result within {plan.gates.device_timeout_s:.0f}s",
                        )
                    )
            if decision.verdict is Verdict.WAIT:
                return TickResult(plan.rollout_id, None, decision)
            if decision.verdict is Verdict.ABORT:
                apply_transition(
                    self.store, current, RolloutEvent.ABORT, now, f"gate failed: {decision.reason}"
                )
                if plan.gates.auto_rollback:
                    aborted = self.get(plan.rollout_id)
                    apply_transition(
                        self.store,
                        aborted,
                        RolloutEvent.ROLLBACK,
                        now,
                        "automatic rollback after abort",
                    )
                return TickResult(plan.rollout_id, RolloutEvent.ABORT, decision)
            last = current.status.phase == plan.phase_count - 1
            event = RolloutEvent.COMPLETE if last else RolloutEvent.ADVANCE
            apply_transition(
                self.store, current, event, now, f"phase {current.status.phase + 1} passed"
            )
            return TickResult(plan.rollout_id, event, decision)

    def _guarded(
        self,
        rollout: RolloutRecord,
        event: RolloutEvent,
        now: float,
        reason: str,
        decision: PhaseEvaluation | None,
    ) -> TickResult:
        with self.store.transaction():
            current = self.store.lock_rollout(rollout.rollout_id)
            if current is None or current.status != rollout.status:
                return TickResult(rollout.rollout_id, None, None)
            try:
                apply_transition(self.store, current, event, now, reason)
            except RolloutStateError:  # pragma: no cover (status re-checked above)
                return TickResult(rollout.rollout_id, None, None)
        return TickResult(rollout.rollout_id, event, decision)

    # -- reporting ---------------------------------------------------------------

    def status(self, rollout_id: str, now: float) -> dict[str, Any]:
        """Everything ``hub rollout status ID`` shows: phases, devices, gates, history."""
        rollout = self.get(rollout_id)
        rows = self.store.list_rollout_devices(rollout_id)
        # Only this rollout's devices: a status report must not read the whole fleet.
        devices = self.store.device_heads_of([r.device_id for r in rows])
        decision = self.evaluate(rollout, now, rows=rows, devices=devices)
        events = self.store.rollout_events(rollout_id)
        return status_report(rollout, rows, devices, decision, events)


def _bundles_by_profile(bundles: Sequence[BundleRecord]) -> dict[str | None, BundleRecord]:
    by_profile: dict[str | None, BundleRecord] = {}
    for bundle in sorted(bundles, key=lambda b: b.published_at):
        by_profile[bundle.profile] = bundle  # the latest publication per profile wins
    return by_profile


def _pick(
    by_profile: Mapping[str | None, BundleRecord], device: DeviceRecord
) -> BundleRecord | None:
    # A bundle built for the device's profile; a profile-less bundle fits any device.
    return by_profile.get(device.profile) or by_profile.get(None)
