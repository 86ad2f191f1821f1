"""``hub drift --config``: reference and validation metrics from the published bundle.

A signed bundle carrying a real ``reference.json`` and a packager-style ``validation`` is
published with ``hub publish``; telemetry with returned labels lands in the fleet database
next to the hub store; ``hub drift`` scores against the bundle's reference and compares live
accuracy with the bundle's validation accuracy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from tests.hub.fleet.fleetkit import MODEL, N_FEATURES, classify, fleet, reference, run_cli
from tests.hub.hubkit import make_hub
from tests.support.bundles import placeholder_bundle

from edgefleet.hub.fleet.ingest import FleetTelemetry
from edgefleet.hub.fleet.settings import fleet_location

VALIDATION = {
    "metric": "accuracy",
    "original": {"accuracy": 0.97},
    "packaged": {"accuracy": 0.96},
    "latency_ms": {"p50": 0.4, "p95": 1.5},
}


def test_drift_with_hub_config_uses_the_published_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = make_hub(tmp_path)
    profile = reference(np.random.default_rng(51))
    bundle = tmp_path / "sensor-1.efb"
    placeholder_bundle(
        bundle,
        hub.publisher_key,
        model=MODEL,
        version=1,
        payload_bytes=256,
        reference=profile.to_json().encode(),
        bundle_id="sensor-1",
        labels=[0, 1],
        validation=VALIDATION,
    )
    code, _out, err = run_cli(
        capsys, "hub", "publish", str(bundle), "--config", str(hub.config_path)
    )
    assert code == 0, err

    rng = np.random.default_rng(52)
    telemetry = FleetTelemetry(fleet_location(hub.config().store.path))
    start = time.time() - 3600
    for dev in fleet(["a", "b"], 3):
        for k in range(4):
            X = rng.normal(size=(100, N_FEATURES))
            truth = classify(X)
            wrong = rng.random(len(truth)) < 0.2  # live accuracy ~0.8: far below validation
            truth[wrong] = 1 - truth[wrong]
            dev.record(profile, X, start + k * 300, start + (k + 1) * 300, y_true=truth)
        telemetry.ingest(dev.info, dev.unacked, start + 1300)
    telemetry.close()

    code, out, err = run_cli(
        capsys, "hub", "drift", MODEL, "--config", str(hub.config_path), "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["reference"] is True and result["profile_id"] == profile.profile_id
    assert result["validation"] == {"accuracy": 0.96, "latency_p95_ms": 1.5}
    perf = result["fleet"]["performance"]
    assert perf["labels"] == 6 * 4 * 100
    assert 0.75 < perf["accuracy"] < 0.85
    assert perf["accuracy_drop"] == pytest.approx(0.96 - perf["accuracy"])
    assert result["fleet"]["latency"]["validation_p95_ms"] == 1.5
    assert result["fleet"]["dataset_drift"] is False  # inputs are as in the reference

    code, out, _err = run_cli(capsys, "hub", "drift", MODEL, "--config", str(hub.config_path))
    assert code == 0 and "performance: accuracy 0." in out and "vs validation 0.960" in out
