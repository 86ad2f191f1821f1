"""The hub store: an interface (:class:`HubStore`) and its SQLite implementation."""

from __future__ import annotations

from pathlib import Path

from edgefleet.hub.store.base import HubStore
from edgefleet.hub.store.records import (
    BundleRecord,
    DesiredAssignment,
    DeviceHead,
    DeviceRecord,
    DeviceRolloutRow,
    DirectiveHead,
    DirectiveRecord,
    RolloutDeviceRecord,
    RolloutEventRecord,
    RolloutRecord,
    StoredWindow,
    TelemetryRow,
)
from edgefleet.hub.store.sqlite import SqliteHubStore


def open_store(path: Path) -> HubStore:
    """Open the store at ``path`` (SQLite today; a URL scheme will pick PostgreSQL)."""
    return SqliteHubStore(path)


__all__ = [
    "BundleRecord",
    "DesiredAssignment",
    "DeviceHead",
    "DeviceRecord",
    "DeviceRolloutRow",
    "DirectiveHead",
    "DirectiveRecord",
    "HubStore",
    "RolloutDeviceRecord",
    "RolloutEventRecord",
    "RolloutRecord",
    "SqliteHubStore",
    "StoredWindow",
    "TelemetryRow",
    "open_store",
]
