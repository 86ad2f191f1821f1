"""``hub drift`` scores with the ``[fleet.thresholds]`` of hub.toml (the alert monitor's).

The same fleet database — three of twenty devices see f0 and f1 shifted, which moves the
fleet's W1/std to about 0.2 while its PSI stays below 0.1 — is read with the defaults
(``--db`` only, or a hub.toml without thresholds) and with hub.toml files that change a
threshold; the verdicts follow the configuration and the JSON names what was used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.hub.fleet.fleetkit import MODEL, build_fleet, reference, run_cli
from tests.hub.hubkit import make_hub

from edgefleet.core.drift import DriftThresholds
from edgefleet.hub.fleet.settings import fleet_location

DEFAULTS = DriftThresholds().to_dict()


def drift_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = run_cli(capsys, "hub", "drift", MODEL, "--json", *args)
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def verdicts(result: dict[str, Any]) -> dict[str, str]:
    return {name: f["verdict"] for name, f in result["fleet"]["features"].items()}


@pytest.fixture
def plain(tmp_path: Path) -> tuple[Path, Path]:
    """A hub.toml without [fleet.thresholds] and the fleet database next to its store."""
    hub = make_hub(tmp_path / "plain")
    db = fleet_location(hub.config().store.path)
    build_fleet(db, reference(np.random.default_rng(61)), 2, np.random.default_rng(62))
    return hub.config_path, db


def test_defaults_without_thresholds_in_the_config_or_with_db_only(
    plain: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path, db = plain
    by_db = drift_json(capsys, "--db", str(db))
    by_config = drift_json(capsys, "--config", str(config_path))
    for result in (by_db, by_config):
        assert result["thresholds"] == DEFAULTS
        assert verdicts(result) == {"f0": "drift", "f1": "drift"} | {
            f"f{i}": "no_drift" for i in range(2, 8)
        }
        assert result["fleet"]["dataset_drift"] is False  # 2 of 8 features: share 0.25
        assert result["drifting_groups"] == []  # no --by: the fleet only
    assert by_db["thresholds_from"] == "defaults"
    assert by_config["thresholds_from"] == str(config_path)
    assert by_db["fleet"]["features"]["f0"]["wasserstein"] == pytest.approx(
        by_config["fleet"]["features"]["f0"]["wasserstein"]
    )


@pytest.mark.parametrize(
    ("thresholds", "expected"),
    [
        # W1/std 0.2 is no longer drift, and PSI stays below psi_warn: nothing drifts.
        ("wasserstein_drift = 0.3", {"f0": "no_drift", "dataset_drift": False}),
        # Two drifted features of eight are now enough for dataset drift.
        ("dataset_drift_share = 0.25", {"f0": "drift", "dataset_drift": True}),
        # Too few rows for a verdict at all (12,000 in the range).
        (
            "min_n = 20000\nmin_n_wasserstein = 20000",
            {"f0": "insufficient_data", "dataset_drift": None},
        ),
    ],
)
def test_thresholds_from_hub_toml_change_the_verdict_of_the_same_data(
    plain: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    thresholds: str,
    expected: dict[str, Any],
) -> None:
    _, db = plain
    hub = make_hub(tmp_path / "tuned", extra=f"[fleet.thresholds]\n{thresholds}\n")
    configured = hub.config().fleet.policy.thresholds.to_dict()
    assert configured != DEFAULTS

    result = drift_json(capsys, "--config", str(hub.config_path), "--db", str(db))
    assert result["thresholds"] == configured
    assert result["thresholds_from"] == str(hub.config_path)
    assert result["fleet"]["features"]["f0"]["verdict"] == expected["f0"]
    assert result["fleet"]["dataset_drift"] is expected["dataset_drift"]
    # The same data read with the defaults still says drift for f0.
    assert verdicts(drift_json(capsys, "--db", str(db)))["f0"] == "drift"

    code, out, err = run_cli(
        capsys, "hub", "drift", MODEL, "--config", str(hub.config_path), "--db", str(db)
    )
    assert code == 0, err
    assert f"thresholds ([fleet.thresholds] of {hub.config_path})" in out


def test_text_output_says_the_defaults_were_used(
    plain: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, db = plain
    code, out, err = run_cli(capsys, "hub", "drift", MODEL, "--db", str(db))
    assert code == 0, err
    assert "thresholds (defaults): PSI warn 0.1 / drift 0.2, JS 0.1, W1/std 0.1" in out
