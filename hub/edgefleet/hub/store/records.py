"""Rows of the hub store as frozen dataclasses, independent of the database.

Invariants: records are values (frozen, JSON-serialisable parts only); times
are epoch seconds; a device's ``desired_rev`` grows by one on every change of
its desired assignments, and a directive remembers the revision it was built
from, so "is the published directive current?" is one integer comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.hub.fleet.totals import WindowTotals
from edgefleet.hub.rollout.gates import InstallStatus
from edgefleet.hub.rollout.machine import RolloutStatus
from edgefleet.hub.rollout.plan import RolloutPlan


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    profile: str
    password_hash: str  # mosquitto PBKDF2-SHA512 "$7$..." string, never the password
    created_at: float
    group: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    last_seen: float | None = None
    online: bool = False
    state: Mapping[str, Any] = field(default_factory=dict)
    state_at: float | None = None
    desired_rev: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Public view (no password hash)."""
        return {
            "device": self.device_id,
            "profile": self.profile,
            "group": self.group,
            "tags": dict(self.tags),
            "created_at": self.created_at,
            "last_seen": self.last_seen,
            "online": self.online,
            "state": dict(self.state),
            "state_at": self.state_at,
        }


@dataclass(frozen=True)
class DeviceHead:
    """What the tick needs of every device: no state document to decode."""

    online: bool
    desired_rev: int


@dataclass(frozen=True)
class BundleRecord:
    sha256: str
    model: str
    version: int
    profile: str | None
    size: int
    path: str  # relative to the bundle store root
    manifest: Mapping[str, Any]
    signer_keyids: tuple[str, ...]
    published_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "model": self.model,
            "version": self.version,
            "profile": self.profile,
            "size": self.size,
            "path": self.path,
            "signer_keyids": list(self.signer_keyids),
            "published_at": self.published_at,
        }


@dataclass(frozen=True)
class DesiredAssignment:
    """What the hub wants one device to run for one model (a directive assignment)."""

    model: str
    bundle_sha256: str
    version: int
    size: int
    rollout_id: str
    mode: str = "active"
    allow_downgrade: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "bundle_sha256": self.bundle_sha256,
            "version": self.version,
            "size": self.size,
            "rollout_id": self.rollout_id,
            "mode": self.mode,
            "allow_downgrade": self.allow_downgrade,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DesiredAssignment:
        return cls(
            model=str(data["model"]),
            bundle_sha256=str(data["bundle_sha256"]),
            version=int(data["version"]),
            size=int(data["size"]),
            rollout_id=str(data["rollout_id"]),
            mode=str(data.get("mode", "active")),
            allow_downgrade=bool(data.get("allow_downgrade", False)),
        )


@dataclass(frozen=True)
class RolloutRecord:
    plan: RolloutPlan
    status: RolloutStatus
    created_at: float

    @property
    def rollout_id(self) -> str:
        return self.plan.rollout_id


@dataclass(frozen=True)
class RolloutDeviceRecord:
    rollout_id: str
    device_id: str
    phase: int
    bundle_sha256: str
    size: int
    previous_version: int | None = None
    previous_sha256: str | None = None
    previous_size: int | None = None
    install: InstallStatus = InstallStatus.PENDING
    assigned_at: float | None = None  # None until its phase starts
    settled_at: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device_id,
            "phase": self.phase,
            "bundle_sha256": self.bundle_sha256,
            "previous_version": self.previous_version,
            "install": self.install.value,
            "assigned_at": self.assigned_at,
            "settled_at": self.settled_at,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class DirectiveRecord:
    device_id: str
    seq: int
    issued_at: float
    expires_at: float
    desired_rev: int
    envelope: Mapping[str, Any]
    published_at: float | None = None


@dataclass(frozen=True)
class DirectiveHead:
    """A device's latest directive without its envelope (enough to know if it is due)."""

    seq: int
    expires_at: float
    desired_rev: int
    published_at: float | None


@dataclass(frozen=True)
class DeviceRolloutRow:
    """A device's row in one rollout, with the version that rollout installs."""

    rollout_version: int
    row: RolloutDeviceRecord


@dataclass(frozen=True)
class StoredWindow:
    """One telemetry window as the rollout gates read it: its operational totals."""

    device_id: str
    version: int
    received_at: float
    totals: WindowTotals


@dataclass(frozen=True)
class RolloutEventRecord:
    rollout_id: str
    at: float
    event: str
    detail: str


@dataclass(frozen=True)
class DeviceTally:
    """Devices without desired assignments that share a group, a presence and a state report
    (the fleet overview counts them without reading each device's row)."""

    group: str | None
    online: bool
    state: Mapping[str, Any]
    devices: int
