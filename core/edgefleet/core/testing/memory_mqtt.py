"""An in-memory MQTT broker and client with the public interface of MqttClient.

For unit tests of pure logic only (docs/testing.md): every protocol path also has a test over
a real Mosquitto. What it models:

- QoS 1 delivery, wildcards, retained messages (an empty retained payload clears), LWT,
  persistent sessions (``clean_session=False``: subscriptions kept and messages queued
  while the client is away), shared subscriptions (``$share/group/...``, round robin).
- The client's bounded outgoing queue while disconnected, with the same ``queue_full``
  policy as the real one, drained on reconnect.
- Faults: :meth:`MemoryBroker.cut` (abrupt network loss of one client: LWT fires, the
  client stays away until :meth:`MemoryBroker.restore`), :meth:`MemoryBroker.go_offline` /
  :meth:`MemoryBroker.go_online` (broker outage and restart with sessions kept).

Delivery is synchronous and deterministic: a publish is delivered before ``publish``
returns, unless it happens inside a handler, in which case it is delivered right after the
current handler returns (a trampoline, so handlers that publish cannot recurse without
bound). Reconnects happen at once; there is no backoff timing to wait for.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgefleet.core.errors import TransportError
from edgefleet.core.mqtt.interface import (
    ConnectCallback,
    DisconnectCallback,
    Handler,
    InboundMessage,
    MqttStats,
)
from edgefleet.core.mqtt.matching import check_filter, check_topic, topic_matches
from edgefleet.core.mqtt.outbox import Outbox, OutgoingMessage
from edgefleet.core.mqtt.settings import MqttSettings

log = logging.getLogger("edgefleet.mqtt.memory")


@dataclass
class _Session:
    filters: set[str] = field(default_factory=set)
    queued: deque[InboundMessage] = field(default_factory=deque)
    persistent: bool = False


class MemoryBroker:
    """Routes messages between MemoryMqttClients in the same process."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._clients: dict[str, MemoryMqttClient] = {}  # connected clients by client id
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, bytes] = {}
        self._pending: deque[tuple[MemoryMqttClient, InboundMessage]] = deque()
        self._delivering = False
        self._share_turn: dict[str, int] = {}
        self._cut: set[str] = set()
        self._known: list[MemoryMqttClient] = []
        self.online = True
        #: Every message the broker accepted, in order (for assertions).
        self.messages: list[InboundMessage] = []

    # ---------------------------------------------------------------- inspection

    def retained(self, topic: str) -> bytes | None:
        with self._lock:
            return self._retained.get(topic)

    def published_to(self, topic_filter: str) -> list[InboundMessage]:
        with self._lock:
            return [m for m in self.messages if topic_matches(topic_filter, m.topic)]

    def is_connected(self, client_id: str) -> bool:
        with self._lock:
            return client_id in self._clients

    # ---------------------------------------------------------------- faults

    def cut(self, client_id: str) -> None:
        """Drop one client's network abruptly: its LWT is published, it stays away."""
        with self._lock:
            self._cut.add(client_id)
            client = self._clients.get(client_id)
        if client is not None:
            self._drop(client, send_will=True)
            client._lost()
        self._run_deliveries()

    def restore(self, client_id: str) -> None:
        """Give a cut client its network back; it reconnects if it is running."""
        with self._lock:
            self._cut.discard(client_id)
            client = next((c for c in self._known if c.settings.client_id == client_id), None)
        if client is not None and client._running:
            client._try_connect()

    def go_offline(self) -> None:
        """The broker goes down: every client loses its connection (no LWT is sent)."""
        with self._lock:
            self.online = False
            clients = list(self._clients.values())
        for client in clients:
            self._drop(client, send_will=False)
            client._lost()

    def go_online(self) -> None:
        """The broker is back with its sessions; running clients reconnect at once."""
        with self._lock:
            self.online = True
            clients = [c for c in self._known if c._running and not c.connected]
        for client in clients:
            client._try_connect()

    # ---------------------------------------------------------------- used by clients

    def _connect(self, client: MemoryMqttClient) -> bool | None:
        """Session-present flag, or None when the client cannot connect now."""
        cid = client.settings.client_id
        with self._lock:
            if not self.online or cid in self._cut:
                return None
            previous = self._clients.get(cid)
        if previous is not None and previous is not client:
            # Client-id takeover, as MQTT requires: the old connection is dropped.
            self._drop(previous, send_will=True)
            previous._lost()
        with self._lock:
            session = self._sessions.get(cid)
            present = (
                session is not None and session.persistent and not client.settings.clean_session
            )
            if not present:
                session = _Session(persistent=not client.settings.clean_session)
                self._sessions[cid] = session
            self._clients[cid] = client
            assert session is not None
            queued = list(session.queued)
            session.queued.clear()
            for message in queued:
                self._pending.append((client, message))
        return present

    def _drop(self, client: MemoryMqttClient, *, send_will: bool) -> None:
        cid = client.settings.client_id
        with self._lock:
            if self._clients.get(cid) is not client:
                return
            del self._clients[cid]
            session = self._sessions.get(cid)
            if session is not None and not session.persistent:
                del self._sessions[cid]
        will = client.settings.lwt
        if send_will and will is not None:
            self._route(InboundMessage(will.topic, will.payload, will.retain, will.qos))

    def _subscribe(self, client: MemoryMqttClient, topic_filter: str) -> None:
        cid = client.settings.client_id
        with self._lock:
            self._sessions[cid].filters.add(topic_filter)
            if not topic_filter.startswith("$share/"):
                for topic, payload in sorted(self._retained.items()):
                    if topic_matches(topic_filter, topic):
                        self._pending.append((client, InboundMessage(topic, payload, True, 1)))

    def _route(self, message: InboundMessage) -> None:
        with self._lock:
            self.messages.append(message)
            if message.retain:
                if message.payload:
                    self._retained[message.topic] = message.payload
                else:
                    self._retained.pop(message.topic, None)
            live = InboundMessage(message.topic, message.payload, False, message.qos)
            shared: dict[str, list[str]] = {}
            for cid, session in self._sessions.items():
                for topic_filter in session.filters:
                    if not topic_matches(topic_filter, message.topic):
                        continue
                    if topic_filter.startswith("$share/"):
                        shared.setdefault(topic_filter, []).append(cid)
                    else:
                        self._enqueue(cid, live)
                        break
            for topic_filter, cids in shared.items():
                turn = self._share_turn.get(topic_filter, 0)
                self._share_turn[topic_filter] = turn + 1
                online = [c for c in sorted(cids) if c in self._clients] or sorted(cids)
                self._enqueue(online[turn % len(online)], live)

    def _enqueue(self, cid: str, message: InboundMessage) -> None:
        client = self._clients.get(cid)
        if client is not None:
            self._pending.append((client, message))
        else:
            self._sessions[cid].queued.append(message)

    def _run_deliveries(self) -> None:
        with self._lock:
            if self._delivering:
                return
            self._delivering = True
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    client, message = self._pending.popleft()
                    if not client.connected:
                        # Dropped after the message was routed: keep it for a persistent session.
                        session = self._sessions.get(client.settings.client_id)
                        if session is not None and session.persistent:
                            session.queued.append(message)
                        continue
                client._deliver(message)
        finally:
            with self._lock:
                self._delivering = False


