"""Flows that need the real broker: device revoke/reissue/remove through the API take effect in
a running Mosquitto (SIGHUP reload), and ``hub serve --api`` serves the API next to the
service; plus the API over HTTPS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.hub.console.consolekit import ROLLOUT, ConsoleHub, client, free_port, populate
from tests.hub.console.test_cli_console import _wait_http
from tests.support.brokers import ProbeClient

from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.hub.broker_config import write_broker_config
from edgefleet.hub.console.api.server import ApiThread, TlsFiles

REFUSED = {4, 5, 134, 135}


@pytest.fixture
def hub_and_broker(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> Iterator[tuple[ConsoleHub, MosquittoBroker]]:
    port = free_port()
    hub = populate(
        tmp_path / "hub",
        broker={
            "host": "127.0.0.1",
            "port": port,
            "config_dir": "broker",
            "password_file": "broker/hub.password",
        },
    )
    files = write_broker_config(
        hub.fx.root / "broker", hub.config, hub.store.list_devices(), port=port, bind="127.0.0.1"
    )
    broker = mosquitto_factory(
        port=port,
        password_file=files.password_file,
        acl_file=files.acl_file,
        allow_anonymous=False,
    )
    yield hub, broker
    hub.store.close()


def connects(port: int, user: str, password: str) -> int:
    probe = ProbeClient(port, user, password)
    try:
        return probe.connect()
    finally:
        probe.close()


def eventually(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.mark.mqtt
def test_revoke_reissue_remove_reach_the_running_broker(
    hub_and_broker: tuple[ConsoleHub, MosquittoBroker],
) -> None:
    hub, broker = hub_and_broker
    config = replace(
        hub.config, broker=replace(hub.config.broker, reload_command=f"kill -HUP {broker.pid}")
    )
    port = free_port()
    api = ApiThread(config, hub.store, "127.0.0.1", port).start()
    try:
        admin = client(f"http://127.0.0.1:{port}", hub.token("admin"))
        assert connects(broker.port, "north-d00", "pw-north-d00") == 0

        r = admin.post("/api/v1/devices/north-d00/revoke")
        assert r.status_code == 200 and r.json()["broker"]["reloaded"] is True
        eventually(
            lambda: connects(broker.port, "north-d00", "pw-north-d00") in REFUSED,
            "the revoked device still gets in",
        )
        assert admin.get("/api/v1/devices/north-d00").json()["revoked"] is True

        r = admin.post("/api/v1/devices/north-d00/reissue", json={})
        new_password = r.json()["mqtt"]["password"]
        eventually(
            lambda: connects(broker.port, "north-d00", new_password) == 0,
            "the re-issued password does not get in",
        )
        assert connects(broker.port, "north-d00", "pw-north-d00") in REFUSED

        assert admin.delete("/api/v1/devices/south-d01").status_code == 400  # in the rollout
        assert admin.delete("/api/v1/devices/north-d01").status_code == 200
        eventually(
            lambda: connects(broker.port, "north-d01", "pw-north-d01") in REFUSED,
            "the removed device still gets in",
        )
        assert admin.get("/api/v1/devices/north-d01").status_code == 404
        assert connects(broker.port, "north-d02", "pw-north-d02") == 0  # others unaffected

        r = admin.post("/api/v1/devices", json={"device": "west-d00", "profile": "rpi4-arm64"})
        assert r.status_code == 201, r.text
        enrolled = r.json()["mqtt"]
        eventually(
            lambda: connects(broker.port, "west-d00", enrolled["password"]) == 0,
            "the enrolled device does not get in",
        )
    finally:
        api.stop()


@pytest.mark.mqtt
@pytest.mark.slow
def test_hub_serve_with_api(hub_and_broker: tuple[ConsoleHub, MosquittoBroker]) -> None:
    hub, _broker = hub_and_broker
    port = free_port()
    edgefleet = str(Path(sys.executable).with_name("edgefleet"))
    proc = subprocess.Popen(
        [
            edgefleet,
            "hub",
            "serve",
            "--config",
            str(hub.fx.config_path),
            "--api",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/api/v1/health")
        op = client(base, hub.token("operator"))
        assert op.get("/api/v1/overview").json()["devices"]["total"] == 8
        assert op.post(f"/api/v1/rollouts/{ROLLOUT}/pause").json()["state"] == "paused"
        assert client(base).get("/api/v1/overview").status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()


def _self_signed(directory: Path) -> TlsFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "api.crt", directory / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TlsFiles(cert_path, key_path)


def test_https_with_a_certificate_and_secure_cookies(tmp_path: Path) -> None:
    hub = populate(tmp_path / "hub")
    tls = _self_signed(tmp_path)
    port = free_port()
    api = ApiThread(hub.config, hub.store, "127.0.0.1", port, tls).start()
    try:
        base = f"https://127.0.0.1:{port}"
        browser = httpx.Client(
            base_url=base, verify=ssl.create_default_context(cafile=str(tls.cert))
        )
        r = browser.post("/api/v1/session", json={"token": hub.token("viewer")})
        assert r.status_code == 200
        assert "secure" in r.headers["set-cookie"].lower()
        assert browser.get("/api/v1/overview").status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=5)
    finally:
        api.stop()
        hub.store.close()
