"""MqttClient against a real Mosquitto (and one amqtt smoke test)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.waiting import wait_until

from edgefleet.core.errors import TransportError
from edgefleet.core.mqtt import (
    BackoffPolicy,
    InboundMessage,
    MqttSettings,
    MqttTransport,
    TlsSettings,
    Will,
)
from edgefleet.core.mqtt.client import MqttClient
from edgefleet.core.protocol import TopicKind, Topics
from edgefleet.core.testing.brokers import MosquittoBroker, make_test_pki, write_password_file

pytestmark = pytest.mark.mqtt

FAST = BackoffPolicy(initial_s=0.05, max_s=0.5, stable_after_s=0.0)
WAIT_S = 15.0


class Inbox:
    """Collects messages from a handler, thread-safely."""

    def __init__(self) -> None:
        self.messages: list[InboundMessage] = []
        self._lock = threading.Lock()

    def __call__(self, message: InboundMessage) -> None:
        with self._lock:
            self.messages.append(message)

    @property
    def payloads(self) -> list[bytes]:
        with self._lock:
            return [m.payload for m in self.messages]

    def wait_for(self, n: int) -> bool:
        return wait_until(f"{n} messages", lambda: len(self.messages) >= n, WAIT_S)


@pytest.fixture
def make_client() -> Iterator[Callable[..., MqttClient]]:
    clients: list[MqttClient] = []

    def make(broker: Any, client_id: str, *, start: bool = True, **kwargs: Any) -> MqttClient:
        kwargs.setdefault("backoff", FAST)
        client = MqttClient(
            MqttSettings(host=broker.host, port=broker.port, client_id=client_id, **kwargs)
        )
        clients.append(client)
        if start:
            client.start()
        return client

    yield make
    for client in clients:
        client.stop()


def test_qos1_round_trip_in_order(
    mosquitto: MosquittoBroker, make_client: Callable[..., MqttClient]
) -> None:
    inbox = Inbox()
    receiver = make_client(mosquitto, "receiver", start=False)
    receiver.subscribe("t/+/data", inbox)
    receiver.start()
    sender = make_client(mosquitto, "sender", max_inflight=5)
    assert isinstance(sender, MqttTransport)
    assert receiver.wait_subscribed(WAIT_S) and sender.wait_connected(WAIT_S)
    for i in range(300):
        sender.publish(f"t/{i % 3}/data", i.to_bytes(2, "big"))
    assert sender.flush(WAIT_S)
    assert inbox.wait_for(300)
    assert [int.from_bytes(p, "big") for p in inbox.payloads] == list(range(300))
    assert {m.qos for m in inbox.messages} == {1}
    assert sender.stats.published == 300 and sender.stats.inflight == 0


def test_retained_message_reaches_a_late_subscriber(
    mosquitto: MosquittoBroker, make_client: Callable[..., MqttClient]
) -> None:
    publisher = make_client(mosquitto, "pub")
    publisher.publish("r/dev/state", b"old", retain=True)
    publisher.publish("r/dev/state", b"new", retain=True)
    assert publisher.flush(WAIT_S)
    inbox = Inbox()
    late = make_client(mosquitto, "late", start=False)
    late.subscribe("r/+/state", inbox)
    late.start()
    assert inbox.wait_for(1)
    assert inbox.messages[0] == InboundMessage("r/dev/state", b"new", True, 1)


LWT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from edgefleet.core.mqtt import MqttSettings, Will
    from edgefleet.core.mqtt.client import MqttClient
    port, topic = int(sys.argv[1]), sys.argv[2]
    client = MqttClient(MqttSettings(host="127.0.0.1", port=port, client_id="victim",
                                     lwt=Will(topic, b"offline", retain=True)))
    client.start()
    client.publish(topic, b"online", retain=True)
    assert client.wait_connected(15) and client.flush(15)
    print("ready", flush=True)
    time.sleep(120)
    """
)


