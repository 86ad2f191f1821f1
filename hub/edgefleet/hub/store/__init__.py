"""The hub store: an interface (:class:`HubStore`) and its two engines.

SQLite (a file path; the default) and PostgreSQL (a ``postgresql://`` URL) share their
queries (:mod:`edgefleet.hub.store.sql_store`) and differ in connections only.
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.hub.errors import FencedError
from edgefleet.hub.store.base import HubStore
from edgefleet.hub.store.records import (
    BundleRecord,
    DesiredAssignment,
    DeviceHead,
    DeviceRecord,
    DeviceRolloutRow,
    DeviceTally,
    DirectiveHead,
    DirectiveRecord,
    RolloutDeviceRecord,
    RolloutEventRecord,
    RolloutRecord,
    StoredWindow,
)
from edgefleet.hub.store.sqlite import SqliteHubStore


def open_store(location: Path | str) -> HubStore:
    """Open the store at ``location``: a ``postgresql://`` URL, else an SQLite file path."""
    from edgefleet.hub.store.postgres import PostgresHubStore, is_postgres_url

    if isinstance(location, str) and is_postgres_url(location):
        return PostgresHubStore(location)
    return SqliteHubStore(Path(location))


__all__ = [
    "BundleRecord",
    "DesiredAssignment",
    "DeviceHead",
    "DeviceRecord",
    "DeviceRolloutRow",
    "DeviceTally",
    "DirectiveHead",
    "DirectiveRecord",
    "FencedError",
    "HubStore",
    "RolloutDeviceRecord",
    "RolloutEventRecord",
    "RolloutRecord",
    "SqliteHubStore",
    "StoredWindow",
    "open_store",
]
