"""The screen's decoded windows are stored without a second decode, and exactly as the
same records stored undecoded: same rows, same rollups, same drift."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from tests.hub.fleet.fleetkit import reference, window_record

from edgefleet.core.drift import WindowStats
from edgefleet.core.protocol import TelemetryBatch, TelemetryRecord
from edgefleet.hub.fleet import group_commit
from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry
from edgefleet.hub.fleet.screening import ScreenedWindow, TelemetryScreen

PROFILE = reference(np.random.default_rng(5))


def batch(device: str, now: float) -> TelemetryBatch:
    rng = np.random.default_rng(9)
    records = [
        window_record(seq, PROFILE, rng.normal(size=(40, 8)), now - 300 + seq, now - 290 + seq)
        for seq in range(1, 6)
    ]
    broken = dict(records[2].body, drift="not base64!")  # stored as malformed either way
    records[2] = TelemetryRecord(3, "window", broken)
    return TelemetryBatch.of(device, records)


def stored(location: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    telemetry = FleetTelemetry(location)
    try:
        with telemetry.db.read() as conn:
            records = conn.execute(
                "SELECT seq, kind, summary, drift, rolled FROM fleet_records ORDER BY seq"
            ).fetchall()
            rollups = conn.execute(
                "SELECT level, device, grp, windows, summary, drift FROM fleet_rollups"
                " ORDER BY level, device, grp"
            ).fetchall()
    finally:
        telemetry.close()
    return [tuple(r) for r in records], [tuple(r) for r in rollups]


def test_screened_windows_are_stored_like_undecoded_ones_without_a_second_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    plain = batch("pi-1", now)
    screened = TelemetryScreen(86400.0).screen("pi-1", "rpi4-arm64", plain, now)
    assert screened is not None
    kinds = [type(r) for r in screened.records]
    assert kinds == [ScreenedWindow] * 2 + [TelemetryRecord] + [ScreenedWindow] * 2
    first = screened.records[0]
    assert isinstance(first, ScreenedWindow) and isinstance(first.stats, WindowStats)
    assert (first.seq, first.kind, first.body) == (1, "window", plain.records[0].body)

    decoded: list[int] = []
    real = group_commit.decode_many

    def counting(blobs: list[bytes]) -> list[WindowStats | None]:
        decoded.append(len(blobs))
        return real(blobs)

    monkeypatch.setattr(group_commit, "decode_many", counting)
    for name, records in (("screened", screened), ("plain", plain)):
        telemetry = FleetTelemetry(tmp_path / f"{name}.db")
        try:
            result = telemetry.ingest(DeviceInfo("pi-1", "lab", "rpi4-arm64"), records, now)
        finally:
            telemetry.close()
        assert (result.stored, result.malformed, result.highest_contiguous_seq) == (5, 1, 5)
    assert decoded == [0, 4]  # the screened batch needed no decode; the plain one four
    assert stored(tmp_path / "screened.db") == stored(tmp_path / "plain.db")
