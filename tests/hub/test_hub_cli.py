"""The hub commands end to end on disk: enroll, publish, broker-config, rollouts, devices."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from tests.hub.hubkit import HubFixture, make_hub
from tests.support.bundles import placeholder_bundle

from edgefleet.agent.config import AgentConfig
from edgefleet.core.bundle_verifier import BundleVerifier
from edgefleet.core.cli.main import main
from edgefleet.core.keys import generate_keypair
from edgefleet.core.trust import TrustStore
from edgefleet.hub.credentials import verify_password


class Cli:
    def __init__(self, hub: HubFixture, capsys: pytest.CaptureFixture[str]) -> None:
        self.hub = hub
        self.capsys = capsys

    def run(self, *args: str, config: bool = True) -> tuple[int, str, str]:
        argv = ["hub", *args]
        if config:
            argv += ["--config", str(self.hub.config_path)]
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        out, err = self.capsys.readouterr()
        return int(exit_info.value.code or 0), out, err

    def json(self, *args: str) -> Any:
        code, out, err = self.run(*args, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(
        make_hub(tmp_path, broker={"device_host": "hub.example.org", "device_port": 8883}), capsys
    )


def test_device_add_writes_config_the_agent_accepts(cli: Cli, tmp_path: Path) -> None:
    out_dir = tmp_path / "pi-1"
    result = cli.json(
        "device",
        "add",
        "pi-1",
        "--profile",
        "rpi4-arm64",
        "--group",
        "lab",
        "--tag",
        "site=x",
        "--out",
        str(out_dir),
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert result["device"] == "pi-1" and result["tags"] == {"site": "x"}
    agent = AgentConfig.load(out_dir / "agent.toml")
    assert agent.device_id == "pi-1" and agent.profile == "rpi4-arm64"
    assert agent.mqtt is not None
    assert (agent.mqtt.host, agent.mqtt.port, agent.mqtt.username) == (
        "hub.example.org",
        8883,
        "pi-1",
    )
    assert agent.mqtt.password == result["mqtt"]["password"]
    assert agent.trust_store == (out_dir / "trust.json").resolve()
    trust = TrustStore.load(out_dir / "trust.json")
    assert len(trust.publisher_keys) == 1 and len(trust.hub_keys) == 1
    assert stat.S_IMODE(os.stat(out_dir / "agent.toml").st_mode) == 0o600
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no staging left

    store = cli.hub.store()
    device = store.get_device("pi-1")
    assert device is not None and device.group == "lab"
    assert result["mqtt"]["password"] not in device.password_hash
    assert verify_password(result["mqtt"]["password"], device.password_hash)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["device", "add", "bad/id", "--profile", "rpi5"], 2, "invalid device id"),
        (["device", "add", "pi-2", "--profile", "no-such-profile"], 2, "no-such-profile"),
        (["device", "add", "pi-2", "--profile", "rpi5", "--tag", "novalue"], 2, "KEY=VALUE"),
        (["device", "add", "edgefleet-hub", "--profile", "rpi5"], 2, "broker username"),
        (["rollout", "create", "digits", "--to", "all"], 2, "MODEL:VERSION"),
        (["rollout", "create", "digits:4", "--to", "all"], 2, "no published bundle"),
        (["rollout", "status", "r-nope"], 2, "no such rollout"),
        (["rollout", "pause", "r-nope"], 2, "no such rollout"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code(
    cli: Cli, args: list[str], code: int, message: str
) -> None:
    got, out, err = cli.run(*args)
    assert got == code, err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1
    assert out == ""


def test_second_enrollment_of_an_id_is_refused_and_leaves_files(cli: Cli, tmp_path: Path) -> None:
    cli.json("device", "add", "pi-1", "--profile", "rpi5", "--out", str(tmp_path / "a"))
    code, _out, err = cli.run(
        "device", "add", "pi-1", "--profile", "rpi5", "--out", str(tmp_path / "b")
    )
    assert code == 2 and "already enrolled" in err
    assert not (tmp_path / "b").exists()


def test_missing_config_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["hub", "devices", "--config", str(tmp_path / "nope.toml")])
    assert e.value.code == 2
    assert "hub config not found" in capsys.readouterr().err


def test_publish_verifies_and_stores_content_addressed(cli: Cli, tmp_path: Path) -> None:
    info = placeholder_bundle(tmp_path / "d2.efb", cli.hub.publisher_key, version=2)
    published = cli.json("publish", str(info.path))
    assert published["sha256"] == info.sha256 and published["created"] is True
    assert (published["model"], published["version"], published["profile"]) == (
        "digits",
        2,
        "rpi4-arm64",
    )
    stored = cli.hub.config().store.bundles_dir / published["path"]
    assert stored.name == f"{info.sha256}.efb"
    trust = TrustStore.from_keys([_public(cli.hub.publisher_key)])
    assert BundleVerifier(trust).verify(stored).sha256 == info.sha256
    assert cli.json("publish", str(info.path))["created"] is False
    assert [b["sha256"] for b in cli.json("bundles")["bundles"]] == [info.sha256]


def test_publish_rejects_an_untrusted_or_tampered_bundle(cli: Cli, tmp_path: Path) -> None:
    stranger = make_hub(tmp_path / "other")
    info = placeholder_bundle(tmp_path / "evil.efb", stranger.publisher_key, version=2)
    code, _out, err = cli.run("publish", str(info.path))
    assert code == 3 and "error: " in err
    good = placeholder_bundle(tmp_path / "good.efb", cli.hub.publisher_key, version=3)
    data = bytearray(good.path.read_bytes())
    data[-2000] ^= 0xFF  # inside model.onnx
    good.path.write_bytes(bytes(data))
    code, _out, err = cli.run("publish", str(good.path))
    assert code == 3
    bundles_dir = cli.hub.config().store.bundles_dir
    assert not [p for p in bundles_dir.rglob("*") if p.is_file()]  # nothing half-stored
    assert cli.json("bundles")["bundles"] == []
    code, _out, err = cli.run("publish", str(tmp_path / "missing.efb"))
    assert code == 2


def test_rollout_commands_drive_the_store(cli: Cli, tmp_path: Path) -> None:
    for i in range(4):
        cli.json(
            "device",
            "add",
            f"pi-{i}",
            "--profile",
            "rpi4-arm64",
            "--group",
            "lab" if i < 2 else "field",
        )
    cli.json(
        "publish",
        str(placeholder_bundle(tmp_path / "d2.efb", cli.hub.publisher_key, version=2).path),
    )
    created = cli.json(
        "rollout",
        "create",
        "digits:2",
        "--to",
        "group=lab",
        "--phases",
        "1,100%",
        "--gate",
        "bake=30s",
        "--id",
        "r-test",
    )
    assert (
        created["rollout"] == "r-test" and created["devices"] == 2 and created["state"] == "created"
    )
    assert created["gates"]["bake_s"] == 30
    listing = cli.json("rollout", "status")
    assert [r["rollout"] for r in listing["rollouts"]] == ["r-test"]
    detail = cli.json("rollout", "status", "r-test")
    assert [p["devices"] for p in detail["phases"]] == [1, 1]
    assert {d["install"] for d in detail["devices"]} == {"not_started"}
    code, _out, err = cli.run("rollout", "pause", "r-test")
    assert code == 2 and "cannot pause" in err  # not started: only the running hub starts it
    assert (
        cli.json("rollout", "abort", "r-test", "--reason", "changed my mind")["state"] == "aborted"
    )
    code, out, _err = cli.run("rollout", "status", "r-test")
    assert code == 0 and "changed my mind" in out and "phase 1" in out
    devices = cli.json("devices")
    assert [d["device"] for d in devices["devices"]] == ["pi-0", "pi-1", "pi-2", "pi-3"]
    assert all(d["online"] is False for d in devices["devices"])


def test_broker_config_writes_files_from_the_store(cli: Cli, tmp_path: Path) -> None:
    cli.json("device", "add", "pi-1", "--profile", "rpi5")
    out_dir = tmp_path / "broker"
    result = cli.json("broker-config", "--out", str(out_dir), "--port", "18830")
    assert result["devices"] == 1 and result["port"] == 18830
    users = [line.split(":", 1)[0] for line in (out_dir / "passwd").read_text().splitlines()]
    assert users == ["edgefleet-hub", "pi-1"]
    acl = (out_dir / "acl").read_text()
    assert "pattern write edgefleet/v1/dev/%u/telemetry" in acl
    assert "pattern read edgefleet/v1/dev/%u/desired" in acl
    assert "pattern read edgefleet/v1/dev/%u/status" not in acl
    conf = (out_dir / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 18830" in conf
    hub_password = Path(result["hub_password_file"]).read_text().strip()
    hub_hash = (out_dir / "passwd").read_text().splitlines()[0].split(":", 1)[1]
    assert verify_password(hub_password, hub_hash)
    tls = cli.json(
        "broker-config",
        "--out",
        str(out_dir),
        "--tls-host",
        "localhost",
        "--tls-host",
        "127.0.0.1",
        "--bind",
        "127.0.0.1",
    )
    assert tls["port"] == 8883 and tls["tls"]["ca_cert"].endswith("ca.crt")
    ca_before = (out_dir / "ca.crt").read_bytes()
    cli.json("broker-config", "--out", str(out_dir), "--tls-host", "localhost", "--bind", "::")
    assert (out_dir / "ca.crt").read_bytes() == ca_before  # the CA devices trust is kept


def _public(private_path: Path):  # type: ignore[no-untyped-def]
    from edgefleet.core.keys import load_private_key

    return load_private_key(private_path).public_key()


def test_publish_with_a_two_publisher_threshold_needs_a_co_signed_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = make_hub(tmp_path / "hub")
    second = generate_keypair("publisher-2", hub.root / "keys")
    text = hub.config_path.read_text().replace(
        'publisher_keys = ["keys/publisher.pub"]',
        'publisher_keys = ["keys/publisher.pub", "keys/publisher-2.pub"]\npublisher_threshold = 2',
    )
    hub.config_path.write_text(text)
    cli = Cli(hub, capsys)
    info = placeholder_bundle(tmp_path / "d2.efb", hub.publisher_key, version=2)
    code, _out, err = cli.run("publish", str(info.path))
    assert code == 3 and "error: " in err  # one of two publishers signed
    with pytest.raises(SystemExit) as signed:
        main(["bundle", "sign", str(info.path), "--key", str(second.private)])
    assert signed.value.code in (0, None), capsys.readouterr().err
    capsys.readouterr()
    published = cli.json("publish", str(info.path))
    assert published["created"] is True and published["version"] == 2
