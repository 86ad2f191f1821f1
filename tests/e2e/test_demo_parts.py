"""The demo's parts that can be checked in seconds: fleet plan, the configuration it writes
(read back by the real hub and agent config loaders), the story checks of the summary, and
the process supervisor stopping whole process trees."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgefleet.agent.config import AgentConfig
from edgefleet.core.errors import UsageError
from edgefleet.demo.console_probe import ConsoleAccess
from edgefleet.demo.fleet_view import DeviceFacts, rollout_facts
from edgefleet.demo.processes import RUN_MARKER_ENV, ProcessSupervisor
from edgefleet.demo.summary import DemoSummary, RolloutOutcome, drift_verdicts, render_summary
from edgefleet.demo.workspace import AgentTuning, hub_toml, plan_fleet, tune_agent_config
from edgefleet.hub.config import HubConfig


def test_fleet_plan_alternates_groups_and_drifts_one_device_of_each() -> None:
    fleet = plan_fleet(6)
    assert [d.device_id for d in fleet] == ["pi-1", "gw-1", "pi-2", "gw-2", "pi-3", "gw-3"]
    assert {d.group for d in fleet} == {"clinic-north", "clinic-south"}
    assert {d.profile for d in fleet} == {"rpi4-arm64", "x86_64-gateway"}
    drifting = [d for d in fleet if d.drifts]
    assert len(drifting) == 2 and len({d.group for d in drifting}) == 2
    assert sum(d.drifts for d in plan_fleet(3)) == 2


@pytest.mark.parametrize("count", [0, 2, 25])
def test_fleet_size_out_of_range_is_a_usage_error(count: int) -> None:
    with pytest.raises(UsageError):
        plan_fleet(count)


def test_the_demo_hub_toml_is_a_valid_hub_config(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(hub_toml(18830, 0.5, monitor_interval_s=2.0), encoding="utf-8")
    config = HubConfig.load(path)
    assert config.broker.port == 18830 and not config.broker.shared_subscriptions
    assert config.service.tick_s == 0.5
    assert config.fleet.monitor_interval_s == 2.0
    assert "device" in config.fleet.policy.scopes


def test_the_tuned_agent_toml_is_a_valid_agent_config(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\ndevice_id = "pi-1"\nprofile = "rpi4-arm64"\n\n'
        '[mqtt]\nhost = "127.0.0.1"\nport = 1883\n',
        encoding="utf-8",
    )
    tuning = AgentTuning()
    tune_agent_config(path, tuning)
    config = AgentConfig.load(path)
    assert config.telemetry.window_s == tuning.window_s
    assert config.probation.min_requests == tuning.probation_min_requests
    assert config.probation.max_error_rate == tuning.probation_max_error_rate
    with pytest.raises(UsageError):  # tuning twice would define the tables twice
        tune_agent_config(path, tuning)


def _facts(device: str, version: int) -> DeviceFacts:
    return DeviceFacts(device, "g", "p", True, version, 1, "committed", version, None, None)


def _outcome(version: int, outcome: str) -> RolloutOutcome:
    status = {
        "rollout": f"r-{version}",
        "model": "cancer",
        "version": version,
        "state": outcome,
        "phase": 1,
        "phase_count": 2,
        "phase_sizes": [1, 3],
        "reason": "",
        "devices": [{"device": "pi-1", "install": "rolled_back", "detail": ""}],
        "events": [
            {"at": 1.0, "event": "abort", "detail": "gate failed: max_failure_share"},
            {"at": 2.0, "event": "rollback", "detail": "automatic rollback after abort"},
        ],
    }
    return RolloutOutcome.of(rollout_facts(status))


CONSOLE = ConsoleAccess("http://127.0.0.1:8090/", "secret-token")
EVERY_DEVICE = ["gw-1", "pi-1", "pi-2"]


def _summary(
    versions: dict[str, int],
    verdicts: dict[str, str],
    v3: str,
    listed: list[str] = EVERY_DEVICE,
    console: ConsoleAccess | None = CONSOLE,
) -> DemoSummary:
    fleet = plan_fleet(3)
    return DemoSummary(
        workdir=None,
        devices=fleet,
        device_facts={d: _facts(d, v) for d, v in versions.items()},
        rollouts=[_outcome(3, v3)],
        drift={d: {"verdict": v} for d, v in verdicts.items()},
        console=console,
        console_devices=listed,
    )


GOOD_VERDICTS = {"pi-1": "no_drift", "gw-1": "drift", "pi-2": "drift"}


def test_summary_checks_hold_for_the_story() -> None:
    summary = _summary({"pi-1": 2, "gw-1": 2, "pi-2": 2}, GOOD_VERDICTS, "rolled_back")
    out = summary.to_dict()
    assert out["ok"] is True
    assert out["rollouts"][0]["abort_reason"] == "gate failed: max_failure_share"
    assert out["console"] == {
        "url": CONSOLE.url,
        "token": CONSOLE.token,
        "role": "viewer",
        "devices_listed": EVERY_DEVICE,
    }
    assert CONSOLE.url in render_summary(out) and CONSOLE.token in render_summary(out)


@pytest.mark.parametrize(
    ("listed", "console"),
    [(["pi-1", "pi-2"], CONSOLE), ([], CONSOLE), (EVERY_DEVICE, None)],
)
def test_summary_checks_catch_a_console_that_did_not_list_the_fleet(
    listed: list[str], console: ConsoleAccess | None
) -> None:
    summary = _summary(
        {"pi-1": 2, "gw-1": 2, "pi-2": 2}, GOOD_VERDICTS, "rolled_back", listed, console
    )
    checks = summary.checks()
    assert [name for name, ok in checks.items() if not ok] == ["console_lists_devices"]


@pytest.mark.parametrize(
    ("versions", "verdicts", "v3", "failed"),
    [
        ({"pi-1": 2, "gw-1": 3, "pi-2": 2}, GOOD_VERDICTS, "rolled_back", "all_devices_on_v2"),
        ({"pi-1": 2, "gw-1": 2}, GOOD_VERDICTS, "rolled_back", "all_devices_on_v2"),
        ({"pi-1": 2, "gw-1": 2, "pi-2": 2}, GOOD_VERDICTS, "completed", "v3_rolled_back"),
        (
            {"pi-1": 2, "gw-1": 2, "pi-2": 2},
            {**GOOD_VERDICTS, "pi-1": "drift"},
            "rolled_back",
            "drift_on_drifted_devices_only",
        ),
        (
            {"pi-1": 2, "gw-1": 2, "pi-2": 2},
            {**GOOD_VERDICTS, "pi-2": "insufficient_data"},
            "rolled_back",
            "drift_on_drifted_devices_only",
        ),
    ],
)
def test_summary_checks_catch_a_broken_story(
    versions: dict[str, int], verdicts: dict[str, str], v3: str, failed: str
) -> None:
    checks = _summary(versions, verdicts, v3).checks()
    assert [name for name, ok in checks.items() if not ok] == [failed]


def test_drift_verdicts_from_a_hub_drift_result() -> None:
    result = {
        "groups": {
            "a": {"drifting": True, "rows": 900, "drifted_features": ["x"], "features": {}},
            "b": {"drifting": False, "rows": 900, "features": {"x": {"verdict": "no_drift"}}},
            "c": {"drifting": False, "rows": 900, "features": {"x": {"verdict": "warn"}}},
            "d": {
                "drifting": False,
                "rows": 12,
                "features": {"x": {"verdict": "insufficient_data"}},
            },
        }
    }
    verdicts = {k: v["verdict"] for k, v in drift_verdicts(result).items()}
    assert verdicts == {"a": "drift", "b": "no_drift", "c": "warn", "d": "insufficient_data"}


def _marked(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if f"{RUN_MARKER_ENV}={marker}".encode() in environ and "State:\tZ" not in status:
            pids.append(int(entry.name))
    return pids


@pytest.mark.subprocess
def test_supervisor_stops_children_and_their_children(tmp_path: Path) -> None:
    marker = str(tmp_path)
    procs = ProcessSupervisor(tmp_path / "logs", run_marker=marker)
    # A shell that forks a grandchild, and one that ignores SIGTERM (SIGKILL after grace).
    procs.spawn("tree", ["sh", "-c", "sleep 60 & sleep 60"])
    procs.spawn("stubborn", ["sh", "-c", "trap '' TERM; sleep 60 & wait"])
    deadline = time.monotonic() + 10
    while len(_marked(marker)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_marked(marker)) >= 4
    procs.stop_all(grace_s=1.0)
    assert _marked(marker) == []
    assert procs.running() == []


@pytest.mark.subprocess
def test_a_command_result_has_its_stdout_and_exit_code(tmp_path: Path) -> None:
    procs = ProcessSupervisor(tmp_path / "logs", run_marker=str(tmp_path))
    result = procs.run("echo", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout) == (3, "out\n")
    assert "err" in result.log_path.read_text()
