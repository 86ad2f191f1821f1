"""broker-config's files work for a Mosquitto that drops privileges, over TLS, as printed.

Mosquitto started as root switches to its ``user`` account before it opens the password
file, the ACL and the TLS key. These tests start the real broker as root with
``--run-as mosquitto`` (the account the Debian package creates) on the generated files,
so a file only root can read fails the test exactly as it failed for operators.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tests.hub.hubkit import make_hub
from tests.hub.test_broker_acl import run_generated_conf
from tests.support.brokers import ProbeClient

from edgefleet.core.cli.main import cli
from edgefleet.core.mqtt import MqttSettings, TlsSettings
from edgefleet.core.mqtt.client import MqttClient
from edgefleet.core.mqtt.diagnose import describe_failure, likely_cause
from edgefleet.core.testing.brokers import free_port
from edgefleet.hub.broker_config import BrokerFiles, write_broker_config
from edgefleet.hub.broker_files import BROKER_FILES, apply_modes, render_table
from edgefleet.hub.enrollment import enroll_device
from edgefleet.hub.errors import HubUsageError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "hub.md"
BROKER_USER = "mosquitto"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the broker's unprivileged account can traverse (tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="edgefleet-broker-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _needs_root_and_account() -> None:
    import pwd

    assert os.geteuid() == 0, "the privilege-drop test runs as root (as Mosquitto's unit does)"
    pwd.getpwnam(BROKER_USER)  # created by the mosquitto package


def _fleet(root: Path, **kw: Any) -> tuple[BrokerFiles, dict[str, str]]:
    hub = make_hub(root)
    store = hub.store()
    config = hub.config()
    passwords = {"pi-a": enroll_device(store, config, "pi-a", "rpi5", 1.0).password}
    files = write_broker_config(
        root / "broker", config, store.list_devices(), port=free_port(), **kw
    )
    store.close()
    return files, passwords


@pytest.mark.mqtt
def test_mosquitto_dropping_to_its_account_reads_the_files_over_tls(shared_dir: Path) -> None:
    _needs_root_and_account()
    files, passwords = _fleet(
        shared_dir, bind="127.0.0.1", tls_hosts=("hub.example.org",), run_as=BROKER_USER
    )
    tls = files.tls
    assert tls is not None
    with run_generated_conf(files) as proc:
        # The hub on this machine connects to the bound address: the certificate names it.
        device = ProbeClient(
            files.port,
            "pi-a",
            passwords["pi-a"],
            ca_file=tls.ca_cert,
        )
        assert device.connect() == 0
        device.close()
        status = Path(f"/proc/{proc.pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    import pwd

    assert int(uid_line.split()[1]) == pwd.getpwnam(BROKER_USER).pw_uid


def test_modes_come_from_the_table_whatever_the_umask(tmp_path: Path) -> None:
    _needs_root_and_account()
    import grp
    import pwd

    gid = pwd.getpwnam(BROKER_USER).pw_gid
    old = os.umask(0)
    try:
        files, _ = _fleet(tmp_path, bind="0.0.0.0", tls_hosts=("h",), run_as=BROKER_USER, hubs=2)
    finally:
        os.umask(old)
    out = tmp_path / "broker"
    # Every file written is in the table, every row of it written (a "*" row per hub).
    matched = {spec.name: _matches(out, spec.name) for spec in BROKER_FILES}
    assert all(matched.values()), matched
    assert set(out.iterdir()) == {p for ps in matched.values() for p in ps if p != out}
    for spec in BROKER_FILES:
        for path in matched[spec.name]:
            st = path.stat()
            assert stat.S_IMODE(st.st_mode) == spec.mode, path.name
            if spec.broker_reads:
                assert st.st_gid == gid, (path.name, grp.getgrgid(st.st_gid).gr_name)
    # Without a broker account (broker-config not run as root, no --run-as) the files
    # stay private to the writer, again whatever the umask.
    old = os.umask(0o022)
    try:
        apply_modes(out, None)
    finally:
        os.umask(old)
    for spec in BROKER_FILES:
        for path in _matches(out, spec.name):
            assert stat.S_IMODE(path.stat().st_mode) == spec.mode_alone, path.name


def _matches(out: Path, name: str) -> list[Path]:
    return sorted(out.glob(name)) if "*" in name else [out / name]


@pytest.mark.mqtt
def test_root_without_run_as_uses_mosquittos_account(shared_dir: Path) -> None:
    _needs_root_and_account()
    files, _ = _fleet(shared_dir, bind="127.0.0.1")
    assert f"user {BROKER_USER}" in files.conf.read_text()
    with run_generated_conf(files):
        pass  # it started: it could read passwd and acl after dropping to mosquitto


def test_docs_carry_the_one_table() -> None:
    assert render_table() in DOCS.read_text(encoding="utf-8")


def test_listener_is_loopback_unless_bound_and_tls_needs_a_bind(tmp_path: Path) -> None:
    files, _ = _fleet(tmp_path)
    conf = files.conf.read_text()
    assert f"listener {files.port} 127.0.0.1" in conf
    with pytest.raises(HubUsageError, match="--bind"):
        _fleet(tmp_path / "tls", tls_hosts=("hub.example.org",))
    assert not (tmp_path / "tls" / "broker").exists()


def test_hub_toml_snippet_matches_the_tls_broker(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    runner = CliRunner()
    out = tmp_path / "broker"
    args = ["hub", "broker-config", "--config", str(hub.config_path), "--out", str(out)]
    result = runner.invoke(cli, [*args, "--tls-host", "hub.example.org", "--bind", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    # hub.toml (port 1883, no CA) disagrees with a TLS broker on 8883: the command says so.
    assert "disagrees" in result.output and "tls_ca" in result.output
    snippet = tomllib.loads((out / "hub-broker.toml").read_text())["broker"]
    assert snippet["port"] == 8883 and snippet["host"] == "127.0.0.1"
    assert snippet["tls_ca"] == str(out.resolve() / "ca.crt")
    assert snippet["device_host"] == "hub.example.org" and snippet["device_port"] == 8883
    # With the snippet in hub.toml the files agree and devices get the CA.
    text = hub.config_path.read_text().replace("[broker]\n", "", 1)
    hub.config_path.write_text(text + "\n" + (out / "hub-broker.toml").read_text())
    again = runner.invoke(cli, [*args, "--tls-host", "hub.example.org", "--bind", "0.0.0.0"])
    assert again.exit_code == 0, again.output
    assert "disagrees" not in again.output
    added = runner.invoke(
        cli,
        ["hub", "device", "add", "pi-1", "--profile", "rpi5", "--config", str(hub.config_path)]
        + ["--out", str(tmp_path / "pi-1")],
    )
    assert added.exit_code == 0, added.output
    agent = tomllib.loads((tmp_path / "pi-1" / "agent.toml").read_text())["mqtt"]
    assert agent["host"] == "hub.example.org" and agent["port"] == 8883
    assert agent["ca_file"] == "ca.crt" and (tmp_path / "pi-1" / "ca.crt").exists()
    assert "warning" not in added.output


def test_device_add_warns_when_devices_would_connect_to_loopback(tmp_path: Path) -> None:
    hub = make_hub(tmp_path, broker={"host": "127.0.0.1"})
    result = CliRunner().invoke(
        cli, ["hub", "device", "add", "pi-1", "--profile", "rpi5", "--config", str(hub.config_path)]
    )
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "device_host" in warnings[0]


@pytest.mark.parametrize(
    ("message", "tls", "cause"),
    [
        ("connection closed before CONNACK (MQTT_ERR_CONN_LOST)", False, "expect TLS"),
        (
            "connect to 127.0.0.1:8883: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
            "failed: IP address mismatch, certificate is not valid for '127.0.0.1'.",
            True,
            "--tls-host",
        ),
        ("broker refused the connection: Not authorized", False, "password"),
        ("connect to 127.0.0.1:1: [Errno 111] Connection refused", False, "nothing listens"),
    ],
)
def test_likely_cause_of_connection_failures(message: str, tls: bool, cause: str) -> None:
    found = likely_cause(message, tls)
    assert found is not None and cause in found
    assert "\n" not in describe_failure(message + "\n(more)", tls)


@pytest.mark.mqtt
def test_plain_client_on_a_tls_listener_names_tls(shared_dir: Path) -> None:
    files, _ = _fleet(shared_dir, bind="127.0.0.1", tls_hosts=("localhost",))
    with run_generated_conf(files):
        client = MqttClient(
            MqttSettings(
                host="127.0.0.1",
                port=files.port,
                client_id="probe",
                username="pi-a",
                password="x",
            )
        )
        client.start()
        try:
            assert not client.wait_connected(3.0)
            error = client.stats.last_error or ""
        finally:
            client.stop()
    assert "likely cause" in error and "TLS" in error, error


@pytest.mark.mqtt
def test_wrong_password_over_tls_names_the_password(shared_dir: Path) -> None:
    files, _ = _fleet(shared_dir, bind="127.0.0.1", tls_hosts=("localhost",))
    assert files.tls is not None
    ca = files.tls.ca_cert
    with run_generated_conf(files):
        client = MqttClient(
            MqttSettings(
                host="127.0.0.1",
                port=files.port,
                client_id="pi-a",
                username="pi-a",
                password="wrong",
                tls=TlsSettings(ca_file=ca),
            )
        )
        client.start()
        try:
            assert not client.wait_connected(3.0)
            error = client.stats.last_error or ""
        finally:
            client.stop()
    assert "password" in error, error


def test_serve_says_serving_only_when_connected(caplog: pytest.LogCaptureFixture) -> None:
    from edgefleet.hub.commands.serve_cmd import _log_started
    from edgefleet.hub.config import HubConfig

    class Down:
        connected = False

        class stats:  # noqa: N801 - mimics the attribute
            last_error = "connection closed before CONNACK — likely cause: TLS"

    config = HubConfig()
    with caplog.at_level(logging.INFO, logger="edgefleet.hub"):
        _log_started(Down(), config, "hub.db")  # type: ignore[arg-type]
    text = caplog.text
    assert "serving" not in text and "not connected" in text and "TLS" in text
