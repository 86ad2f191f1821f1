"""The broker fixtures are real: messages go through mosquitto and amqtt over TCP.

Every wait below is bounded and only guards against hangs; no test asserts on time.
"""

from __future__ import annotations

import queue
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgefleet.core.testing.brokers import (
    MOSQUITTO_ENV,
    AmqttBroker,
    MosquittoBroker,
    TlsFiles,
    free_port,
    make_test_pki,
    write_password_file,
)
from edgefleet.core.testing.clock import FakeClock

WAIT_S = 10.0


class Client:
    """A paho client that records CONNACK, SUBACK and messages for assertions."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        client_cert: TlsFiles | None = None,
    ) -> None:
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        if username is not None:
            self.paho.username_pw_set(username, password)
        if tls is not None:
            cert = client_cert.cert if client_cert else None
            key = client_cert.key if client_cert else None
            self.paho.tls_set(
                ca_certs=str(tls.ca),
                certfile=str(cert) if cert else None,
                keyfile=str(key) if key else None,
            )
        self.connack: queue.Queue[Any] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.paho.on_connect = lambda c, u, flags, rc, props: self.connack.put(rc)
        self.paho.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put(list(rcs))
        self.paho.on_message = lambda c, u, m: self.messages.put(
            (m.topic, bytes(m.payload), bool(m.retain))
        )
        self.host, self.port = host, port

    def connect(self) -> Any:
        """Connect and return the CONNACK reason code."""
        self.paho.connect(self.host, self.port, keepalive=30)
        self.paho.loop_start()
        return self.connack.get(timeout=WAIT_S)

    def subscribe(self, topic: str) -> list[Any]:
        self.paho.subscribe(topic, qos=1)
        return self.subacks.get(timeout=WAIT_S)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.paho.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=WAIT_S)
        assert info.is_published(), f"publish to {topic} was not acknowledged"

    def next_message(self) -> tuple[str, bytes, bool]:
        return self.messages.get(timeout=WAIT_S)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def round_trip(host: str, port: int, **client_kwargs: Any) -> tuple[str, bytes, bool]:
    sub = Client(host, port, **client_kwargs)
    pub = Client(host, port, **client_kwargs)
    try:
        assert sub.connect() == 0
        assert pub.connect() == 0
        assert [rc.value for rc in sub.subscribe("edgefleet/test/#")] == [1]
        pub.publish("edgefleet/test/ping", b"hello")
        return sub.next_message()
    finally:
        sub.close()
        pub.close()


@pytest.mark.mqtt
def test_mosquitto_round_trip(mosquitto: MosquittoBroker) -> None:
    assert mosquitto.port != 1883
    assert mosquitto.running
    assert round_trip(mosquitto.host, mosquitto.port) == ("edgefleet/test/ping", b"hello", False)


@pytest.mark.mqtt
def test_amqtt_round_trip(amqtt_broker: AmqttBroker) -> None:
    assert round_trip(amqtt_broker.host, amqtt_broker.port) == (
        "edgefleet/test/ping",
        b"hello",
        False,
    )


def test_amqtt_stop_releases_port() -> None:
    broker = AmqttBroker().start()
    broker.stop()
    with socket.socket() as sock:
        assert sock.connect_ex((broker.host, broker.port)) != 0


@pytest.fixture
def secured(tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    passwords = write_password_file(
        tmp_path / "passwd", {"hub": "hub-secret", "device-a": "a-secret"}
    )
    acl = tmp_path / "acl"
    acl.write_text(
        "user hub\n"
        "topic readwrite edgefleet/#\n"
        "\n"
        "user device-a\n"
        "topic write edgefleet/v1/dev/device-a/telemetry\n"
        "topic read edgefleet/v1/dev/device-a/desired\n",
        encoding="utf-8",
    )
    return mosquitto_factory(password_file=passwords, acl_file=acl, allow_anonymous=False)


@pytest.mark.mqtt
def test_acl_denies_a_topic_the_user_may_not_write(secured: MosquittoBroker) -> None:
    hub = Client(secured.host, secured.port, username="hub", password="hub-secret")
    device = Client(secured.host, secured.port, username="device-a", password="a-secret")
    try:
        assert hub.connect() == 0
        assert device.connect() == 0
        hub.subscribe("edgefleet/#")
        # Denied first, allowed second, same connection: mosquitto keeps per-client
        # order, so had the denied one gone through it would arrive before the allowed one.
        device.publish("edgefleet/v1/dev/device-b/telemetry", b"forged")
        device.publish("edgefleet/v1/dev/device-a/telemetry", b"mine")
        assert hub.next_message() == ("edgefleet/v1/dev/device-a/telemetry", b"mine", False)
        assert hub.messages.empty()
    finally:
        hub.close()
        device.close()


@pytest.mark.mqtt
def test_acl_denies_a_subscription_the_user_may_not_read(secured: MosquittoBroker) -> None:
    device = Client(secured.host, secured.port, username="device-a", password="a-secret")
    hub = Client(secured.host, secured.port, username="hub", password="hub-secret")
    try:
        assert device.connect() == 0
        assert hub.connect() == 0
        device.subscribe("edgefleet/v1/dev/device-b/desired")
        device.subscribe("edgefleet/v1/dev/device-a/desired")
        hub.publish("edgefleet/v1/dev/device-b/desired", b"not for a")
        hub.publish("edgefleet/v1/dev/device-a/desired", b"for a")
        assert device.next_message() == ("edgefleet/v1/dev/device-a/desired", b"for a", False)
        assert device.messages.empty()
    finally:
        device.close()
        hub.close()


@pytest.mark.parametrize(
    ("username", "password"),
    [("device-a", "wrong"), ("nobody", "x"), (None, None)],
    ids=["bad-password", "unknown-user", "anonymous"],
)
@pytest.mark.mqtt
def test_password_file_refuses_bad_credentials(
    secured: MosquittoBroker, username: str | None, password: str | None
) -> None:
    client = Client(secured.host, secured.port, username=username, password=password)
    try:
        reason = client.connect()
        assert reason.is_failure
    finally:
        client.close()


@pytest.mark.mqtt
def test_restart_keeps_the_port(mosquitto: MosquittoBroker) -> None:
    port = mosquitto.port
    mosquitto.restart()
    assert mosquitto.port == port
    assert round_trip(mosquitto.host, port)[1] == b"hello"
    mosquitto.kill()
    assert not mosquitto.running
    mosquitto.start()
    assert mosquitto.port == port
    assert round_trip(mosquitto.host, port)[1] == b"hello"


@pytest.mark.mqtt
def test_persistence_keeps_retained_messages_across_restart(
    mosquitto_factory: Callable[..., MosquittoBroker],
) -> None:
    broker = mosquitto_factory(persistence=True)
    pub = Client(broker.host, broker.port)
    assert pub.connect() == 0
    pub.publish("edgefleet/v1/dev/d1/desired", b"directive", retain=True)
    pub.close()
    broker.restart()
    sub = Client(broker.host, broker.port)
    try:
        assert sub.connect() == 0
        sub.subscribe("edgefleet/v1/dev/d1/desired")
        assert sub.next_message() == ("edgefleet/v1/dev/d1/desired", b"directive", True)
    finally:
        sub.close()


@pytest.mark.mqtt
def test_tls_round_trip_with_client_certificate(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> None:
    pki = make_test_pki(tmp_path / "pki", clients=("device-a",))
    broker = mosquitto_factory(tls=pki.server, require_certificate=True)
    message = round_trip(
        broker.host, broker.port, tls=pki.server, client_cert=pki.clients["device-a"]
    )
    assert message[1] == b"hello"


def raw_tls_connect(broker: MosquittoBroker, ca: Path, client: TlsFiles | None) -> bytes:
    """Send a bare MQTT CONNECT over TLS; return the broker's first bytes (b"" if it hung up)."""
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c" + b"\x00\x03raw"
    connect = b"\x10" + bytes([len(variable)]) + variable
    with (
        socket.create_connection((broker.host, broker.port), timeout=WAIT_S) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        try:
            tls.sendall(connect)
            return tls.recv(4)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


@pytest.mark.mqtt
def test_tls_requires_a_client_certificate(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> None:
    pki = make_test_pki(tmp_path / "pki", clients=("device-a",))
    broker = mosquitto_factory(tls=pki.server, require_certificate=True)
    # With TLS 1.3 the client finishes its handshake before the server checks the
    # client certificate, so the refusal shows up on the first read, not in connect.
    assert raw_tls_connect(broker, pki.ca, pki.clients["device-a"]) == b"\x20\x02\x00\x00"
    assert raw_tls_connect(broker, pki.ca, None) == b""


@pytest.mark.subprocess
def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "b", password_file=tmp_path / "missing-passwd")
    try:
        with pytest.raises(RuntimeError, match="mosquitto exited.*missing-passwd"):
            broker.start()
    finally:
        broker.kill()  # only matters if start() wrongly succeeded
    assert not broker.running


def test_a_given_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = MosquittoBroker(tmp_path / "b", port=squatter.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match="already in use"):
                broker.start()
        finally:
            broker.kill()  # only matters if start() wrongly succeeded
    assert not broker.running


@pytest.mark.mqtt
def test_extra_config_reaches_mosquitto(
    mosquitto_factory: Callable[..., MosquittoBroker],
) -> None:
    broker = mosquitto_factory(extra_config=["max_packet_size 1000"])
    client = Client(broker.host, broker.port)
    dropped: queue.Queue[Any] = queue.Queue()
    client.paho.on_disconnect = lambda c, u, flags, rc, props: dropped.put(rc)
    try:
        assert client.connect() == 0
        client.paho.publish("edgefleet/test/big", b"x" * 5000, qos=1)
        # Over the limit: mosquitto hangs up on the client.
        assert dropped.get(timeout=WAIT_S) is not None
    finally:
        client.paho.loop_stop()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_fake_clock() -> None:
    clock = FakeClock(100.0)
    assert clock() == 100.0
    assert clock.advance(5) == 105.0
    clock.sleep(1.5)
    assert clock.time() == 106.5
    with pytest.raises(ValueError):
        clock.advance(-1)
    clock.set(50.0)
    assert clock() == 50.0


def test_fixture_fails_when_mosquitto_is_missing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile("def test_needs_broker(mosquitto):\n    pass\n")
    monkeypatch.setenv(MOSQUITTO_ENV, str(pytester.path / "no-such-mosquitto"))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    # An error in fixture setup: counted as an error, never as a skip.
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*install-system-deps.sh*"])