def test_lwt_is_delivered_when_the_process_is_killed(
    mosquitto: MosquittoBroker, make_client: Callable[..., MqttClient]
) -> None:
    inbox = Inbox()
    watcher = make_client(mosquitto, "watcher", start=False)
    watcher.subscribe("fleet/victim/status", inbox)
    watcher.start()
    assert watcher.wait_subscribed(WAIT_S)
    victim = subprocess.Popen(
        [sys.executable, "-c", LWT_SCRIPT, str(mosquitto.port), "fleet/victim/status"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert victim.stdout is not None and victim.stdout.readline().strip() == "ready"
        assert inbox.wait_for(1) and inbox.payloads == [b"online"]
        victim.kill()  # SIGKILL: the socket closes without DISCONNECT
        victim.wait(WAIT_S)
    finally:
        victim.kill()
    assert inbox.wait_for(2)
    assert inbox.payloads == [b"online", b"offline"]


def test_clean_stop_sends_no_lwt(
    mosquitto: MosquittoBroker, make_client: Callable[..., MqttClient]
) -> None:
    inbox = Inbox()
    watcher = make_client(mosquitto, "watcher", start=False)
    watcher.subscribe("s/#", inbox)
    watcher.start()
    assert watcher.wait_subscribed(WAIT_S)
    device = make_client(mosquitto, "dev", lwt=Will("s/dev", b"offline"))
    device.publish("s/dev", b"bye")
    assert device.flush(WAIT_S)
    device.stop()
    marker = make_client(mosquitto, "marker")
    marker.publish("s/marker", b"after")
    assert inbox.wait_for(2)
    assert inbox.payloads == [b"bye", b"after"]


def test_reconnects_after_broker_restart_and_resubscribes(
    mosquitto: MosquittoBroker, make_client: Callable[..., MqttClient]
) -> None:
    inbox = Inbox()
    sub = make_client(mosquitto, "sub", start=False)
    reconnected = threading.Event()
    sub.on_connect(lambda present: reconnected.set() if sub.stats.connects >= 2 else None)
    sub.subscribe("a/#", inbox)
    sub.start()
    assert sub.wait_subscribed(WAIT_S)
    mosquitto.restart()  # no persistence: the broker forgot every session and subscription
    # The counter moves before the on_connect callbacks run: wait for the callback itself.
    assert reconnected.wait(WAIT_S) and sub.stats.connects >= 2
    assert sub.wait_subscribed(WAIT_S)
    pub = make_client(mosquitto, "pub")
    pub.publish("a/b", b"after restart")
    assert inbox.wait_for(1)
    assert inbox.payloads == [b"after restart"]
    assert sub.stats.disconnects >= 1 and sub.stats.handler_errors == 0


def test_bounded_queue_while_the_broker_is_down(
    mosquitto_factory: Callable[..., MosquittoBroker], make_client: Callable[..., MqttClient]
) -> None:
    broker = mosquitto_factory(persistence=True)
    inbox = Inbox()
    sub = make_client(broker, "sub", start=False)  # persistent session, survives the restart
    sub.subscribe("q/#", inbox)
    sub.start()
    assert sub.wait_subscribed(WAIT_S)
    dropping = make_client(broker, "dropping", max_queued=3)
    strict = make_client(broker, "strict", max_queued=2, queue_full="raise")
    assert dropping.wait_connected(WAIT_S) and strict.wait_connected(WAIT_S)
    broker.stop()
    assert wait_until(
        "both clients dropped", lambda: not dropping.connected and not strict.connected, WAIT_S
    )
    for i in range(10):
        dropping.publish("q/drop", bytes([i]))
    strict.publish("q/strict", b"1")
    strict.publish("q/strict", b"2")
    with pytest.raises(TransportError, match="queue full"):
        strict.publish("q/strict", b"3")
    assert dropping.stats.queued == 3 and dropping.stats.dropped == 7
    broker.start()
    assert inbox.wait_for(5)
    assert dropping.flush(WAIT_S) and strict.flush(WAIT_S)
    time.sleep(0.2)  # let stragglers arrive so an unexpected extra message would be seen
    drop = [m.payload for m in inbox.messages if m.topic == "q/drop"]
    kept = [m.payload for m in inbox.messages if m.topic == "q/strict"]
    assert drop == [bytes([7]), bytes([8]), bytes([9])]
    assert kept == [b"1", b"2"]


def test_persistent_session_queues_qos1_messages_while_the_device_is_away(
    mosquitto: MosquittoBroker, make_client: Callable[..., MqttClient]
) -> None:
    first = make_client(mosquitto, "pi-7", start=False)
    first.subscribe("d/pi-7/desired", Inbox())
    first.start()
    assert first.wait_subscribed(WAIT_S)
    first.stop()
    hub = make_client(mosquitto, "hub", clean_session=True)
    hub.publish("d/pi-7/desired", b"while away")
    assert hub.flush(WAIT_S)
    inbox = Inbox()
    sessions: list[bool] = []
    again = make_client(mosquitto, "pi-7", start=False)
    again.on_connect(sessions.append)
    again.subscribe("d/pi-7/desired", inbox)
    again.start()
    assert inbox.wait_for(1)
    assert inbox.payloads == [b"while away"] and sessions == [True]


def test_handler_exceptions_are_counted_and_do_not_stop_delivery(
    mosquitto: MosquittoBroker, make_client: Callable[..., MqttClient]
) -> None:
    inbox = Inbox()

    def flaky(message: InboundMessage) -> None:
        if message.payload == b"bad":
            raise ValueError("handler bug")
        inbox(message)

    sub = make_client(mosquitto, "sub", start=False)
    sub.subscribe("h", flaky)
    sub.start()
    assert sub.wait_subscribed(WAIT_S)
    pub = make_client(mosquitto, "pub")
    for payload in (b"bad", b"good", b"bad", b"good"):
        pub.publish("h", payload)
    assert inbox.wait_for(2)
    assert inbox.payloads == [b"good", b"good"]
    assert sub.stats.handler_errors == 2 and sub.connected


def test_tls_with_username_and_password(
    tmp_path: Path,
    mosquitto_factory: Callable[..., MosquittoBroker],
    make_client: Callable[..., MqttClient],
) -> None:
    pki = make_test_pki(tmp_path / "pki")
    passwords = write_password_file(tmp_path / "passwd", {"pi-1": "s3cret"})
    broker = mosquitto_factory(tls=pki.server, password_file=passwords, allow_anonymous=False)
    tls = TlsSettings(ca_file=pki.ca)
    inbox = Inbox()
    good = make_client(broker, "pi-1", start=False, username="pi-1", password="s3cret", tls=tls)
    good.subscribe("secure/#", inbox)
    good.start()
    assert good.wait_subscribed(WAIT_S)
    good.publish("secure/x", b"over tls")
    assert inbox.wait_for(1) and inbox.payloads == [b"over tls"]

    wrong = make_client(broker, "pi-2", username="pi-1", password="nope", tls=tls)
    untrusted = make_client(
        broker,
        "pi-3",
        username="pi-1",
        password="s3cret",
        tls=TlsSettings(ca_file=make_test_pki(tmp_path / "other").ca),
    )
    plain = make_client(broker, "pi-4", username="pi-1", password="s3cret")
    for client in (wrong, untrusted, plain):
        assert wait_until(
            "two connect failures", lambda c=client: c.stats.connect_failures >= 2, WAIT_S
        )
        assert not client.connected
    assert "refused" in (wrong.stats.last_error or "")
    assert "CERTIFICATE_VERIFY_FAILED" in (untrusted.stats.last_error or "")


def test_mqtt5_persistent_session(
    mosquitto: MosquittoBroker, make_client: Callable[..., MqttClient]
) -> None:
    first = make_client(mosquitto, "v5-dev", start=False, protocol="5")
    first.subscribe("v5/in", Inbox())
    first.start()
    assert first.wait_subscribed(WAIT_S)
    first.stop()
    hub = make_client(mosquitto, "v5-hub", protocol="5", clean_session=True)
    hub.publish("v5/in", b"queued for v5")
    assert hub.flush(WAIT_S)
    inbox = Inbox()
    again = make_client(mosquitto, "v5-dev", start=False, protocol="5")
    again.subscribe("v5/in", inbox)
    again.start()
    assert inbox.wait_for(1) and inbox.payloads == [b"queued for v5"]


def test_hub_subscriptions_split_work_and_give_every_hub_the_status(
    mosquitto: MosquittoBroker, make_client: Callable[..., MqttClient]
) -> None:
    topics = Topics()
    device = make_client(mosquitto, "pi-1")
    device.publish(topics.status("pi-1"), b"retained status", retain=True)
    assert device.flush(WAIT_S)
    inboxes = {"hub-a": Inbox(), "hub-b": Inbox()}
    hubs = []
    for name, inbox in inboxes.items():
        hub = make_client(mosquitto, name, start=False, clean_session=True)
        for topic_filter in topics.hub_subscriptions(shared=True):
            hub.subscribe(topic_filter, inbox)
        hub.start()
        hubs.append(hub)
    assert all(hub.wait_subscribed(WAIT_S) for hub in hubs)
    for i in range(20):
        device.publish(topics.telemetry("pi-1"), bytes([i]))
    assert wait_until(
        "22 messages", lambda: sum(len(i.messages) for i in inboxes.values()) >= 22, WAIT_S
    )
    for inbox in inboxes.values():
        parsed = [(topics.parse(m.topic).kind, m.payload) for m in inbox.messages]
        assert (TopicKind.STATUS, b"retained status") in parsed
    telemetry = sorted(
        m.payload[0]
        for inbox in inboxes.values()
        for m in inbox.messages
        if topics.parse(m.topic).kind == TopicKind.TELEMETRY
    )
    assert telemetry == list(range(20))  # each batch handled by exactly one hub


def test_round_trip_on_amqtt(amqtt_broker: Any, make_client: Callable[..., MqttClient]) -> None:
    inbox = Inbox()
    sub = make_client(amqtt_broker, "sub", start=False)
    sub.subscribe("am/#", inbox)
    sub.start()
    assert sub.wait_subscribed(WAIT_S)
    pub = make_client(amqtt_broker, "pub")
    pub.publish("am/x", b"hello amqtt")
    assert inbox.wait_for(1) and inbox.payloads == [b"hello amqtt"]
