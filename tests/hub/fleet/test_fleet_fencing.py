"""The once-per-fleet work's fleet writes carry the lease epoch (both engines): the lease
row lives in the same database as the fleet tables, so a monitor round or a maintenance
step that a paused or cut-off hub finishes after another hub took the lease over is
refused whole, with nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.hub.errors import FencedError
from edgefleet.hub.fleet.ingest import FleetTelemetry
from edgefleet.hub.fleet.settings import FleetSettings, fleet_location
from edgefleet.hub.singleton import LEASE
from edgefleet.hub.store import HubStore


def counter(telemetry: FleetTelemetry, name: str) -> int:
    return telemetry.db.counters().get(name, 0)


def bump(telemetry: FleetTelemetry, name: str) -> None:
    with telemetry.db.write() as conn:
        telemetry.db.bump(conn, {name: 1})


def test_a_fleet_write_under_an_epoch_taken_over_is_refused(
    any_store: HubStore, store_location: Path | str
) -> None:
    telemetry = FleetTelemetry(fleet_location(store_location), FleetSettings())
    try:
        assert any_store.claim_lease(LEASE, "hub-a", 0.001) == 1
        with telemetry.db.fenced(LEASE, 1):
            bump(telemetry, "probe")  # the epoch holds: written
        assert counter(telemetry, "probe") == 1

        # hub-a's lease runs out while it is paused; hub-b takes the work over.
        taken = None
        while taken is None:
            taken = any_store.claim_lease(LEASE, "hub-b", 30.0)
        assert taken == 2
        with telemetry.db.fenced(LEASE, 1), pytest.raises(FencedError, match="epoch 1"):
            bump(telemetry, "probe")
        assert counter(telemetry, "probe") == 1  # nothing of the refused write
        bump(telemetry, "probe")  # outside the fence (ingest): not affected
        with telemetry.db.fenced(LEASE, 2):
            bump(telemetry, "probe")
        assert counter(telemetry, "probe") == 3
    finally:
        telemetry.close()
