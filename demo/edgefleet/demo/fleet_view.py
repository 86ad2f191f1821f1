"""What the demo reads back from the hub store while the hub runs (read only).

The demo acts through the real commands (``hub rollout create`` ...) and watches the
result the way ``hub devices`` and ``hub rollout status`` see it: devices' presence
and reported state, rollouts' state, phase, per-device progress and history. The
store is SQLite in WAL mode, so these reads never block the running hub.

The functions turning store records into plain facts are pure (``device_facts``,
``rollout_facts``); :class:`FleetView` only opens the store and calls them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.store import DeviceRecord, HubStore, open_store

FINAL_ROLLOUT_STATES = frozenset({"completed", "aborted", "rolled_back"})


@dataclass(frozen=True)
class DeviceFacts:
    device: str
    group: str | None
    profile: str
    online: bool
    version: int | None  # active version of the model, as the device reports it
    previous_version: int | None
    deployment_state: str | None
    deployment_version: int | None
    deployment_reason: str | None
    directive_error: str | None


def _version(slot: Any) -> int | None:
    if isinstance(slot, Mapping):
        v = slot.get("version")
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def device_facts(record: DeviceRecord, model: str) -> DeviceFacts:
    """The model's slots and deployment from the device's last state report."""
    entry: Mapping[str, Any] = {}
    models = record.state.get("models")
    if isinstance(models, list):
        for m in models:
            if isinstance(m, Mapping) and m.get("name") == model:
                entry = m
    deployment = entry.get("deployment")
    deployment = deployment if isinstance(deployment, Mapping) else {}
    reason = deployment.get("reason")
    error = record.state.get("directive_error")
    return DeviceFacts(
        device=record.device_id,
        group=record.group,
        profile=record.profile,
        online=record.online,
        version=_version(entry.get("active")),
        previous_version=_version(entry.get("previous")),
        deployment_state=deployment.get("state") if deployment else None,
        deployment_version=_version(deployment) if deployment else None,
        deployment_reason=str(reason) if reason else None,
        directive_error=str(error) if error else None,
    )


@dataclass(frozen=True)
class RolloutFacts:
    rollout: str
    model: str
    version: int
    state: str
    phase: int | None
    phase_count: int
    phase_sizes: tuple[int, ...]
    reason: str
    installs: Mapping[str, str]  # device -> install status
    details: Mapping[str, str]  # device -> last detail
    events: tuple[tuple[float, str, str], ...]  # (at, event, detail)
    gates: tuple[Mapping[str, Any], ...] = field(default=())
    verdict: str | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_ROLLOUT_STATES

    def count(self, install: str) -> int:
        return sum(1 for s in self.installs.values() if s == install)


def rollout_facts(status: Mapping[str, Any]) -> RolloutFacts:
    """From the dictionary ``hub rollout status ID --json`` prints."""
    decision = status.get("decision") or {}
    return RolloutFacts(
        rollout=str(status["rollout"]),
        model=str(status["model"]),
        version=int(status["version"]),
        state=str(status["state"]),
        phase=status.get("phase"),
        phase_count=int(status["phase_count"]),
        phase_sizes=tuple(int(s) for s in status.get("phase_sizes", ())),
        reason=str(status.get("reason") or ""),
        installs={d["device"]: str(d["install"]) for d in status.get("devices", [])},
        details={d["device"]: str(d.get("detail") or "") for d in status.get("devices", [])},
        events=tuple(
            (float(e["at"]), str(e["event"]), str(e["detail"])) for e in status.get("events", [])
        ),
        gates=tuple(decision.get("gates", ())),
        verdict=decision.get("verdict"),
    )


class FleetView:
    """Read-only access to the running hub's store."""

    def __init__(self, store_path: Path) -> None:
        self._store: HubStore = open_store(store_path)

    def close(self) -> None:
        self._store.close()

    def devices(self, model: str) -> dict[str, DeviceFacts]:
        return {d.device_id: device_facts(d, model) for d in self._store.list_devices()}

    def rollout(self, rollout_id: str) -> RolloutFacts:
        return rollout_facts(RolloutEngine(self._store).status(rollout_id, time.time()))

    def counters(self) -> dict[str, int]:
        return self._store.counters()
