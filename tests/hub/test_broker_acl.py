"""The generated password file, ACL and mosquitto.conf, enforced by a real mosquitto."""

from __future__ import annotations

import getpass
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.hub.hubkit import make_hub
from tests.support.brokers import ProbeClient
from tests.support.waiting import wait_until

from edgefleet.core.protocol.topics import Topics
from edgefleet.core.testing.brokers import MosquittoBroker, find_mosquitto, free_port
from edgefleet.hub.broker_config import BrokerFiles, write_broker_config
from edgefleet.hub.enrollment import enroll_device

T = Topics()
# CONNACK refusals as paho reports them (3.1.1 codes 4/5 map to 134/135).
REFUSED = {4, 5, 134, 135}


@dataclass
class Fleet:
    files: BrokerFiles
    hub_password: str
    passwords: dict[str, str]


def enroll_fleet(root: Path, *, tls_hosts: tuple[str, ...] = ()) -> Fleet:
    hub = make_hub(root)
    store = hub.store()
    config = hub.config()
    passwords = {}
    for device_id in ("pi-a", "pi-b"):
        passwords[device_id] = enroll_device(store, config, device_id, "rpi5", 1.0).password
    files = write_broker_config(
        root / "broker",
        config,
        store.list_devices(),
        port=free_port(),
        bind="127.0.0.1",
        tls_hosts=tls_hosts,
        run_as=getpass.getuser(),
    )
    store.close()
    assert files.hub_password_file is not None
    return Fleet(files, files.hub_password_file.read_text().strip(), passwords)


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return enroll_fleet(tmp_path)


