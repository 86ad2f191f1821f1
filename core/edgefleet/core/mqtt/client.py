"""MQTT client over paho-mqtt 2.x with our own reconnect loop, queue and handler registry.

Design (see also :mod:`edgefleet.core.mqtt.interface` for the threading contract):

- One network thread owns the paho client: every paho call happens on it. Other threads
  only touch the bounded :class:`Outbox`, the handler registry and counters (under one
  lock) and wake the thread through a socket pair. paho's own threads and reconnect logic
  are not used: paho has no jitter, and a loop we own can apply :class:`BackoffPolicy`,
  count failures and re-subscribe in a known order.
- Messages are handed to paho only while connected and while fewer than ``max_inflight``
  await their PUBACK; paho keeps those across reconnects and resends them first, and only
  then does the loop hand over more, so order is preserved (an old retained state is never
  published after a newer one).
- After each CONNACK the loop re-subscribes every registered filter (QoS 1), then runs the
  ``on_connect`` callbacks, then drains the outbox.
- Handler and callback exceptions are logged and counted, never propagated into paho.
- The lock is never held while calling paho or user code, so a paho callback that takes
  it (PUBACK accounting) cannot deadlock against a publisher.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.core.errors import TransportError, UsageError
from edgefleet.core.mqtt.diagnose import describe_failure
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

log = logging.getLogger("edgefleet.mqtt")

_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
_SELECT_TIMEOUT_S = 1.0  # loop_misc (keepalive) runs at least this often
# Packets read per readable socket before looking at the outgoing side again: a window
# of chunk frames arrives back to back, and one select per packet costs more than the
# packet's handling. paho stops early when the socket has nothing more.
_READ_BATCH = 16


class MqttClient:
    """A QoS 1 MQTT client: ``start()``, ``publish()``, ``subscribe()``, ``stop()``."""

    def __init__(self, settings: MqttSettings, *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()
        self._outbox = Outbox(settings.max_queued, settings.queue_full)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._handlers: dict[str, list[Handler]] = {}
        self._to_subscribe: list[str] = []
        self._subscribed: set[str] = set()
        self._sub_mids: dict[int, list[str]] = {}
        self._inflight_mids: set[int] = set()
        self._connect_callbacks: list[ConnectCallback] = []
        self._disconnect_callbacks: list[DisconnectCallback] = []
        self._connected = False
        self._connack: tuple[bool, bool, str] | None = None  # (ok, session_present, reason)
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "connects",
                "disconnects",
                "connect_failures",
                "published",
                "received",
                "handler_errors",
                "subscribe_failures",
            ),
            0,
        )
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._paho = self._make_paho()

    # ------------------------------------------------------------------ public interface

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def stats(self) -> MqttStats:
        with self._lock:
            return MqttStats(
                queued=len(self._outbox),
                inflight=len(self._inflight_mids),
                dropped=self._outbox.dropped,
                last_error=self._last_error,
                **self._counts,
            )

    def start(self) -> None:
        if self._thread is not None:
            raise TransportError("mqtt client already started")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{self.settings.client_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Disconnect cleanly (no LWT) and end the network thread. Queued messages are lost."""
        self._stop.set()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            self._thread = None

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Queue a QoS 1 message (TransportError if the queue is full and policy is "raise")."""
        check_topic(topic)
        if not isinstance(payload, bytes | bytearray):
            raise UsageError("MQTT payload must be bytes")
        self._outbox.put(OutgoingMessage(topic, bytes(payload), retain))
        self._wake()

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Call ``handler`` for every message matching ``topic`` (also after reconnects)."""
        check_filter(topic)
        with self._lock:
            handlers = self._handlers.setdefault(topic, [])
            handlers.append(handler)
            if len(handlers) == 1:
                self._to_subscribe.append(topic)
        self._wake()

    def on_connect(self, callback: ConnectCallback) -> None:
        with self._lock:
            self._connect_callbacks.append(callback)

    def on_disconnect(self, callback: DisconnectCallback) -> None:
        with self._lock:
            self._disconnect_callbacks.append(callback)

    def wait_connected(self, timeout_s: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._connected, timeout_s)

    def wait_subscribed(self, timeout_s: float) -> bool:
        """True once connected and every registered filter has its SUBACK."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._connected and self._subscribed >= set(self._handlers), timeout_s
            )

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued message is acknowledged by the broker."""
        with self._changed:
            return self._changed.wait_for(
                lambda: len(self._outbox) == 0 and not self._inflight_mids, timeout_s
            )

    # ------------------------------------------------------------------ paho setup

    def _make_paho(self) -> paho.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=None if v5 else s.clean_session,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            reconnect_on_failure=False,
        )
        client.connect_timeout = s.connect_timeout_s
        client.max_inflight_messages_set(s.max_inflight)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.lwt is not None:
            client.will_set(s.lwt.topic, s.lwt.payload, qos=s.lwt.qos, retain=s.lwt.retain)
        if s.tls is not None:
            try:
                client.tls_set(
                    ca_certs=str(s.tls.ca_file),
                    certfile=None if s.tls.cert_file is None else str(s.tls.cert_file),
                    keyfile=None if s.tls.key_file is None else str(s.tls.key_file),
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ValueError) as e:
                raise TransportError(f"mqtt tls setup failed: {e}") from e
            if not s.tls.check_hostname:
                client.tls_insecure_set(True)
        properties = None
        if v5 and not s.clean_session:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = s.session_expiry_s
        client.connect_async(
            s.host,
            s.port,
            s.keepalive_s,
            clean_start=s.clean_session if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        client.on_connect = self._paho_on_connect
        client.on_subscribe = self._paho_on_subscribe
        client.on_publish = self._paho_on_publish
        client.on_message = self._paho_on_message
        return client

    # paho callbacks: they run on the network thread inside paho; keep them short.

    def _paho_on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any = None) -> None:
        self._connack = (not reason.is_failure, bool(flags.session_present), str(reason))

    def _paho_on_subscribe(
        self, _c: Any, _u: Any, mid: int, reasons: list[Any], _p: Any = None
    ) -> None:
        with self._changed:
            filters = self._sub_mids.pop(mid, [])
            for topic_filter, reason in zip(filters, reasons, strict=False):
                if reason.is_failure:
                    self._counts["subscribe_failures"] += 1
                    self._last_error = f"subscribe {topic_filter} refused: {reason}"
                    log.error("mqtt %s: %s", self.settings.client_id, self._last_error)
                else:
                    self._subscribed.add(topic_filter)
            self._changed.notify_all()

    def _paho_on_publish(self, _c: Any, _u: Any, mid: int, _r: Any = None, _p: Any = None) -> None:
        with self._changed:
            if mid in self._inflight_mids:
                self._inflight_mids.discard(mid)
                self._counts["published"] += 1
            self._changed.notify_all()

    def _paho_on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            log.warning(
                "mqtt %s: dropped a message with a non-UTF-8 topic", self.settings.client_id
            )
            return
        inbound = InboundMessage(topic, bytes(message.payload), bool(message.retain), message.qos)
        with self._lock:
            self._counts["received"] += 1
            handlers = [
                h for f, hs in self._handlers.items() if topic_matches(f, topic) for h in hs
            ]
        for handler in handlers:
            self._call_user(handler, inbound, what=f"handler for {topic}")

    # ------------------------------------------------------------------ network thread

    def _run(self) -> None:
        policy = self.settings.backoff
        first = True
        try:
            while not self._stop.is_set():
                if not first:
                    delay = policy.delay_s(self._rng)
                    policy = policy.next()
                    if self._stop.wait(delay):
                        break
                first = False
                up_s = self._session()
                if up_s is not None and up_s >= policy.stable_after_s:
                    policy = policy.reset()
        except Exception:
            # A bug here must not leave a silent zombie; log loudly, the thread ends.
            log.exception("mqtt %s: network thread crashed", self.settings.client_id)
        finally:
            self._close_wake()

    def _session(self) -> float | None:
        """Connect, serve one connection until it ends; seconds it was up (None: never)."""
        self._connack = None
        try:
            self._paho.reconnect()
        except (OSError, ValueError) as e:
            self._note_failure(f"connect to {self.settings.host}:{self.settings.port}: {e}")
            return None
        started = time.monotonic()
        connected_at: float | None = None
        while True:
            if self._stop.is_set():
                self._disconnect_cleanly()
                break
            rc = self._service_once()
            if self._connack is not None and connected_at is None:
                ok, session_present, reason = self._connack
                if not ok:
                    self._note_failure(f"broker refused the connection: {reason}")
                    break
                connected_at = time.monotonic()
                self._on_connected(session_present)
            if rc != _SUCCESS or self._paho.socket() is None:
                if connected_at is None and not self._stop.is_set():
                    self._note_failure(f"connection closed before CONNACK ({rc.name})")
                break
            if (
                connected_at is None
                and time.monotonic() - started > self.settings.connect_timeout_s
            ):
                self._note_failure("no CONNACK within connect_timeout_s")
                self._paho.disconnect()
                break
            if connected_at is not None:
                self._send_subscriptions()
                self._drain()
        if connected_at is None:
            return None
        self._on_disconnected()
        return time.monotonic() - connected_at

    def _service_once(self) -> MQTTErrorCode:
        sock = self._paho.socket()
        if sock is None or self._wake_r is None:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
        wlist = [sock] if self._paho.want_write() else []
        try:
            readable, _, _ = select.select(
                [sock, self._wake_r], wlist, [], 0.0 if pending else _SELECT_TIMEOUT_S
            )
        except (OSError, ValueError):
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if self._wake_r in readable:
            try:
                self._wake_r.recv(4096)
            except BlockingIOError:
                pass
        if sock in readable or pending:
            rc = self._paho.loop_read(_READ_BATCH)
            if rc != _SUCCESS:
                return rc
        if self._paho.want_write():
            rc = self._paho.loop_write()
            if rc != _SUCCESS:
                return rc
        return self._paho.loop_misc()

    def _on_connected(self, session_present: bool) -> None:
        with self._changed:
            self._connected = True
            self._counts["connects"] += 1
            self._subscribed.clear()
            self._sub_mids.clear()
            # Re-subscribe everything: the broker may have lost the session (restart without
            # persistence, clean session, expiry) and SUBSCRIBE is idempotent.
            self._to_subscribe = list(self._handlers)
            callbacks = list(self._connect_callbacks)
            self._changed.notify_all()
        log.info(
            "mqtt %s: connected to %s:%s (session present: %s)",
            self.settings.client_id,
            self.settings.host,
            self.settings.port,
            session_present,
        )
        self._send_subscriptions()
        for callback in callbacks:
            self._call_user(callback, session_present, what="on_connect callback")

    def _on_disconnected(self) -> None:
        with self._changed:
            self._connected = False
            self._counts["disconnects"] += 1
            callbacks = list(self._disconnect_callbacks)
            self._changed.notify_all()
        if not self._stop.is_set():
            log.warning("mqtt %s: connection lost", self.settings.client_id)
        for callback in callbacks:
            self._call_user(callback, what="on_disconnect callback")

    def _send_subscriptions(self) -> None:
        with self._lock:
            filters, self._to_subscribe = self._to_subscribe, []
        if not filters:
            return
        rc, mid = self._paho.subscribe([(f, 1) for f in filters])
        with self._lock:
            if rc == _SUCCESS and mid is not None:
                self._sub_mids[mid] = filters
            else:
                # Not sent (connection dropping); _on_connected queues them all again.
                self._to_subscribe = filters + self._to_subscribe

    def _drain(self) -> None:
        while self._paho.is_connected():
            with self._lock:
                if len(self._inflight_mids) >= self.settings.max_inflight:
                    return
            message = self._outbox.pop()
            if message is None:
                return
            try:
                info = self._paho.publish(message.topic, message.payload, 1, message.retain)
            except ValueError as e:
                log.error("mqtt %s: not sent to %s: %s", self.settings.client_id, message.topic, e)
                continue
            # MQTT_ERR_NO_CONN still leaves the message with paho, which sends it on reconnect.
            with self._lock:
                self._inflight_mids.add(info.mid)

    def _disconnect_cleanly(self) -> None:
        if self._paho.socket() is None:
            return
        self._paho.disconnect()
        deadline = time.monotonic() + 2.0
        while self._paho.socket() is not None and time.monotonic() < deadline:
            if self._service_once() != _SUCCESS:
                break

    def _note_failure(self, message: str) -> None:
        message = describe_failure(message, self.settings.tls is not None)
        with self._changed:
            self._counts["connect_failures"] += 1
            self._last_error = message
            self._changed.notify_all()
        log.warning("mqtt %s: %s", self.settings.client_id, message)

    def _call_user(self, fn: Callable[..., None], *args: Any, what: str) -> None:
        try:
            fn(*args)
        except Exception:
            with self._lock:
                self._counts["handler_errors"] += 1
            log.exception("mqtt %s: %s raised", self.settings.client_id, what)

    def _wake(self) -> None:
        wake = self._wake_w
        if wake is None:
            return
        try:
            wake.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake, or shutting down

    def _close_wake(self) -> None:
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None
