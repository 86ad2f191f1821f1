"""Devices that behave like ``agent run`` on the wire, without a model runtime: many of them
cost one MQTT connection each in the test process, so a fleet test can mix a few real
agent processes with tens of these.

Each :class:`SimulatedDevice` holds its own MQTT connection (client id = device id, a
retained "offline" last will), and:

- says it is online (retained status) and reports its state (retained), starting with a
  model outside any rollout (``BASE_MODEL``) so that telemetry flows before a rollout
  reaches it;
- takes its retained directive: a seq above the last accepted one installs each active
  assignment at once (no download: the rollout only reads what the device reports) — a
  ``committed`` deployment event and a state report naming the new active slot;
- every ``window_s`` adds one window record per model it runs (``requests`` inferences,
  all fast, no errors) to its buffer with the next seq, and every ``flush_s`` sends the
  buffered records from the first unacked one as one batch (``after_seq``: the last seq
  acked), resending the batch when no ack came within ``resend_s`` — the agent's
  at-least-once rule;
- keeps what it issued (``next_seq``), the highest ack (``acked``) and the directive seqs
  it accepted, for the test to compare with what the hubs stored.

:class:`SimulatedFleet` drives many from one thread.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.core.directive import Directive
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.protocol import (
    LatencyHistogram,
    TelemetryBatch,
    TelemetryRecord,
    Topics,
    WindowSummary,
    encode_json,
)
from edgefleet.core.protocol.codec import decode_ack
from edgefleet.core.protocol.messages import (
    DeploymentInfo,
    DeviceState,
    ModelState,
    SlotInfo,
    Status,
)
from edgefleet.core.protocol.telemetry import DeploymentEvent

BASE_MODEL = SlotInfo(1, "5e" * 32)  # "sensor" v1: runs before any rollout reaches the device
BASE_NAME = "sensor"
AGENT_VERSION = "simulated"
LATENCY_EDGES = (1.0, 5.0, 25.0)
MAX_BATCH = 100


@dataclass
class SimulatedDevice:
    device_id: str
    port: int
    profile: str
    host: str = "127.0.0.1"
    window_s: float = 1.0
    flush_s: float = 0.25
    resend_s: float = 2.0
    requests: int = 10  # inferences per window
    topics: Topics = field(default_factory=Topics)
    # What the device did, for the test:
    next_seq: int = 1
    acked: int | None = None
    accepted_directives: list[int] = field(default_factory=list)
    sends: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, ModelState] = {BASE_NAME: ModelState(BASE_NAME, BASE_MODEL)}
        self._buffer: list[TelemetryRecord] = []
        self._sent_through = 0  # highest seq sent at least once
        self._last_send = 0.0
        self._last_window = time.time()
        self._producing = True
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv311
        )
        offline = encode_json(Status(online=False))
        client.will_set(self.topics.status(self.device_id), offline, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self.client = client

    # -- connection ------------------------------------------------------------------
    def start(self) -> None:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly ("offline" first, as the agent does at shutdown)."""
        offline = encode_json(Status(online=False, at=time.time()))
        info = self.client.publish(self.topics.status(self.device_id), offline, 1, retain=True)
        info.wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        client.subscribe(
            [(self.topics.desired(self.device_id), 1), (self.topics.ack(self.device_id), 1)]
        )
        online = encode_json(Status(online=True, at=time.time(), agent_version=AGENT_VERSION))
        client.publish(self.topics.status(self.device_id), online, qos=1, retain=True)
        with self._lock:
            self._publish_state()
            self._sent_through = self.acked or 0  # the session is new: send again

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        try:
            if message.topic == self.topics.ack(self.device_id):
                self._on_ack(decode_ack(message.payload).highest_seq)
            elif message.topic == self.topics.desired(self.device_id) and message.payload:
                envelope = json.loads(message.payload)
                self._on_directive(Directive.from_dict(envelope["directive"]))
        except (EdgefleetError, ValueError, KeyError):
            pass  # the agent refuses such a message; the test sees it in what is missing

    # -- inbound ---------------------------------------------------------------------
    def _on_ack(self, highest: int) -> None:
        with self._lock:
            if self.acked is None or highest > self.acked:
                self.acked = highest
            self._buffer = [r for r in self._buffer if r.seq > highest]

    def _on_directive(self, directive: Directive) -> None:
        with self._lock:
            last = self.accepted_directives[-1] if self.accepted_directives else -1
            if directive.device != self.device_id or directive.seq <= last:
                return  # a redelivered retained directive: already taken
            self.accepted_directives.append(directive.seq)
            now = time.time()
            for a in directive.assignments:
                if a.mode != "active":
                    continue
                current = self._models.get(a.model)
                if current and current.active and current.active.bundle_sha256 == a.bundle_sha256:
                    continue
                slot = SlotInfo(a.version, a.bundle_sha256)
                done = DeploymentInfo("committed", a.version, a.bundle_sha256, a.rollout_id, at=now)
                previous = current.active if current else None
                self._models[a.model] = ModelState(a.model, slot, previous, done)
                event = DeploymentEvent(
                    a.model, a.version, "committed", now, None, a.rollout_id, a.bundle_sha256
                )
                self._append(lambda seq, e=event: TelemetryRecord.of_event(seq, e))  # type: ignore[misc]
            self._publish_state(directive.seq)

    def _publish_state(self, directive_seq: int | None = None) -> None:
        seqs = self.accepted_directives
        state = DeviceState(
            self.device_id,
            AGENT_VERSION,
            self.profile,
            time.time(),
            tuple(self._models.values()),
            directive_seq=directive_seq
            if directive_seq is not None
            else (seqs[-1] if seqs else None),
        )
        self.client.publish(
            self.topics.state(self.device_id), encode_json(state), qos=1, retain=True
        )

    # -- telemetry -------------------------------------------------------------------
    def _append(self, make: object) -> None:
        self._buffer.append(make(self.next_seq))  # type: ignore[operator]
        self.next_seq += 1

    def step(self, now: float) -> None:
        """Close a window when due, then send or resend the buffer (the driver thread)."""
        with self._lock:
            if self._producing and now - self._last_window >= self.window_s:
                start, self._last_window = self._last_window, now
                for model in self._models.values():
                    if model.active is not None:
                        summary = self._window(model.name, model.active.version, start, now)
                        self._append(lambda seq, s=summary: TelemetryRecord.of_window(seq, s))
            if not self._buffer:
                return
            fresh = self._buffer[-1].seq > self._sent_through
            stale = now - self._last_send >= self.resend_s
            if not (fresh and now - self._last_send >= self.flush_s) and not stale:
                return
            records = self._buffer[:MAX_BATCH]
            batch = TelemetryBatch.of(self.device_id, records, after_seq=self.acked)
            self._last_send = now
            self._sent_through = max(self._sent_through, records[-1].seq)
            self.sends += 1
        self.client.publish(self.topics.telemetry(self.device_id), encode_json(batch), qos=1)

    def _window(self, model: str, version: int, start: float, end: float) -> WindowSummary:
        counts = (self.requests, 0, 0, 0)
        return WindowSummary(
            model=model,
            version=version,
            start_s=start,
            end_s=max(end, start),
            requests=self.requests,
            latency_ms=LatencyHistogram(LATENCY_EDGES, counts),
            predictions={"0": self.requests},
        )

    def stop_producing(self) -> None:
        with self._lock:
            self._producing = False

    @property
    def drained(self) -> bool:
        """Every record issued is acked (nothing buffered)."""
        with self._lock:
            return not self._buffer

    @property
    def issued(self) -> int:
        """Seqs issued so far: 1 .. ``issued``."""
        return self.next_seq - 1


class SimulatedFleet:
    """Many :class:`SimulatedDevice` driven by one thread (context manager)."""

    def __init__(self, devices: Iterable[SimulatedDevice], step_s: float = 0.05) -> None:
        self.devices = list(devices)
        self.step_s = step_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulated-fleet", daemon=True)

    def __enter__(self) -> SimulatedFleet:
        for device in self.devices:
            device.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop.is_set():
            return  # stopped already
        self._stop.set()
        self._thread.join(10)
        for device in self.devices:
            device.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            for device in self.devices:
                device.step(now)
            self._stop.wait(self.step_s)

    def stop_producing(self) -> None:
        for device in self.devices:
            device.stop_producing()

    @property
    def drained(self) -> bool:
        return all(device.drained for device in self.devices)
