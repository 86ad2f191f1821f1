"""Hub limits for a bad day: hostile numbers, broken stores and odd umasks are refused
with one line naming the problem, and nothing half-written is left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.hub.hubkit import HubFixture, make_hub
from tests.support.bundles import placeholder_bundle

import edgefleet.core.manifest as manifest_module


def hub_cli(
    fx: HubFixture, *args: str, umask: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.core.cli.main",
            "hub",
            *args,
            "--config",
            str(fx.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=None if umask is None else (lambda: _set_umask(umask)),
    )


def _set_umask(mask: int) -> None:
    import os

    os.umask(mask)


@pytest.mark.subprocess
def test_publish_refuses_a_version_beyond_two_to_the_53(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fx = make_hub(tmp_path)
    # A publisher whose tools know no bound signs version 2^63.
    monkeypatch.setattr(manifest_module, "MAX_MODEL_VERSION", 2**64)
    info = placeholder_bundle(tmp_path / "huge.efb", fx.publisher_key, version=2**63)
    monkeypatch.undo()
    result = hub_cli(fx, "publish", str(info.path))
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1 and "must be at most 9007199254740991" in result.stderr
    bundles = fx.config().store.bundles_dir
    assert not bundles.exists() or [p for p in bundles.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    ("section", "line", "field"),
    [
        ("service", "tick_s = nan", "service.tick_s"),
        ("directives", "expiry_s = inf", "directives.expiry_s"),
        ("fleet", "error_rate = nan", "fleet.error_rate"),
        ("fleet.thresholds", "psi_drift = -inf", "fleet.thresholds.psi_drift"),
    ],
)
@pytest.mark.subprocess
def test_nan_and_infinity_in_hub_toml_are_refused(
    tmp_path: Path, section: str, line: str, field: str
) -> None:
    fx = make_hub(tmp_path, extra=f"[{section}]\n{line}\n")
    result = hub_cli(fx, "devices")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and field in result.stderr
    assert "finite" in result.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "nan%"])
def test_a_nan_gate_is_refused(tmp_path: Path, value: str) -> None:
    fx = make_hub(tmp_path)
    info = placeholder_bundle(tmp_path / "d1.efb", fx.publisher_key, version=1)
    assert hub_cli(fx, "publish", str(info.path)).returncode == 0
    added = hub_cli(
        fx, "device", "add", "pi-1", "--profile", "rpi4-arm64", "--out", str(tmp_path / "pi-1")
    )
    assert added.returncode == 0, added.stderr
    result = hub_cli(
        fx, "rollout", "create", "digits:1", "--to", "all", "--gate", f"max_prediction_psi={value}"
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "max_prediction_psi" in result.stderr
