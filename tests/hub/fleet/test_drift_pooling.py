"""One device cannot decide a scope's drift (real SQLite fleet store, `hub drift`, monitor).

Four honest devices and one device (``east-d04``) sending 10^6 rows in one hour-long window
— plausible numbers, within the telemetry bounds (278 requests/s under the default ceiling
of 1000). Merged exactly, as before, that one device made the whole fleet drift, or hid the
drift the four others showed; pooled per device by the evidence rule it does neither, while
its own scope (``--by device``) and the device-scope alerts still name it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.hub.fleet.fleetkit import MODEL, N_FEATURES, SimDevice, reference, run_cli

from edgefleet.core.protocol.bounds import WindowLimits, record_refusal
from edgefleet.hub.fleet.alerts import AlertPolicy
from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry
from edgefleet.hub.fleet.monitor import FleetMonitor
from edgefleet.hub.fleet.references import References

T0 = float(1_700_000_000 // 3600 * 3600)
HUGE_ROWS = 10**6
ODD = "east-d04"
HONEST = [f"east-d0{i}" for i in range(4)]


def shifted(X: np.ndarray) -> np.ndarray:
    X = X.copy()
    X[:, :6] += 2.0  # six of eight features, two standard deviations
    return X


def store_fleet(db: Path, odd_drifts: bool) -> tuple[FleetTelemetry, FleetMonitor]:
    """Two hours of windows: the honest devices 600 rows an hour; the odd device 10^6 once."""
    rng = np.random.default_rng(12)
    profile = reference(rng)
    telemetry = FleetTelemetry(db)
    telemetry.store.put_reference(MODEL, 1, profile.to_json(), {}, T0)
    monitor = FleetMonitor(
        telemetry,
        References(lambda m, v: profile, cache=telemetry.store),
        AlertPolicy(k_fire=1, k_resolve=1, scopes=("fleet", "group", "device")),
    )
    devices = [SimDevice(DeviceInfo(d, "east", "rpi4-arm64")) for d in [*HONEST, ODD]]
    limits = WindowLimits(now=T0 + 2 * 3600 + 5, max_age_s=7 * 86400, max_requests_per_s=1000)
    for hour in range(2):
        start, end = T0 + hour * 3600, T0 + (hour + 1) * 3600
        for dev in devices:
            odd = dev.info.id == ODD
            X = rng.normal(size=(HUGE_ROWS if odd else 600, N_FEATURES))
            if odd == odd_drifts:
                X = shifted(X)
            if odd and hour == 1:
                continue  # one huge window is enough
            record = dev.record(profile, X, start, end)
            assert record_refusal(record, limits) is None  # plausible, within the bounds
            dev.ack(telemetry.ingest(dev.info, dev.unacked, end + 5).highest_contiguous_seq)
    return telemetry, monitor


def drift_json(capsys: pytest.CaptureFixture[str], db: Path, *by: str) -> dict:
    code, out, err = run_cli(
        capsys, "hub", "drift", MODEL, "--db", str(db), "--since", "all", *by, "--json"
    )
    assert code == 0, err
    return json.loads(out)


def fired(monitor: FleetMonitor) -> set[tuple[str, str, str]]:
    events = monitor.run_once(T0 + 2 * 3600 + 10)
    return {(e.alert.rule, e.alert.scope_kind, e.alert.scope) for e in events if e.kind == "fired"}


def test_one_device_with_a_million_drifted_rows_does_not_make_the_fleet_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "fleet.db"
    telemetry, monitor = store_fleet(db, odd_drifts=True)
    alerts = fired(monitor)
    telemetry.close()

    result = drift_json(capsys, db)
    fleet = result["fleet"]
    assert fleet["dataset_drift"] is False and fleet["drifted_features"] == []
    assert fleet["prediction"]["verdict"] != "drift"
    assert (fleet["devices"], fleet["drift_devices"], fleet["drift_pooled"]) == (5, 5, True)
    assert fleet["rows"] < 4 * 1200 * 4 / 3 + 1  # the odd device adds at most its share
    assert fleet["requests"] == 4 * 1200 + HUGE_ROWS  # counts are shown as sent

    by_device = drift_json(capsys, db, "--by", "device")
    assert by_device["drifting_groups"] == [ODD]  # its own scope shows it, by name
    assert by_device["groups"][ODD]["dataset_drift"] is True
    assert by_device["groups"][ODD]["drift_pooled"] is False  # one device: exact

    assert ("dataset_drift", "device", ODD) in alerts
    assert not {a for a in alerts if a[1] in ("fleet", "group")}, alerts


def test_one_device_with_a_million_quiet_rows_does_not_hide_the_drift_of_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "fleet.db"
    telemetry, monitor = store_fleet(db, odd_drifts=False)
    alerts = fired(monitor)
    telemetry.close()

    fleet = drift_json(capsys, db)["fleet"]
    assert fleet["dataset_drift"] is True
    assert len(fleet["drifted_features"]) == 6
    assert fleet["drift_devices"] == 5 and fleet["drift_pooled"] is True

    by_group = drift_json(capsys, db, "--by", "group")
    assert by_group["drifting_groups"] == ["east"]
    assert ("dataset_drift", "fleet", "*") in alerts
    assert ("dataset_drift", "group", "east") in alerts
    assert ("dataset_drift", "device", ODD) not in alerts


def test_a_balanced_fleet_is_still_the_exact_merge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(13)
    profile = reference(rng)
    db = tmp_path / "fleet.db"
    telemetry = FleetTelemetry(db)
    telemetry.store.put_reference(MODEL, 1, profile.to_json(), {}, T0)
    rows = 0
    for i in range(5):
        dev = SimDevice(DeviceInfo(f"d{i}", "g", "rpi4-arm64"))
        n = 400 + 50 * i  # the largest holds 600 / 2500 = 24% of the rows: within 25%
        rows += n
        dev.record(profile, rng.normal(size=(n, N_FEATURES)), T0, T0 + 600)
        telemetry.ingest(dev.info, dev.unacked, T0 + 605)
    telemetry.close()
    fleet = drift_json(capsys, db)["fleet"]
    assert (fleet["rows"], fleet["drift_devices"], fleet["drift_pooled"]) == (rows, 5, False)
