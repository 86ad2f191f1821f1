"""The hub commands that now go through the console layer: devices, rollout status --watch,
the drift headline, device reissue/revoke/remove, token create; and hub serve --api."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.hub.console.consolekit import (
    DRIFTING_DEVICE,
    REFUSAL,
    REFUSING_DEVICE,
    ROLLOUT,
    ConsoleHub,
    free_port,
    populate,
)
from tests.hub.fleet.fleetkit import MODEL, run_cli

from edgefleet.hub.credentials import verify_password
from edgefleet.hub.store import SqliteHubStore


@pytest.fixture
def hub(tmp_path: Path) -> ConsoleHub:
    reloaded = tmp_path / "reloaded"
    hub = populate(
        tmp_path / "hub",
        broker={"config_dir": "broker", "reload_command": f"touch {reloaded}"},
    )
    hub.store.close()
    return hub


def cli(capsys: pytest.CaptureFixture[str], hub: ConsoleHub, *argv: str) -> tuple[int, str, str]:
    return run_cli(capsys, "hub", *argv, "--config", str(hub.fx.config_path))


def test_devices_show_refusal_reasons(hub: ConsoleHub, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, hub, "devices")
    assert code == 0, err
    assert f"{REFUSING_DEVICE}: {REFUSAL}" in out
    assert "1 refusing the hub's directive" in out
    code, out, _ = cli(capsys, hub, "devices", "--state", "refusing", "--json")
    rows = json.loads(out)["devices"]
    assert [(d["device"], d["refusal"], d["state"]) for d in rows] == [
        (REFUSING_DEVICE, REFUSAL, "refusing")
    ]


def test_rollout_status_says_why_it_waits_and_watch_follows_it(
    hub: ConsoleHub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, hub, "rollout", "status", ROLLOUT)
    assert code == 0, err
    assert "waiting for:" in out and "settled: 1 online device(s) to finish installing" in out

    def abort_later() -> None:
        time.sleep(2.0)
        store = SqliteHubStore(hub.config.store.path)
        try:
            from edgefleet.hub.rollout.engine import RolloutEngine

            RolloutEngine(store).abort(ROLLOUT, time.time())
        finally:
            store.close()

    worker = threading.Thread(target=abort_later)
    worker.start()
    code, out, err = cli(capsys, hub, "rollout", "status", ROLLOUT, "--watch", "--interval", "0.5")
    worker.join()
    assert code == 0, err
    renders = out.count(f"rollout {ROLLOUT}: {MODEL}:2")
    assert renders >= 2  # it redrew while running ...
    assert out.rstrip().splitlines()[1].startswith("state running")
    assert "state aborted" in out.split(f"rollout {ROLLOUT}:")[-1]  # ... and stopped once aborted


def test_drift_headline_names_the_drifting_device(
    hub: ConsoleHub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, hub, "drift", MODEL, "--since", "24h")
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.startswith("DRIFT on ") and f"device {DRIFTING_DEVICE}" in first
    code, out, _ = cli(capsys, hub, "drift", MODEL, "--json")
    scopes = json.loads(out)["drifting_scopes"]
    assert ("device", DRIFTING_DEVICE) in {(s["kind"], s["name"]) for s in scopes}


@pytest.mark.subprocess
def test_device_lifecycle_rewrites_the_password_file(
    hub: ConsoleHub, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    passwd = hub.fx.root / "broker" / "passwd"
    code, out, err = cli(capsys, hub, "device", "revoke", "north-d00", "--json")
    assert code == 0, err
    assert json.loads(out)["broker"]["reloaded"] is True
    assert (tmp_path / "reloaded").exists()
    users = [line.split(":")[0] for line in passwd.read_text().splitlines()]
    assert "north-d00" not in users and "north-d01" in users and "edgefleet-hub" in users
    # The next broker-config does not bring a revoked device back.
    code, _out, err = cli(capsys, hub, "broker-config", "--out", str(hub.fx.root / "broker"))
    assert code == 0, err
    assert "north-d00:" not in passwd.read_text()

    code, out, err = cli(capsys, hub, "device", "reissue", "north-d00", "--json")
    assert code == 0, err
    issued = json.loads(out)
    assert issued["was_revoked"] is True and 'username = "north-d00"' in issued["agent_toml"]
    line = next(x for x in passwd.read_text().splitlines() if x.startswith("north-d00:"))
    assert verify_password(issued["mqtt"]["password"], line.split(":", 1)[1])

    # In an active rollout: removal is refused and nothing changes.
    code, _out, err = cli(capsys, hub, "device", "remove", "south-d01")
    assert code == 2 and f"active rollout {ROLLOUT}" in err
    assert "south-d01:" in passwd.read_text()
    code, out, err = cli(capsys, hub, "device", "remove", "north-d01")
    assert code == 0, err
    assert "north-d01:" not in passwd.read_text()
    code, _out, err = cli(capsys, hub, "device", "revoke", "north-d01")
    assert code == 2 and "no such device" in err


@pytest.mark.subprocess
def test_a_failing_reload_command_is_an_error_after_the_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = populate(tmp_path / "hub", broker={"config_dir": "broker", "reload_command": "false"})
    hub.store.close()
    code, _out, err = cli(capsys, hub, "device", "revoke", "north-d00")
    assert code == 1 and "reload command 'false' exited 1" in err
    assert "north-d00:" not in (hub.fx.root / "broker" / "passwd").read_text()


def test_token_create_prints_once_and_stores_a_hash(
    hub: ConsoleHub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, hub, "token", "create", "ci", "--role", "operator", "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["role"] == "operator" and created["token"].startswith("efc_")
    db = (hub.fx.root / "hub.console.db").read_bytes()
    assert created["token"].encode() not in db
    code, _out, err = cli(capsys, hub, "token", "create", "ci", "--role", "operator")
    assert code == 2 and "exists" in err
    code, _out, err = cli(capsys, hub, "token", "create", "x", "--role", "root")
    assert code == 2
    code, out, _ = cli(capsys, hub, "token", "revoke", "ci", "--json")
    assert json.loads(out)["revoked_at"] is not None


@pytest.mark.slow
def test_api_processes_share_one_store(hub: ConsoleHub) -> None:
    """Two `hub api` processes against one store: both answer, a write by one is seen by the
    other (no single-writer lock)."""
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [
                str(Path(sys.executable).with_name("edgefleet")),
                "hub",
                "api",
                "--config",
                str(hub.fx.config_path),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for port in ports
    ]
    try:
        headers = {"Authorization": f"Bearer {hub.token('operator')}"}
        for port in ports:
            _wait_http(f"http://127.0.0.1:{port}/api/v1/health")
        first, second = (f"http://127.0.0.1:{p}" for p in ports)
        r = httpx.post(f"{first}/api/v1/rollouts/{ROLLOUT}/pause", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        seen = httpx.get(f"{second}/api/v1/rollouts/{ROLLOUT}", headers=headers, timeout=30)
        assert seen.json()["state"] == "paused"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def _wait_http(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.2)


@pytest.mark.subprocess
def test_api_on_a_busy_port_is_one_error_line(hub: ConsoleHub) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                str(Path(sys.executable).with_name("edgefleet")),
                "hub",
                "api",
                "--config",
                str(hub.fx.config_path),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert f"error: the API did not start on 127.0.0.1:{port}" in done.stderr


def test_bad_listen_address_is_a_usage_error(
    hub: ConsoleHub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = cli(capsys, hub, "api", "--listen", "localhost")
    assert code == 2 and "expected HOST:PORT" in err
    code, _out, err = cli(capsys, hub, "api", "--cert", "x.pem")
    assert code == 2 and "--cert and --key go together" in err
