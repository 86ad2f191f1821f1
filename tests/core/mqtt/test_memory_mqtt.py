"""The in-memory fake behaves like the broker features the agent and hub rely on."""

from __future__ import annotations

import pytest

from edgefleet.core.errors import TransportError
from edgefleet.core.mqtt import InboundMessage, MqttSettings, MqttTransport, Will
from edgefleet.core.testing.memory_mqtt import MemoryBroker, MemoryMqttClient


def _client(broker: MemoryBroker, cid: str, **kwargs: object) -> MemoryMqttClient:
    return MemoryMqttClient(MqttSettings(host="memory", client_id=cid, **kwargs), broker)  # type: ignore[arg-type]


def test_implements_the_transport_interface() -> None:
    assert isinstance(_client(MemoryBroker(), "x"), MqttTransport)


def test_publish_subscribe_wildcards_and_retained() -> None:
    broker = MemoryBroker()
    dev, hub = _client(broker, "dev"), _client(broker, "hub")
    dev.start()
    dev.publish("r/dev/state", b"s1", retain=True)
    dev.publish("r/dev/state", b"s2", retain=True)
    got: list[InboundMessage] = []
    hub.subscribe("r/+/state", got.append)
    hub.start()
    assert got == [InboundMessage("r/dev/state", b"s2", True, 1)]
    dev.publish("r/dev/state", b"s3")
    assert got[-1] == InboundMessage("r/dev/state", b"s3", False, 1)
    dev.publish("r/dev/state", b"", retain=True)
    assert broker.retained("r/dev/state") is None


def test_lwt_on_cut_and_queueing_both_ways_while_away() -> None:
    broker = MemoryBroker()
    dev = _client(broker, "dev", lwt=Will("r/dev/status", b"offline"))
    hub = _client(broker, "hub", clean_session=True)
    status: list[bytes] = []
    desired: list[bytes] = []
    hub.subscribe("r/+/status", lambda m: status.append(m.payload))
    dev.subscribe("r/dev/desired", lambda m: desired.append(m.payload))
    hub.start()
    dev.start()
    broker.cut("dev")
    assert status == [b"offline"] and not dev.connected
    hub.publish("r/dev/desired", b"d1")  # queued by the broker for the persistent session
    dev.publish("r/dev/status", b"online")  # queued by the client
    assert dev.stats.queued == 1 and desired == []
    broker.restore("dev")
    assert dev.connected and desired == [b"d1"] and status[-1] == b"online"


def test_clean_stop_sends_no_will_and_handler_errors_are_counted() -> None:
    broker = MemoryBroker()
    dev = _client(broker, "dev", lwt=Will("s", b"gone"))
    watcher = _client(broker, "w")

    def boom(_: InboundMessage) -> None:
        raise RuntimeError("handler bug")

    watcher.subscribe("#", boom)
    watcher.start()
    dev.start()
    dev.publish("x", b"1")
    dev.stop()
    assert [m.topic for m in broker.messages] == ["x"]
    assert watcher.stats.handler_errors == 1 and watcher.stats.received == 1


def test_broker_outage_bounded_queue_and_on_connect() -> None:
    broker = MemoryBroker()
    dev = _client(broker, "dev", max_queued=2)
    strict = _client(broker, "strict", max_queued=1, queue_full="raise")
    connects: list[bool] = []
    dev.on_connect(connects.append)
    dev.start()
    strict.start()
    broker.go_offline()
    for i in range(4):
        dev.publish("t", bytes([i]))
    strict.publish("t", b"a")
    with pytest.raises(TransportError):
        strict.publish("t", b"b")
    assert dev.stats.dropped == 2
    broker.go_online()
    assert connects == [False, True]
    assert [m.payload for m in broker.published_to("t")] == [b"\x02", b"\x03", b"a"]


def test_shared_subscriptions_split_the_load() -> None:
    broker = MemoryBroker()
    got: dict[str, list[bytes]] = {"h1": [], "h2": []}
    for cid in got:
        c = _client(broker, cid)
        c.subscribe("$share/g/t/#", lambda m, cid=cid: got[cid].append(m.payload))
        c.start()
    sender = _client(broker, "s")
    sender.start()
    for i in range(6):
        sender.publish("t/x", bytes([i]))
    assert len(got["h1"]) == 3 and len(got["h2"]) == 3


def test_handlers_that_publish_do_not_recurse() -> None:
    broker = MemoryBroker()
    ping = _client(broker, "ping")
    order: list[int] = []

    def bounce(message: InboundMessage) -> None:
        n = message.payload[0]
        order.append(n)
        if n < 200:
            ping.publish("p", bytes([n + 1]))

    ping.subscribe("p", bounce)
    ping.start()
    ping.publish("p", b"\x00")
    assert order == list(range(201))
