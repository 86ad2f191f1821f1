"""Rollout transitions written to the hub store: the state change and its side effects.

:func:`apply_transition` runs :func:`~edgefleet.hub.rollout.machine.handle` and writes, in
the caller's transaction: the new status; on START and ADVANCE the assignments of the
phase's devices not moved yet; on ROLLBACK the previous version of every moved device
whose current assignment still comes from this rollout (a newer rollout's devices are left
alone; a device without a previous version keeps the new one); and one history event.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from edgefleet.hub.rollout.gates import InstallStatus
from edgefleet.hub.rollout.machine import RolloutEvent, RolloutStatus, handle
from edgefleet.hub.rollout.plan import RolloutPlan
from edgefleet.hub.store import DesiredAssignment, HubStore, RolloutRecord

log = logging.getLogger(__name__)


def apply_transition(
    store: HubStore, rollout: RolloutRecord, event: RolloutEvent, now: float, reason: str
) -> RolloutStatus:
    """Transition + side effects; the caller holds a store transaction."""
    plan = rollout.plan
    status = handle(rollout.status, event, now, phase_count=plan.phase_count, reason=reason)
    store.update_rollout_status(plan.rollout_id, status)
    detail = reason
    if event in (RolloutEvent.START, RolloutEvent.ADVANCE):
        moved = _assign_phase(store, plan, status.phase, now)
        detail = f"phase {status.phase + 1}/{plan.phase_count}: {moved} device(s) assigned"
        if reason:
            detail = f"{reason}; {detail}"
    elif event is RolloutEvent.ROLLBACK:
        moved_back, kept = _roll_back_devices(store, plan, now)
        detail = f"{reason}; {moved_back} device(s) sent back to their previous version"
        if kept:
            detail += f", {kept} without a previous version kept"
    store.add_rollout_event(plan.rollout_id, now, event.value, detail)
    log.info("rollout %s: %s (%s)", plan.rollout_id, event.value, detail)
    return status


def _assign_phase(store: HubStore, plan: RolloutPlan, phase: int, now: float) -> int:
    rows = {r.device_id: r for r in store.list_rollout_devices(plan.rollout_id)}
    moved = 0
    for device_id in plan.devices_of(phase):
        row = rows[device_id]
        if row.assigned_at is not None:
            continue
        downgrade = row.previous_version is not None and plan.version < row.previous_version
        store.set_assignment(
            device_id,
            plan.model,
            DesiredAssignment(
                model=plan.model,
                bundle_sha256=row.bundle_sha256,
                version=plan.version,
                size=row.size,
                rollout_id=plan.rollout_id,
                allow_downgrade=downgrade,
            ),
            now,
        )
        store.update_rollout_device(
            replace(row, assigned_at=now, install=InstallStatus.PENDING, detail="assigned")
        )
        moved += 1
    return moved


def _roll_back_devices(store: HubStore, plan: RolloutPlan, now: float) -> tuple[int, int]:
    moved_back = kept = 0
    for row in store.list_rollout_devices(plan.rollout_id):
        if row.assigned_at is None:
            continue
        current = store.get_assignments(row.device_id).get(plan.model)
        if current is None or current.rollout_id != plan.rollout_id:
            continue  # a newer rollout owns this device now
        if row.previous_sha256 is None or row.previous_version is None or not row.previous_size:
            # Nothing to go back to (first install); the device keeps the new version.
            kept += 1
            store.update_rollout_device(replace(row, detail="no previous version"))
            continue
        store.set_assignment(
            row.device_id,
            plan.model,
            DesiredAssignment(
                model=plan.model,
                bundle_sha256=row.previous_sha256,
                version=row.previous_version,
                size=row.previous_size,
                rollout_id=plan.rollout_id,
                allow_downgrade=True,
            ),
            now,
        )
        store.update_rollout_device(
            replace(
                row,
                install=InstallStatus.ROLLED_BACK,
                settled_at=now,
                detail=f"rolled back to version {row.previous_version}",
            )
        )
        moved_back += 1
    return moved_back, kept
