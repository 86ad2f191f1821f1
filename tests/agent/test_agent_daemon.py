"""The daemon as a real process: serving, installs through the running agent, live
probation over HTTP, bad bundles, status, graceful shutdown and the telemetry it leaves."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tests.support.agents import http_json, infer, kill, make_env, stop
from tests.support.waiting import wait_until

from edgefleet.agent.deploy.record import DeployStateFile
from edgefleet.agent.telemetry import TelemetryBuffer

ROW = [[5.1, 3.5, 1.4, 0.2]]


def served(url: str) -> int:
    status, body = infer(url, "iris", ROW)
    assert status == 200, body
    return int(body["model_version"])


@pytest.mark.subprocess
def test_daemon_lifecycle(tmp_path: Path) -> None:
    env = make_env(tmp_path, probation={"min_requests": 3, "max_seconds": 120})
    # no daemon yet: the command installs by itself (smoke set only, probation
    # left for the daemon because live probation is configured)
    result = env.cli("install", str(env.bundle(1)), "--json")
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stdout)
    assert first["state"] == "probation" and first["via"] == "direct"

    proc = env.start_daemon()
    try:
        url = env.endpoint_url(proc)
        assert served(url) == 1
        # a second daemon on the same state directory is refused
        second = env.cli("run", timeout=60)
        assert second.returncode == 1 and "another agent" in second.stderr
        for _ in range(3):
            served(url)
        state_file = DeployStateFile(env.state_dir / "deploy.json")
        wait_until(
            lambda: f"version 1 committed: {env.log_tail()}",
            lambda: state_file.load().models.get("iris", {}).get("state") == "committed",
            30,
        )

        # install through the running daemon, waiting for the final outcome while
        # live traffic completes probation
        results: list[subprocess.CompletedProcess[str]] = []
        waiter = threading.Thread(
            target=lambda: results.append(
                env.cli("install", str(env.bundle(2)), "--json", "--wait", "final")
            )
        )
        waiter.start()
        wait_until(lambda: f"version 2 to serve: {env.log_tail()}", lambda: served(url) == 2, 60)
        for _ in range(3):
            served(url)
        waiter.join(60)
        [done] = results
        assert done.returncode == 0, done.stderr
        outcome = json.loads(done.stdout)
        assert outcome["state"] == "committed" and outcome["via"] == "daemon"

        # late labels join predictions
        status, body = infer(url, "iris", ROW)
        prediction_id = body["outputs"][-1]["data"][0]
        code, answer = http_json(
            f"{url}/v2/models/iris/feedback", {"prediction_id": prediction_id, "label": 0}
        )
        assert code == 200 and answer["accepted"] == 1

        # a bundle from an unknown publisher is refused; version 2 keeps serving
        from tests.support.bundles import make_signer

        stranger = make_signer(None)
        bad = env.cli("install", str(env.bundle(3, signer=stranger.private_key)))
        assert bad.returncode == 3
        assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
        assert "signature" in bad.stderr
        assert served(url) == 2

        status_json = env.status()
        assert status_json["agent_running"] is True
        [model] = status_json["models"]
        assert model["active"]["version"] == 2 and model["previous"]["version"] == 1
        assert any(
            h["state"] == "rejected" and "signature" in (h["reason"] or "")
            for h in status_json["history"]
        )
        assert status_json["telemetry"]["backlog_records"] > 0
        text = env.cli("status")
        assert "iris" in text.stdout and "active v2" in text.stdout
    finally:
        code = stop(proc)
        kill(proc)
    assert code == 0
    assert "stopped" in env.log_tail()
    assert not (env.state_dir / "endpoint.json").exists()
    assert env.status()["agent_running"] is False

    # what the daemon flushed on SIGTERM is in the buffer
    buffer = TelemetryBuffer(env.state_dir / "telemetry.db", 1 << 20)
    try:
        windows = buffer.open_windows() + [r.body for r in buffer.records() if r.kind == "window"]
        by_version = {w["version"]: w for w in windows}
        assert by_version[1]["requests"] >= 4 and by_version[2]["requests"] >= 5
        assert by_version[2]["confusion"]["matrix"] is not None
        events = [r.body for r in buffer.records() if r.kind == "event"]
        assert [e["state"] for e in events if e["version"] == 2][-1] == "committed"
        assert any(e["state"] == "rejected" and "signature" in e["reason"] for e in events)
    finally:
        buffer.close()


@pytest.mark.subprocess
def test_probation_of_an_update_ignores_requests_clients_get_wrong(tmp_path: Path) -> None:
    # Requests a version cannot take (400) are the client's mistake, not the
    # version's: only model and runtime failures roll an update back (those are
    # covered with the driver in test_deploy_driver.py).
    env = make_env(tmp_path, probation={"min_requests": 10, "max_seconds": 120})
    env.cli("install", str(env.bundle(1)))
    proc = env.start_daemon()
    try:
        url = env.endpoint_url(proc)
        for _ in range(10):
            served(url)
        results: list[subprocess.CompletedProcess[str]] = []
        waiter = threading.Thread(
            target=lambda: results.append(env.cli("install", str(env.bundle(2)), "--wait", "final"))
        )
        waiter.start()
        deadline = time.monotonic() + 60
        while served(url) != 2:
            assert time.monotonic() < deadline, env.log_tail()
            time.sleep(0.05)
        # clients send requests version 2 cannot take (3 features instead of 4)
        for _ in range(3):
            code, _ = infer(url, "iris", [[1.0, 2.0, 3.0]])
            assert code == 400
        while results == [] and time.monotonic() < deadline:
            served(url)
        waiter.join(60)
        [done] = results
        assert done.returncode == 0 and "committed" in done.stdout, done.stderr
        assert served(url) == 2
    finally:
        assert stop(proc) == 0
        kill(proc)


@pytest.mark.subprocess
def test_cli_without_daemon(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    ok = env.cli("install", str(env.bundle(1)))
    assert ok.returncode == 0 and "committed" in ok.stdout
    rejected = env.cli("install", str(env.bundle(2, profile="rpi5")), "--json")
    assert rejected.returncode == 3
    assert json.loads(rejected.stdout)["state"] == "rejected"
    assert "profile 'rpi5'" in rejected.stderr
    assert env.cli("install", str(env.bundle(2))).returncode == 0
    back = env.cli("rollback", "iris", "--json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["version"] == 1
    again = env.cli("rollback", "iris")
    assert again.returncode == 1 and "no previous version" in again.stderr
    unknown = env.cli("rollback", "nope")
    assert unknown.returncode == 2 and "not installed" in unknown.stderr
    missing = env.cli("install", str(tmp_path / "absent.efb"))
    assert missing.returncode == 2
    status = env.status()
    assert status["agent_running"] is False
    assert status["models"][0]["active"]["version"] == 1
    assert status["models"][0]["previous"] is None


@pytest.mark.subprocess
def test_service_unit(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    result = env.cli("service-unit")
    assert result.returncode == 0, result.stderr
    unit = result.stdout
    for line in (
        "Restart=on-failure",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        f"ReadWritePaths={env.state_dir}",
        f"--config {env.config_path}",
        "KillSignal=SIGTERM",
    ):
        assert line in unit
    assert "WatchdogSec" not in unit
    assert "StateDirectory=" not in unit  # systemd manages /var/lib/NAME only
    default = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.core.cli.main",
            "agent",
            "service-unit",
            "--json",
            "--config",
            str(tmp_path / "not-there.toml"),
        ],
        capture_output=True,
        text=True,
    )
    data = json.loads(default.stdout)
    assert data["name"] == "edgefleet-agent.service"
    assert "StateDirectory=edgefleet" in data["unit"]
    assert "ReadWritePaths=/var/lib/edgefleet" in data["unit"]
