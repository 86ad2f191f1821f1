"""``rollout create`` states when each phase can pass at the earliest, and why."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.hub.hubkit import make_hub
from tests.hub.test_hub_cli import Cli
from tests.support.bundles import placeholder_bundle

from edgefleet.hub.rollout.plan import Gates, RolloutPlan
from edgefleet.hub.rollout.timing import duration, phase_timing


def test_window_plus_bake_per_phase() -> None:
    plan = RolloutPlan("r", "digits", 1, "all", ("a", "b", "c"), (1, 2, 3), Gates())
    windows = {"rpi4-arm64": 300.0, "rpi5": 60.0}
    timing = phase_timing(plan, ["rpi4-arm64", "rpi5", "rpi4-arm64"], lambda p: windows[p])
    assert timing.window_s == 300.0 and timing.bake_s == 300.0
    assert timing.earliest_phase_s == 600.0 and timing.earliest_total_s == 1800.0
    text = timing.describe()
    assert "10 min" in text and "30 min" in text and "100 requests" in text
    assert "rpi4-arm64, rpi5" in text


@pytest.mark.parametrize(("s", "text"), [(5, "5 s"), (600, "10 min"), (9000, "2.5 h")])
def test_duration(s: float, text: str) -> None:
    assert duration(s) == text


def test_rollout_create_prints_and_returns_the_earliest_times(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(make_hub(tmp_path, broker={"device_host": "hub.example.org"}), capsys)
    for i in range(3):
        cli.json("device", "add", f"pi-{i}", "--profile", "rpi4-arm64", "--group", "north")
    cli.json("publish", str(placeholder_bundle(tmp_path / "d.efb", cli.hub.publisher_key).path))
    code, out, err = cli.run(
        "rollout", "create", "digits:1", "--to", "group=north", "--phases", "10%,50%,100%"
    )
    assert code == 0, err
    # rpi4-arm64 windows are 5 minutes, the default bake 5 minutes: 10 min a phase.
    assert "each phase passes 10 min after its last commit at the earliest" in out
    assert "3 phases: at least 30 min" in out
    for i in range(3, 5):
        cli.json("device", "add", f"pi-{i}", "--profile", "rpi4-arm64", "--group", "south")
    created = cli.json(
        "rollout", "create", "digits:1", "--to", "group=south", "--gate", "bake=1m", "--id", "r2"
    )
    assert created["timing"]["earliest_phase_s"] == 360.0