class MemoryMqttClient:
    """Same public interface as :class:`edgefleet.core.mqtt.client.MqttClient`."""

    def __init__(self, settings: MqttSettings, broker: MemoryBroker) -> None:
        self.settings = settings
        self.broker = broker
        broker._known.append(self)
        self._outbox = Outbox(settings.max_queued, settings.queue_full)
        self._handlers: dict[str, list[Handler]] = {}
        self._connect_callbacks: list[ConnectCallback] = []
        self._disconnect_callbacks: list[DisconnectCallback] = []
        self._running = False
        self._connected = False
        self._counts: dict[str, int] = dict.fromkeys(
            ("connects", "disconnects", "connect_failures", "published", "received",
             "handler_errors", "subscribe_failures"),
            0,
        )  # fmt: skip

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def stats(self) -> MqttStats:
        return MqttStats(
            queued=len(self._outbox), dropped=self._outbox.dropped, last_error=None, **self._counts
        )

    def start(self) -> None:
        if self._running:
            raise TransportError("mqtt client already started")
        self._running = True
        self._try_connect()

    def stop(self) -> None:
        self._running = False
        if self._connected:
            self.broker._drop(self, send_will=False)
            self._lost()
        self._outbox.clear()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        check_topic(topic)
        self._outbox.put(OutgoingMessage(topic, bytes(payload), retain))
        self._drain()

    def subscribe(self, topic: str, handler: Handler) -> None:
        check_filter(topic)
        handlers = self._handlers.setdefault(topic, [])
        handlers.append(handler)
        if len(handlers) == 1 and self._connected:
            self.broker._subscribe(self, topic)
            self.broker._run_deliveries()

    def on_connect(self, callback: ConnectCallback) -> None:
        self._connect_callbacks.append(callback)

    def on_disconnect(self, callback: DisconnectCallback) -> None:
        self._disconnect_callbacks.append(callback)

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected

    def wait_subscribed(self, timeout_s: float) -> bool:
        return self._connected

    def flush(self, timeout_s: float) -> bool:
        return len(self._outbox) == 0

    # ---------------------------------------------------------------- broker side

    def _try_connect(self) -> None:
        present = self.broker._connect(self)
        if present is None:
            self._counts["connect_failures"] += 1
            return
        self._connected = True
        self._counts["connects"] += 1
        for topic_filter in self._handlers:
            self.broker._subscribe(self, topic_filter)
        for callback in list(self._connect_callbacks):
            self._call_user(callback, present)
        self._drain()

    def _lost(self) -> None:
        if not self._connected:
            return
        self._connected = False
        self._counts["disconnects"] += 1
        for callback in list(self._disconnect_callbacks):
            self._call_user(callback)

    def _drain(self) -> None:
        while self._connected:
            message = self._outbox.pop()
            if message is None:
                break
            self._counts["published"] += 1
            self.broker._route(InboundMessage(message.topic, message.payload, message.retain, 1))
        self.broker._run_deliveries()

    def _deliver(self, message: InboundMessage) -> None:
        if not self._connected:
            return
        self._counts["received"] += 1
        for topic_filter, handlers in list(self._handlers.items()):
            if topic_matches(topic_filter, message.topic):
                for handler in handlers:
                    self._call_user(handler, message)

    def _call_user(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self._counts["handler_errors"] += 1
            log.exception("memory mqtt %s: handler raised", self.settings.client_id)


__all__ = ["MemoryBroker", "MemoryMqttClient"]
