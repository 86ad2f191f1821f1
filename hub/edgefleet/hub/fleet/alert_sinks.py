"""Where alert events go: the log, the MQTT alert topic, an optional webhook.

Invariants: ``send`` never blocks and never raises — the monitor calls it after the alert
is committed, and a slow or failing receiver must not hold up evaluation (let alone
ingest). The MQTT sink only enqueues on the client (QoS 1, the client's bounded queue); the
webhook sink puts the event on its own bounded queue, and a background thread POSTs it,
retrying with exponential backoff (:class:`~edgefleet.core.mqtt.BackoffPolicy`) on network
errors, 429 and 5xx; any other 4xx is final. Each POST ends within ``call_timeout_s`` (15 s)
in total, however slowly the receiver answers. What could not be queued or delivered is
counted.

Payload (JSON, the same on MQTT and the webhook)::

    {"v": 1, "event": "fired" | "resolved", "at": <epoch s>, "alert": {id, rule, model,
     version, scope_kind, scope, severity, status, opened_at, resolved_at, summary, details}}
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import math
import queue
import random
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from edgefleet.core.mqtt import BackoffPolicy
from edgefleet.hub.fleet.alert_store import AlertRecord

log = logging.getLogger("edgefleet.hub.alerts")


@dataclass(frozen=True)
class AlertEvent:
    kind: str  # "fired" | "resolved"
    alert: AlertRecord
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {"v": 1, "event": self.kind, "at": self.at, "alert": self.alert.to_dict()}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, default=str).encode("utf-8")


class AlertSink(Protocol):
    def send(self, event: AlertEvent) -> None: ...


class LogSink:
    def send(self, event: AlertEvent) -> None:
        a = event.alert
        level = logging.WARNING if event.kind == "fired" else logging.INFO
        log.log(
            level,
            "alert %s: %s %s:%s %s=%s [%s] %s",
            event.kind,
            a.rule,
            a.model,
            a.version,
            a.scope_kind,
            a.scope,
            a.severity,
            a.summary,
        )


class MqttAlertSink:
    """Publishes on ``{root}/alerts`` (pass ``Topics(root).alerts()``) through a callback
    such as ``MqttClient.publish``, which only enqueues."""

    def __init__(self, publish: Callable[[str, bytes], None], topic: str) -> None:
        self.publish = publish
        self.topic = topic
        self.failed = 0

    def send(self, event: AlertEvent) -> None:
        try:
            self.publish(self.topic, event.to_json())
        except Exception as e:  # a full client queue or a stopped client
            self.failed += 1
            log.warning("alert not published on %s: %s", self.topic, e)


# opener(request, timeout_s per socket operation, total_s for the whole call)
Opener = Callable[[urllib.request.Request, float, float], Any]


def _urlopen(request: urllib.request.Request, timeout_s: float, total_s: float) -> Any:
    """POST ``request``; the whole call (connect, send, status, headers, body) ends
    within ``total_s``. A per-operation timeout alone lets a receiver that trickles one
    byte every few seconds hold the alert thread for minutes; a watchdog shuts the
    socket down at the deadline instead. 4xx/5xx raise ``urllib.error.HTTPError``."""
    parts = urlsplit(request.full_url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout_s
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout_s)
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(total_s, cut)
    watchdog.daemon = True
    watchdog.start()
    path = parts.path or "/"
    try:
        conn.request(
            request.get_method(),
            f"{path}?{parts.query}" if parts.query else path,
            body=request.data,  # type: ignore[arg-type]
            headers=dict(request.header_items()),
        )
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as e:
        if expired.is_set():
            raise TimeoutError(f"no complete answer within {total_s:g} s") from e
        raise OSError(str(e)) from e
    finally:
        watchdog.cancel()
        conn.close()
    if response.status >= 400:
        raise urllib.error.HTTPError(
            request.full_url, response.status, response.reason, response.headers, None
        )
    return io.BytesIO(body)


@dataclass
class WebhookStats:
    delivered: int = 0
    failed: int = 0  # gave up after retries or a final 4xx
    dropped: int = 0  # queue full
    retries: int = 0


@dataclass
class WebhookSink:
    url: str
    timeout_s: float = 5.0  # each socket operation
    call_timeout_s: float = 15.0  # one whole POST, however the receiver paces its answer
    max_attempts: int = 6
    backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(initial_s=1.0, max_s=60.0))
    queue_size: int = 1000
    headers: Mapping[str, str] = field(default_factory=dict)
    opener: Opener = _urlopen
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"webhook url must be http(s)://host/...: {self.url!r}")
        if self.max_attempts < 1 or not 0 < self.timeout_s <= self.call_timeout_s < math.inf:
            raise ValueError("need max_attempts >= 1 and 0 < timeout_s <= call_timeout_s (finite)")
        self.stats = WebhookStats()
        self._queue: queue.Queue[AlertEvent] = queue.Queue(maxsize=self.queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> WebhookSink:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="fleet-webhook", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def send(self, event: AlertEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.stats.dropped += 1
            log.warning("webhook queue full: alert %s dropped", event.alert.id)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self._deliver(event)

    def _deliver(self, event: AlertEvent) -> None:
        body = event.to_json()
        policy = self.backoff
        for attempt in range(1, self.max_attempts + 1):
            retry, reason = self._post(body)
            if not retry and reason is None:
                self.stats.delivered += 1
                return
            if not retry or attempt == self.max_attempts:
                break
            self.stats.retries += 1
            if self._stop.wait(policy.delay_s(self.rng)):
                break
            policy = policy.next()
        self.stats.failed += 1
        log.warning("webhook gave up on alert %s: %s", event.alert.id, reason)

    def _post(self, body: bytes) -> tuple[bool, str | None]:
        """(retry?, failure reason or None when delivered)."""
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", **dict(self.headers)},
        )
        try:
            with self.opener(request, self.timeout_s, self.call_timeout_s) as response:
                response.read()
            return False, None
        except urllib.error.HTTPError as e:
            return e.code == 429 or e.code >= 500, f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            return True, str(getattr(e, "reason", e))
