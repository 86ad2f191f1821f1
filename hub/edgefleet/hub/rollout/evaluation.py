"""The gate decision of a running rollout, from what the hub store holds.

Telemetry comes from the fleet tables' window rows (``HubStore.telemetry_windows``), the
same rows drift, alerts and reports read; :func:`gate_horizon` says how far back the
active rollouts read them, so that retention keeps those rows.

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

from collections.abc import Iterable, Mapping, Sequence

from edgefleet.core.evidence import pool
from edgefleet.hub.rollout.evidence import VersionStats
from edgefleet.hub.rollout.gates import DeviceReport, PhaseEvaluation, evaluate_phase
from edgefleet.hub.rollout.machine import RolloutState
from edgefleet.hub.store import DeviceHead, HubStore, RolloutDeviceRecord, RolloutRecord


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
        stats = VersionStats.from_totals(window.totals)
        out[window.device_id] = out.get(window.device_id, VersionStats()).merge(stats)
    return out


def gate_horizon(active: Iterable[RolloutRecord]) -> float | None:
    """The oldest receipt time any of these (created, running or paused) rollouts' gates
    read: the new version's windows since its creation, the replaced versions' since
    creation minus ``baseline_lookback_s``. Retention must not delete telemetry received
    at or after it, or a verdict would change halfway through a rollout. None: no rollout.
    """
    return min((r.created_at - r.plan.gates.baseline_lookback_s for r in active), default=None)