@pytest.fixture
def broker(fleet: Fleet, mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    return mosquitto_factory(
        password_file=fleet.files.password_file,
        acl_file=fleet.files.acl_file,
        allow_anonymous=False,
    )


@pytest.fixture
def clients() -> Iterator[list[ProbeClient]]:
    made: list[ProbeClient] = []
    yield made
    for c in made:
        c.close()


def connect(
    made: list[ProbeClient], port: int, user: str, password: str, **kw: object
) -> ProbeClient:
    client = ProbeClient(port, user, password, **kw)  # type: ignore[arg-type]
    assert client.connect() == 0
    made.append(client)
    return client


@pytest.mark.mqtt
def test_only_enrolled_credentials_get_in(fleet: Fleet, broker: MosquittoBroker) -> None:
    assert ProbeClient(broker.port).connect() in REFUSED
    assert ProbeClient(broker.port, "pi-a", "wrong").connect() in REFUSED
    assert ProbeClient(broker.port, "pi-a", fleet.passwords["pi-b"]).connect() in REFUSED
    good = ProbeClient(broker.port, "pi-a", fleet.passwords["pi-a"])
    assert good.connect() == 0
    good.close()


@pytest.mark.mqtt
def test_a_device_cannot_publish_as_another_device(
    fleet: Fleet, broker: MosquittoBroker, clients: list[ProbeClient]
) -> None:
    hub = connect(clients, broker.port, "edgefleet-hub", fleet.hub_password)
    assert hub.subscribe(f"{T.root}/dev/+/+") == [1]
    a = connect(clients, broker.port, "pi-a", fleet.passwords["pi-a"])
    forged = [
        T.telemetry("pi-b"),
        T.status("pi-b"),
        T.state("pi-b"),
        T.fetch("pi-b"),
        T.desired("pi-a"),
        T.desired("pi-b"),
        T.chunk("pi-a"),
        T.ack("pi-a"),
        T.alerts(),
    ]
    for topic in forged:
        a.publish(topic, b"forged")
    a.publish(T.telemetry("pi-a"), b"mine")  # allowed, and ordered after the forged ones
    seen = hub.wait_for(lambda topic, payload: payload == b"mine")
    assert seen == [(T.telemetry("pi-a"), b"mine")]
    for kind in (T.status, T.state, T.fetch):
        a.publish(kind("pi-a"), b"own")
    assert [t for t, _ in hub.wait_for(lambda t, p: t == T.fetch("pi-a"))] == [
        T.status("pi-a"),
        T.state("pi-a"),
        T.fetch("pi-a"),
    ]


@pytest.mark.mqtt
def test_a_device_cannot_read_another_devices_directives_or_data(
    fleet: Fleet, broker: MosquittoBroker, clients: list[ProbeClient]
) -> None:
    hub = connect(clients, broker.port, "edgefleet-hub", fleet.hub_password)
    a = connect(clients, broker.port, "pi-a", fleet.passwords["pi-a"])
    b = connect(clients, broker.port, "pi-b", fleet.passwords["pi-b"])
    hub.publish(T.desired("pi-b"), b"directive-b", retain=True)  # retained, as the hub does
    for topic in (T.desired("pi-b"), f"{T.root}/dev/+/desired", f"{T.root}/#", "#"):
        a.subscribe(topic)
    for topic in T.device_subscriptions("pi-b"):
        b.subscribe(topic)
    b.publish(T.telemetry("pi-b"), b"b-data")
    for topic in (T.chunk("pi-b"), T.ack("pi-b")):
        hub.publish(topic, b"for-b")
    hub.publish(T.desired("pi-a"), b"directive-a", retain=True)
    hub.publish(T.ack("pi-a"), b"ack-a")
    seen_by_a = a.wait_for(lambda topic, payload: payload == b"ack-a")
    assert {t for t, _ in seen_by_a} <= {T.desired("pi-a"), T.ack("pi-a")}
    assert (T.desired("pi-a"), b"directive-a") in seen_by_a
    seen_by_b = b.wait_for(lambda topic, payload: topic == T.ack("pi-b"))
    assert (T.desired("pi-b"), b"directive-b") in seen_by_b
    assert (T.chunk("pi-b"), b"for-b") in seen_by_b


@pytest.mark.mqtt
def test_the_hub_account_can_use_shared_subscriptions(
    fleet: Fleet, broker: MosquittoBroker, clients: list[ProbeClient]
) -> None:
    hub = connect(clients, broker.port, "edgefleet-hub", fleet.hub_password)
    for topic in T.hub_subscriptions(shared=True):
        assert hub.subscribe(topic) == [1]
    a = connect(clients, broker.port, "pi-a", fleet.passwords["pi-a"])
    a.publish(T.telemetry("pi-a"), b"batch")
    assert hub.wait_for(lambda t, p: p == b"batch")[-1] == (T.telemetry("pi-a"), b"batch")


@contextmanager
def run_generated_conf(files: BrokerFiles) -> Iterator[subprocess.Popen[bytes]]:
    binary = find_mosquitto()
    assert binary is not None, "mosquitto must be installed"
    log = files.conf.with_name("mosquitto.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "-c", str(files.conf)], stdout=out, stderr=subprocess.STDOUT
        )
    try:

        def listening() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", files.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_until(lambda: f"mosquitto to listen: {log.read_text()}", listening, 20)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.subprocess
def test_generated_mosquitto_conf_runs_as_written(fleet: Fleet, clients: list[ProbeClient]) -> None:
    with run_generated_conf(fleet.files):
        port = fleet.files.port
        assert ProbeClient(port).connect() in REFUSED
        hub = connect(clients, port, "edgefleet-hub", fleet.hub_password)
        hub.subscribe(f"{T.root}/dev/+/telemetry")
        # The client id is replaced by the username: borrowing pi-b's id gains nothing.
        a = connect(clients, port, "pi-a", fleet.passwords["pi-a"], client_id="pi-b")
        a.publish(T.telemetry("pi-b"), b"forged")
        a.publish(T.telemetry("pi-a"), b"mine")
        assert hub.wait_for(lambda t, p: p == b"mine") == [(T.telemetry("pi-a"), b"mine")]


@pytest.mark.subprocess
def test_tls_listener_with_the_generated_ca(tmp_path: Path, clients: list[ProbeClient]) -> None:
    fleet = enroll_fleet(tmp_path, tls_hosts=("localhost", "127.0.0.1"))
    assert fleet.files.tls is not None
    with run_generated_conf(fleet.files):
        port = fleet.files.port
        device = connect(
            clients, port, "pi-a", fleet.passwords["pi-a"], ca_file=fleet.files.tls.ca_cert
        )
        device.publish(T.status("pi-a"), b"online")
        stranger_ca = enroll_fleet(tmp_path / "other", tls_hosts=("localhost",)).files.tls
        assert stranger_ca is not None
        with pytest.raises(Exception, match="(?i)certificate"):
            ProbeClient(
                port, "pi-a", fleet.passwords["pi-a"], ca_file=stranger_ca.ca_cert
            ).connect()
