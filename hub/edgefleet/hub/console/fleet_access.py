"""Read access to the fleet database (drift windows, alerts) for commands and the API.

The fleet tables live in the hub store's database (:func:`fleet_location`), written only
by ``hub serve``; everything here reads it. Reference profiles and validation metrics come
from the hub's bundle store when a hub store is at hand, else from the copy the service
cached in the fleet database. Verdicts use ``[fleet.thresholds]`` of the config (the ones the
alert monitor scores with), or the defaults when only a database file is named.

Invariant: nothing here creates a fleet database; a missing one is
:class:`~edgefleet.hub.errors.HubNotFoundError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.core.drift import DriftThresholds
from edgefleet.hub.bundles import PublishedBundleStore
from edgefleet.hub.config import HubConfig, load_config
from edgefleet.hub.errors import HubNotFoundError
from edgefleet.hub.fleet.database import (
    FleetDatabase,
    fleet_database_exists,
    open_fleet_database,
)
from edgefleet.hub.fleet.references import (
    ReferenceLoader,
    References,
    ValidationLoader,
    bundle_loaders,
)
from edgefleet.hub.fleet.settings import FleetSettings, fleet_location
from edgefleet.hub.fleet.window_store import FleetWindowStore
from edgefleet.hub.store import HubStore, open_store


@dataclass
class FleetView:
    """What a read-only fleet query needs."""

    store: FleetWindowStore
    references: References
    db: FleetDatabase
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    thresholds_from: str = "defaults"  # or the hub.toml whose [fleet.thresholds] they are


def open_view(
    db_path: Path | str,
    hub_store: HubStore | None,
    config: HubConfig | None,
) -> FleetView:
    """Open the fleet database at ``db_path`` read-only; the caller closes ``view.db``."""
    if not fleet_database_exists(db_path):
        raise HubNotFoundError(f"no fleet database at {db_path} (has the hub received telemetry?)")
    loaders: tuple[ReferenceLoader | None, ValidationLoader | None] = (None, None)
    thresholds, thresholds_from = DriftThresholds(), "defaults"
    if config is not None:
        thresholds = config.fleet.policy.thresholds
        thresholds_from = str(config.source)
        if hub_store is not None:
            loaders = bundle_loaders(
                hub_store, PublishedBundleStore(config.store.bundles_dir, hub_store).local_path
            )
    db = open_fleet_database(db_path)
    store = FleetWindowStore(db, FleetSettings())
    references = References(*loaders, cache=store, write_cache=False)
    return FleetView(store, references, db, thresholds, thresholds_from)


@contextmanager
def open_fleet(config_path: Path | None, db_path: Path | str | None) -> Iterator[FleetView]:
    """The fleet database from ``--db`` or from the hub config; never creates one."""
    hub_store = None
    config = None
    if db_path is None or config_path is not None:
        config = load_config(config_path)
        if db_path is None:
            db_path = fleet_location(config.store.location)
        if not config.store.is_sqlite or config.store.path.exists():
            hub_store = open_store(config.store.location)
    try:
        view = open_view(db_path, hub_store, config)
    except BaseException:
        if hub_store is not None:
            hub_store.close()
        raise
    try:
        yield view
    finally:
        view.db.close()
        if hub_store is not None:
            hub_store.close()
