"""``hub evidence MODEL:V --json`` and ``registry compare A B --evidence FILE...``.

Two versions of one model report from a simulated fleet (real fleet database,
real ingest): version 1 with labels coming back late and a few errors,
version 2 on fewer devices with slower answers. The exported evidence goes
beside the registry's metrics of the same two versions.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
from tests.hub.fleet.fleetkit import MODEL, N_FEATURES, classify, fleet, reference, run_cli

from edgefleet.core.drift import ReferenceProfile
from edgefleet.hub.fleet.ingest import FleetTelemetry
from edgefleet.hub.fleet.settings import FleetSettings


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    return reference(np.random.default_rng(5))


def _fleet_db(db: Path, profile: ReferenceProfile) -> None:
    settings = FleetSettings()
    current = time.time()
    telemetry = FleetTelemetry(db, settings)
    for version in (1, 2):
        telemetry.store.put_reference(MODEL, version, profile.to_json(), {"accuracy": 0.9}, current)
    start = settings.bucket_of(current) - 2 * settings.bucket_s
    rng = np.random.default_rng(1)
    for i, dev in enumerate(fleet(("north", "south"), 3)):
        version = 1 if i < 4 else 2
        for k in range(3):
            X = rng.normal(size=(50, N_FEATURES))
            y_true = classify(X)
            y_true[:5] = 1 - y_true[:5]  # 10% of the late labels disagree
            dev.record(
                profile, X, start + k * 60, start + (k + 1) * 60,
                version=version, y_true=y_true if version == 1 else None,
                errors=1 if version == 1 else 0, latency_ms=3.0 if version == 1 else 30.0,
            )  # fmt: skip
        telemetry.ingest(dev.info, dev.unacked, start + 400)
    telemetry.close()


def _register_two_versions(capsys: pytest.CaptureFixture[str], registry: Path, tmp: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, N_FEATURES))
    for c, accuracy in ((0.1, "0.91"), (1.0, "0.93")):
        path = tmp / f"m{c}.joblib"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            joblib.dump(LogisticRegression(C=c).fit(x, classify(x)), path)
        code, _, err = run_cli(
            capsys, "registry", "register", str(path), "--name", MODEL, "--metric",
            f"accuracy={accuracy}", "--registry", str(registry),
        )  # fmt: skip
        assert code == 0, err


@pytest.mark.subprocess  # registration asks git for the commit
def test_evidence_export_and_compare_beside_registry_metrics(
    tmp_path: Path, profile: ReferenceProfile, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "fleet.db"
    _fleet_db(db, profile)
    files = []
    for version in (1, 2):
        code, out, err = run_cli(
            capsys, "hub", "evidence", f"{MODEL}:{version}", "--db", str(db), "--json"
        )
        assert code == 0, err
        path = tmp_path / f"evidence-{version}.json"
        path.write_text(out)
        files.append(path)
    v1 = json.loads(files[0].read_text())
    assert v1["kind"] == "edgefleet.field_evidence" and v1["model_version"] == 1
    assert v1["devices"] == 4 and v1["inferences"] == 4 * 3 * 50
    assert v1["errors"] == 12 and v1["error_rate"] == pytest.approx(12 / 600)
    assert v1["accuracy"] == pytest.approx(0.9) and v1["labels"] == 600
    assert v1["latency_p95_ms"] is not None and v1["drift_share"] is not None
    v2 = json.loads(files[1].read_text())
    assert v2["devices"] == 2 and v2["accuracy"] is None and v2["error_rate"] == 0.0
    assert v2["latency_p95_ms"] > v1["latency_p95_ms"]

    registry = tmp_path / "registry"
    _register_two_versions(capsys, registry, tmp_path)
    base = ["registry", "compare", f"{MODEL}:1", f"{MODEL}:2", "--registry", str(registry)]
    code, out, err = run_cli(capsys, *base, "--evidence", str(files[0]), "--evidence",
                             str(files[1]), "--json")  # fmt: skip
    assert code == 0, err
    compared = json.loads(out)
    rows = {r["key"]: r for r in compared["evidence"]}
    assert rows["devices"]["a"] == 4 and rows["devices"]["b"] == 2
    assert rows["devices"]["delta"] == -2
    assert rows["accuracy"]["a"] == pytest.approx(0.9) and rows["accuracy"]["b"] is None
    metrics = {r["key"]: r for r in compared["metrics"]}
    assert metrics["accuracy"]["a"] == 0.91 and metrics["accuracy"]["b"] == 0.93

    code, out, err = run_cli(capsys, *base, "--evidence", str(files[0]))
    assert code == 0, err
    assert "EVIDENCE" in out and "error_rate" in out and "METRICS" in out


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"kind": "other"}, "is not field evidence"),
        (
            {"kind": "edgefleet.field_evidence", "version": 1, "model": "x", "model_version": 1},
            "is evidence for x:1",
        ),
        (
            {
                "kind": "edgefleet.field_evidence",
                "version": 1,
                "model": MODEL,
                "model_version": 1,
                "accuracy": "high",
            },
            "accuracy must be a finite number",
        ),
    ],
)
def test_bad_evidence_files_are_refused_in_one_line(
    tmp_path: Path, doc: dict[str, object], needle: str
) -> None:
    from edgefleet.packager.errors import DataFileError
    from edgefleet.packager.registry.evidence import evidence_rows

    path = tmp_path / "e.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataFileError, match=needle):
        evidence_rows((f"{MODEL}:1", f"{MODEL}:2"), [path])
