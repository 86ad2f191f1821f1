"""Drift on some devices only: the breakdowns name exactly them, the fleet follows the share rule.

Also exercises ``edgefleet hub drift`` end to end (``--db``, ``--by``, ``--json``, errors).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from tests.hub.fleet.fleetkit import (
    DRIFTED,
    MODEL,
    N_FEATURES,
    WINDOWS,
    build_fleet,
    reference,
    run_cli,
)

from edgefleet.core.drift import ReferenceProfile
from edgefleet.hub.fleet.aggregate import DriftQuery, FleetAggregator
from edgefleet.hub.fleet.ingest import FleetTelemetry
from edgefleet.hub.fleet.references import References


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    return reference(np.random.default_rng(11))


@pytest.mark.parametrize(("drifted_features", "dataset_drift"), [(5, True), (3, False)])
def test_breakdown_names_the_drifting_devices_and_group(
    tmp_path: Path, profile: ReferenceProfile, drifted_features: int, dataset_drift: bool
) -> None:
    db = tmp_path / "fleet.db"
    build_fleet(db, profile, drifted_features, np.random.default_rng(drifted_features))
    telemetry = FleetTelemetry(db)
    aggregator = FleetAggregator(telemetry.store, References(cache=telemetry.store))
    now = time.time()

    by_device = aggregator.query(DriftQuery(MODEL, by="device", since_s=now - 86400), now)
    assert by_device.drifting_groups() == sorted(DRIFTED)
    for name in DRIFTED:
        assert by_device.groups[name].drifted_features() == [
            f"f{i}" for i in range(drifted_features)
        ]

    by_group = aggregator.query(DriftQuery(MODEL, by="group", since_s=now - 86400), now)
    assert by_group.drifting_groups() == ["east"]

    fleet_report = by_group.fleet.report
    assert fleet_report is not None
    assert fleet_report.n_drifted == drifted_features
    assert fleet_report.drift_share == pytest.approx(drifted_features / N_FEATURES)
    assert fleet_report.dataset_drift is dataset_drift  # share >= 0.5 rule


def test_cli_drift_json_text_and_errors(
    tmp_path: Path, profile: ReferenceProfile, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "fleet.db"
    build_fleet(db, profile, 5, np.random.default_rng(3))
    base = ["hub", "drift", "--db", str(db)]

    code, out, err = run_cli(capsys, *base, f"{MODEL}:1", "--by", "device", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["drifting_groups"] == sorted(DRIFTED)
    assert result["fleet"]["windows"] == 20 * WINDOWS
    assert result["fleet"]["dataset_drift"] is True
    assert set(result["fleet"]["features"]["f0"]) >= {"psi", "js", "wasserstein", "verdict"}
    quality = result["fleet"]["data_quality"]
    assert quality["nan_rate"] == 0.0 and quality["schema_violation_rate"] == 0.0
    assert result["fleet"]["prediction"]["verdict"] in ("drift", "warn", "no_drift")
    assert result["fleet"]["performance"] is None  # no labels came back
    assert result["timeline"], "scores over time are part of the JSON"

    code, out, err = run_cli(capsys, *base, MODEL, "--by", "group")
    assert code == 0, err
    assert "DATASET DRIFT" in out and "east" in out

    for argv, needle in [
        ([*base, "nosuch"], "no telemetry stored for model 'nosuch'"),
        ([*base, f"{MODEL}:9"], "no telemetry for sensor:9"),
        ([*base, MODEL, "--since", "soon"], "not a duration"),
        (["hub", "drift", MODEL, "--db", str(tmp_path / "none.db")], "no fleet database"),
    ]:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert out == "" and needle in err
    assert not (tmp_path / "none.db").exists()  # a read-only command creates nothing
