"""Read-only views of rollouts: what ``hub rollout status`` shows, with or without an ID.

Pure functions, no I/O: the caller (:meth:`RolloutEngine.status
<edgefleet.hub.rollout.engine.RolloutEngine.status>`) reads the store and the current gate
decision and passes them in. A device whose phase has not started shows as
``not_started`` whatever its stored install status; phases are numbered from 1 here,
from 0 in the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgefleet.hub.rollout.gates import PhaseEvaluation
from edgefleet.hub.store import (
    DeviceHead,
    RolloutDeviceRecord,
    RolloutEventRecord,
    RolloutRecord,
)


def status_report(
    rollout: RolloutRecord,
    rows: Sequence[RolloutDeviceRecord],
    devices: Mapping[str, DeviceHead],
    decision: PhaseEvaluation | None,
    events: Sequence[RolloutEventRecord],
) -> dict[str, Any]:
    """Phases, devices, gates, the current decision and the history of one rollout."""
    plan = rollout.plan
    phases = []
    for k in range(plan.phase_count):
        members = [r for r in rows if r.phase == k]
        counts: dict[str, int] = {}
        for r in members:
            key = r.install.value if r.assigned_at is not None else "not_started"
            counts[key] = counts.get(key, 0) + 1
        phases.append(
            {
                "phase": k + 1,
                "cumulative_devices": plan.phase_sizes[k],
                "devices": len(members),
                "counts": counts,
                "current": rollout.status.phase == k,
            }
        )
    return {
        **summary(rollout),
        "gates": plan.gates.to_dict(),
        "phases": phases,
        "devices": [
            {
                **r.to_dict(),
                "phase": r.phase + 1,
                "online": devices[r.device_id].online if r.device_id in devices else False,
                "install": r.install.value if r.assigned_at is not None else "not_started",
            }
            for r in rows
        ],
        "decision": decision.to_dict() if decision else None,
        "events": [{"at": e.at, "event": e.event, "detail": e.detail} for e in events],
    }


def summary(rollout: RolloutRecord) -> dict[str, Any]:
    """The headline of one rollout: plan, state and phase, without its devices."""
    plan, status = rollout.plan, rollout.status
    return {
        "rollout": plan.rollout_id,
        "model": plan.model,
        "version": plan.version,
        "selector": plan.selector,
        "state": status.state.value,
        "phase": status.phase + 1 if status.phase >= 0 else None,
        "phase_count": plan.phase_count,
        "phase_sizes": list(plan.phase_sizes),
        "devices": len(plan.devices),
        "created_at": rollout.created_at,
        "updated_at": status.updated_at,
        "reason": status.reason,
    }
