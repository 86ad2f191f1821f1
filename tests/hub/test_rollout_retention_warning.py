"""``hub rollout create`` warns when the gates' baseline reaches back past telemetry retention
(``[fleet] raw_retention_s``: telemetry is stored once, in the fleet tables)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.hub.hubkit import HubFixture, make_hub
from tests.support.bundles import placeholder_bundle

from edgefleet.core.cli.main import main

RETENTION_S = 86_400  # [fleet] raw_retention_s: the default baseline_lookback_s


def run(hub: HubFixture, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["hub", *args, "--config", str(hub.config_path)])
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


@pytest.fixture
def hub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> HubFixture:
    hub = make_hub(tmp_path, extra=f"[fleet]\nraw_retention_s = {RETENTION_S}\n")
    for i in range(2):
        code, _, err = run(hub, capsys, "device", "add", f"pi-{i}", "--profile", "rpi4-arm64")
        assert code == 0, err
    bundle = placeholder_bundle(tmp_path / "d2.efb", hub.publisher_key, version=2).path
    code, _, err = run(hub, capsys, "publish", str(bundle))
    assert code == 0, err
    return hub


def create(
    hub: HubFixture, capsys: pytest.CaptureFixture[str], rollout_id: str, *gates: str
) -> tuple[int, str, str]:
    gate_args = [a for g in gates for a in ("--gate", g)]
    return run(
        hub, capsys, "rollout", "create", "digits:2", "--to", "all", "--id", rollout_id,
        *gate_args, "--json",
    )  # fmt: skip


def test_a_lookback_past_retention_warns_and_still_creates(
    hub: HubFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = create(hub, capsys, "r-long", "baseline_lookback_s=2d")
    assert code == 0
    assert json.loads(out)["gates"]["baseline_lookback_s"] == 172_800
    assert err == (
        "warning: rollout r-long: gate baseline_lookback_s (172800 s) exceeds "
        "fleet.raw_retention_s (86400 s); telemetry older than that may already be "
        "deleted, so the baseline may cover only the last 86400 s\n"
    )
    code, out, _ = run(hub, capsys, "rollout", "status", "--json")
    assert code == 0
    assert [r["rollout"] for r in json.loads(out)["rollouts"]] == ["r-long"]


@pytest.mark.parametrize(
    "gates, lookback_s", [((), RETENTION_S), (("baseline_lookback_s=12h",), 43_200)]
)
def test_a_lookback_within_retention_is_quiet(
    hub: HubFixture, capsys: pytest.CaptureFixture[str], gates: tuple[str, ...], lookback_s: int
) -> None:
    code, out, err = create(hub, capsys, "r-quiet", *gates)
    assert (code, err) == (0, "")
    assert json.loads(out)["gates"]["baseline_lookback_s"] == lookback_s
