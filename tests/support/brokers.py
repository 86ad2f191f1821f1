"""Broker-side helpers for tests: a small synchronous paho client that plays a device or an
observer (the brokers themselves: edgefleet.core.testing.brokers and the conftest fixtures)."""

from __future__ import annotations

import queue
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

WAIT_S = 20.0


class ProbeClient:
    def __init__(
        self,
        port: int,
        username: str | None = None,
        password: str | None = None,
        *,
        client_id: str = "",
        ca_file: Path | None = None,
        host: str = "127.0.0.1",
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._connack: queue.Queue[int] = queue.Queue()
        self._subacks: queue.Queue[list[int]] = queue.Queue()
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self._connack.put(reason_code.value)

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        self.messages.put((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        self._subacks.put([rc.value for rc in reason_codes])

    def connect(self) -> int:
        """CONNACK code (0 accepted); the network loop keeps running on success."""
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        code = self._connack.get(timeout=WAIT_S)
        if code != 0:
            self.client.loop_stop()
        return code

    def subscribe(self, topic: str) -> list[int]:
        self.client.subscribe(topic, qos=1)
        return self._subacks.get(timeout=WAIT_S)

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=WAIT_S)

    def wait_for(self, predicate: Callable[[str, bytes], bool]) -> list[tuple[str, bytes]]:
        """Messages up to and including the first one matching ``predicate``."""
        seen: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + WAIT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching message; got {seen}")
            try:
                topic, payload, _retain = self.messages.get(timeout=remaining)
            except queue.Empty as e:
                raise AssertionError(f"no matching message; got {seen}") from e
            seen.append((topic, payload))
            if predicate(topic, payload):
                return seen

    def drop(self) -> None:
        """Vanish without DISCONNECT (the broker then publishes the will)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
