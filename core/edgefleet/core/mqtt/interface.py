"""The public interface shared by the paho-backed client and the in-memory fake.

Agent and hub code depends on :class:`MqttTransport` only, so unit tests of pure logic can
pass :class:`edgefleet.core.testing.memory_mqtt.MemoryMqttClient` and integration tests the
real :class:`edgefleet.core.mqtt.client.MqttClient`.

Threading contract (both implementations):

- ``publish``, ``subscribe``, ``on_connect``, ``on_disconnect``, ``stats`` and the
  ``wait_*``/``flush`` helpers may be called from any thread.
- Handlers and callbacks run on the client's network thread, one at a time. They may call
  ``publish``/``subscribe`` (these only enqueue) but must not block for long: inbound
  messages wait meanwhile. An exception raised by a handler is logged and counted in
  ``stats.handler_errors``; it never stops the client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class InboundMessage:
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


Handler = Callable[[InboundMessage], None]
#: Called after every successful connect with the broker's "session present" flag.
ConnectCallback = Callable[[bool], None]
DisconnectCallback = Callable[[], None]


@dataclass(frozen=True)
class MqttStats:
    """A snapshot of the client's counters."""

    connects: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    published: int = 0  # acknowledged by the broker
    received: int = 0
    queued: int = 0  # waiting in the outgoing queue now
    inflight: int = 0  # sent, not yet acknowledged, now
    dropped: int = 0  # discarded because the outgoing queue was full
    handler_errors: int = 0
    subscribe_failures: int = 0
    last_error: str | None = None


@runtime_checkable
class MqttTransport(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def stats(self) -> MqttStats: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None: ...

    def subscribe(self, topic: str, handler: Handler) -> None: ...

    def on_connect(self, callback: ConnectCallback) -> None: ...

    def on_disconnect(self, callback: DisconnectCallback) -> None: ...

    def wait_connected(self, timeout_s: float) -> bool: ...

    def wait_subscribed(self, timeout_s: float) -> bool: ...

    def flush(self, timeout_s: float) -> bool: ...
