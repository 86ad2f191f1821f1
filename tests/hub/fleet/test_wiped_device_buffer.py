"""A device whose telemetry buffer was wiped keeps reaching the hub.

Re-provisioning a device with the same credentials (new SD card, state directory
deleted) used to restart its seqs at 1: the hub, which dedupes on (device, seq), took
the new records for copies of old ones and dropped them while acking them. A new
buffer now numbers from the wall clock in milliseconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tests.hub.fleet.fleetkit import N_FEATURES, reference, window_record

from edgefleet.agent.telemetry.buffer import TelemetryBuffer
from edgefleet.core.protocol import TelemetryBatch, TelemetryRecord
from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry

DEVICE = DeviceInfo("pi-wiped", "lab", "rpi4-arm64", {})
PROFILE = reference(np.random.default_rng(5))


def ship(buffer: TelemetryBuffer, fleet: FleetTelemetry) -> tuple[int, int]:
    """Lease everything, ingest it as the hub would, ack; (stored, duplicates)."""
    stored = duplicates = 0
    while (lease := buffer.lease(time.time(), max_records=50)) is not None:
        records = tuple(TelemetryRecord(r.seq, r.kind, r.body) for r in lease.records)
        batch = TelemetryBatch(DEVICE.id, lease.first_seq, lease.last_seq, records)
        result = fleet.ingest(DEVICE, batch, time.time())
        stored, duplicates = stored + result.stored, duplicates + result.duplicates
        assert result.highest_contiguous_seq is not None
        buffer.ack(result.highest_contiguous_seq)
    return stored, duplicates


def fill(buffer: TelemetryBuffer, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t0 = time.time() - 3600
    for i in range(n):
        body = window_record(
            0, PROFILE, rng.normal(size=(10, N_FEATURES)), t0 + 60 * i, t0 + 60 * i + 60
        )
        buffer.append("window", dict(body.body))


def test_records_of_a_wiped_buffer_are_stored_not_taken_for_duplicates(tmp_path: Path) -> None:
    fleet = FleetTelemetry(tmp_path / "hub.fleet.db")
    state = tmp_path / "state"
    state.mkdir()
    before = int(time.time() * 1000)
    old = TelemetryBuffer(state / "telemetry.db", 1 << 20)
    fill(old, 30, seed=1)
    assert min(r.seq for r in old.records()) >= before  # numbered from the wall clock
    assert ship(old, fleet) == (30, 0)
    old.close()
    for path in state.iterdir():  # the SD card is replaced: nothing of the old state is left
        path.unlink()
    new = TelemetryBuffer(state / "telemetry.db", 1 << 20)
    fill(new, 20, seed=2)
    assert ship(new, fleet) == (20, 0)  # stored, none dropped as a "duplicate"
    new.close()


def test_an_existing_buffer_keeps_its_numbering(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    first = TelemetryBuffer(path, 1 << 20, first_seq=1)
    assert first.append("event", {"model": "m", "state": "committed", "at": 1.0}) == 1
    first.close()
    again = TelemetryBuffer(path, 1 << 20)  # reopened: the stored next_seq wins
    assert again.append("event", {"model": "m", "state": "committed", "at": 2.0}) == 2
    again.close()
