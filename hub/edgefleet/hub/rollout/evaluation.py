"""The gate decision of a running rollout, from what the hub store holds.

Reads only (no transaction needed: a decision is re-checked against the stored rollout
before it is applied, see :meth:`RolloutEngine.tick
<edgefleet.hub.rollout.engine.RolloutEngine.tick>`): the rollout's device rows, the
devices' presence, the new version's telemetry windows from the moved devices since the
rollout's creation, and the replaced versions' windows from every planned device since
creation minus ``baseline_lookback_s``. :func:`~edgefleet.hub.rollout.gates.evaluate_phase`
decides from them.

A caller that has read the rows or the device heads already passes them in, so a status
report reads each once and a tick reads the device heads once for all its rollouts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from edgefleet.core.evidence import pool
from edgefleet.hub.rollout.evidence import VersionStats
from edgefleet.hub.rollout.gates import DeviceReport, PhaseEvaluation, evaluate_phase
from edgefleet.hub.rollout.machine import RolloutState
from edgefleet.hub.store import DeviceHead, HubStore, RolloutDeviceRecord, RolloutRecord

log = logging.getLogger(__name__)


def evaluate_rollout(
    store: HubStore,
    rollout: RolloutRecord,
    now: float,
    *,
    rows: Sequence[RolloutDeviceRecord] | None = None,
    devices: Mapping[str, DeviceHead] | None = None,
) -> PhaseEvaluation | None:
    """The gate decision for the current phase (None unless running).

    ``rows`` (the rollout's device rows) and ``devices`` (device heads, at least of the
    rollout's devices) are read from the store when not given: only the rollout's own.
    """
    if rollout.status.state is not RolloutState.RUNNING or rollout.status.phase < 0:
        return None
    plan = rollout.plan
    if rows is None:
        rows = store.list_rollout_devices(plan.rollout_id)
    if devices is None:
        devices = store.device_heads_of([r.device_id for r in rows])
    moved = [r for r in rows if r.assigned_at is not None]
    new_stats = version_stats(
        store, plan.model, [plan.version], [r.device_id for r in moved], rollout.created_at
    )
    reports = [
        DeviceReport(
            device_id=r.device_id,
            phase=r.phase,
            online=devices[r.device_id].online if r.device_id in devices else False,
            install=r.install,
            assigned_at=r.assigned_at,
            settled_at=r.settled_at,
            new=new_stats.get(r.device_id, VersionStats()),
        )
        for r in moved
    ]
    previous = sorted(
        {r.previous_version for r in rows if r.previous_version is not None} - {plan.version}
    )
    baseline_by_device = version_stats(
        store,
        plan.model,
        previous,
        list(plan.devices),
        rollout.created_at - plan.gates.baseline_lookback_s,
    )
    # Pooled per device, never summed: one device's claims must not make the baseline.
    baseline = pool(
        [stats.evidence(device) for device, stats in baseline_by_device.items()],
        windows=sum(stats.windows for stats in baseline_by_device.values()),
    )
    started = rollout.status.phase_started_at or rollout.created_at
    return evaluate_phase(
        plan,
        reports,
        now,
        phase=rollout.status.phase,
        phase_started_at=started,
        baseline=baseline,
    )


def version_stats(
    store: HubStore, model: str, versions: Sequence[int], device_ids: Sequence[str], since: float
) -> dict[str, VersionStats]:
    """Per device, the merged stats of its windows of ``versions`` received since ``since``."""
    out: dict[str, VersionStats] = {}
    if not versions or not device_ids:
        return out
    for window in store.telemetry_windows(model, versions, device_ids, since):
        try:
            stats = VersionStats.from_window(window.body)
        except ValueError as e:
            log.warning("skipping malformed window from %s: %s", window.device_id, e)
            continue
        out[window.device_id] = out.get(window.device_id, VersionStats()).merge(stats)
    return out
