"""Lost telemetry batches over a real mosquitto: stored exactly once in the end.

The last test runs the same device against the real hub service.

Device side: the real ``TelemetryUploader`` over a real ``TelemetryBuffer`` (SQLite) and
the core ``MqttClient``, driven like the sync worker drives it (acks queued by the MQTT
thread, a tick that pumps). Hub side: what the hub service does with telemetry, handing the
*decoded batch* to the fleet ``IngestWorker`` (so its ``after_seq`` counts) and publishing
the ack from ``on_done`` after the commit.
"""

from __future__ import annotations

import queue
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.hub.fleet.fleetkit import MODEL, N_FEATURES, reference, window_record
from tests.hub.servicekit import make_service_hub
from tests.support.waiting import wait_until

from edgefleet.agent.sync.uploader import TelemetryUploader
from edgefleet.agent.telemetry.buffer import TelemetryBuffer
from edgefleet.core.mqtt import InboundMessage, MqttSettings
from edgefleet.core.mqtt.client import MqttClient
from edgefleet.core.protocol import (
    Ack,
    TelemetryBatch,
    TelemetryRecord,
    TopicKind,
    Topics,
    decode_ack,
    decode_telemetry,
    encode_json,
)
from edgefleet.core.protocol.telemetry import AckCursor
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.hub.fleet.ingest import FleetTelemetry, IngestResult, IngestWorker
from edgefleet.hub.fleet.settings import fleet_location

T = Topics()
DEVICE = "pi-lossy"
PROFILE = reference(np.random.default_rng(81))
T0 = time.time() - 3600
WAIT_S = 30.0


def windows(seqs: list[int]) -> list[TelemetryRecord]:
    rng = np.random.default_rng(seqs[0])
    return [
        window_record(s, PROFILE, rng.normal(size=(20, N_FEATURES)), T0 + 60 * s, T0 + 60 * s + 60)
        for s in seqs
    ]


class FleetEndpoint:
    """The hub's telemetry path on a clean session: decode, store, ack after the commit."""

    def __init__(self, port: int, db: Path) -> None:
        self.telemetry = FleetTelemetry(db)
        self.worker = IngestWorker(self.telemetry).start()
        self.client = MqttClient(
            MqttSettings(host="127.0.0.1", port=port, client_id="hub", clean_session=True)
        )
        self.received: list[TelemetryBatch] = []
        self.lose: Callable[[int], bool] = lambda n: False  # n-th batch received (from 1)
        self.client.subscribe(T.all_devices(TopicKind.TELEMETRY), self._on_telemetry)
        self.client.start()
        assert self.client.wait_subscribed(WAIT_S)

    def _on_telemetry(self, message: InboundMessage) -> None:
        device_id, _kind = T.parse(message.topic)
        batch = decode_telemetry(message.payload)
        self.received.append(batch)
        if self.lose(len(self.received)):
            return  # lost between the broker and the store

        def ack(result: IngestResult) -> None:
            if result.highest_contiguous_seq is not None:
                self.client.publish(
                    T.ack(device_id), encode_json(Ack(result.highest_contiguous_seq))
                )

        assert self.worker.submit(device_id, batch, on_done=ack)

    def stored(self) -> list[int]:
        with sqlite3.connect(self.telemetry.db.path) as conn:
            rows = conn.execute(
                "SELECT seq FROM fleet_records WHERE device = ? ORDER BY seq", (DEVICE,)
            ).fetchall()
        return [int(r[0]) for r in rows]

    def close(self) -> None:
        self.client.flush(5)
        self.client.stop()
        self.worker.stop()
        self.telemetry.close()


class Device:
    """The agent's telemetry path: buffer, uploader, acks queued for the worker."""

    def __init__(
        self, port: int, state: Path, device_id: str = DEVICE, password: str | None = None
    ) -> None:
        self.buffer = TelemetryBuffer(state / "telemetry.db", 1 << 20, first_seq=1)
        self.client = MqttClient(
            MqttSettings(
                host="127.0.0.1",
                port=port,
                client_id=device_id,
                username=None if password is None else device_id,
                password=password,
                clean_session=False,
            )
        )
        self.acks: queue.Queue[bytes] = queue.Queue()
        self.client.subscribe(T.ack(device_id), lambda m: self.acks.put(m.payload))
        self.uploader = TelemetryUploader(
            self.buffer, self.client, T, device_id, ack_timeout_s=1.0, max_bytes=16 * 1024
        )
        self.client.start()
        assert self.client.wait_subscribed(WAIT_S)

    def tick(self) -> None:
        now = time.time()
        while not self.acks.empty():
            self.uploader.on_ack(decode_ack(self.acks.get_nowait()), now)
        self.uploader.pump(now)

    def close(self) -> None:
        self.client.stop()
        self.buffer.close()


@pytest.fixture
def parts(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[dict[str, object]]:
    made: dict[str, object] = {"port": mosquitto.port, "root": tmp_path}
    yield made
    for key in ("device", "hub"):
        part = made.get(key)
        if part is not None:
            part.close()  # type: ignore[attr-defined]


@pytest.mark.mqtt
def test_batches_lost_before_and_after_the_hubs_first_subscription_are_stored_once(
    parts: dict[str, object],
) -> None:
    port, root = parts["port"], parts["root"]
    assert isinstance(port, int) and isinstance(root, Path)
    device = Device(port, root)
    parts["device"] = device
    seqs = [device.buffer.append("window", dict(r.body)) for r in windows(list(range(1, 25)))]
    # The hub is not subscribed yet and its session does not exist: the broker drops this.
    device.tick()
    assert device.uploader.batches_sent == 1
    first_sent = device.uploader.in_flight
    assert first_sent is not None and first_sent.first_seq == 1
    assert device.client.flush(WAIT_S)  # the broker has it (and dropped it)

    hub = FleetEndpoint(port, root / "fleet.db")
    parts["hub"] = hub
    hub.lose = lambda n: n == 2  # and one more lost after the hub is up
    wait_until("every record acked", lambda: device.buffer.records() == [], WAIT_S, device.tick)
    assert hub.worker.wait_idle(WAIT_S)

    assert hub.stored() == seqs
    counts = hub.telemetry.store.count_windows()
    assert counts["in_rollups"] == len(seqs) and counts["in_group_rollups"] == len(seqs)
    assert hub.telemetry.store.ack_cursor(DEVICE) == AckCursor(seqs[-1])
    assert hub.received[0].first_seq == 1  # the hub's first batch is the lost one, again
    lost_later = hub.received[1]
    assert any(b.first_seq == lost_later.first_seq for b in hub.received[2:])
    # One ack timeout for the batch the broker dropped, one for the batch the hub lost.
    assert device.uploader.resends >= 2 and device.uploader.claims_lowered == 0
    assert all(b.after_seq is None for b in hub.received if b.first_seq == 1)
    assert all(b.after_seq == b.first_seq - 1 for b in hub.received if b.first_seq > 1)


@pytest.mark.mqtt
def test_a_batch_ahead_of_a_lost_one_waits_and_the_late_one_makes_the_ack_jump(
    parts: dict[str, object],
) -> None:
    # A sender with several batches in flight (the protocol allows it once acked once).
    port, root = parts["port"], parts["root"]
    assert isinstance(port, int) and isinstance(root, Path)
    hub = FleetEndpoint(port, root / "fleet.db")
    parts["hub"] = hub
    acks: queue.Queue[int] = queue.Queue()
    sender = MqttClient(MqttSettings(host="127.0.0.1", port=port, client_id=DEVICE))
    sender.subscribe(T.ack(DEVICE), lambda m: acks.put(decode_ack(m.payload).highest_seq))
    sender.start()
    try:
        assert sender.wait_subscribed(WAIT_S)

        def send(seqs: list[int], after: int | None) -> int:
            batch = TelemetryBatch.of(DEVICE, windows(seqs), after_seq=after)
            sender.publish(T.telemetry(DEVICE), encode_json(batch))
            return acks.get(timeout=WAIT_S)

        assert send([1, 2, 3], None) == 3
        # 4..5 lost on the way; 6 was merged on the device; 7..9 follows on from 5.
        assert send([7, 8, 9], 5) == 3
        assert hub.stored() == [1, 2, 3, 7, 8, 9]
        # The hub restarts before the missing batch comes: the span is in its database.
        hub.close()
        hub = FleetEndpoint(port, root / "fleet.db")
        parts["hub"] = hub
        assert hub.telemetry.store.ack_cursor(DEVICE) == AckCursor(3, ((5, 9),))
        assert send([4, 5], 3) == 9
        assert send([7, 8, 9], 5) == 9  # a late copy: duplicates, the ack stays
        assert hub.worker.wait_idle(WAIT_S)
        assert hub.stored() == [1, 2, 3, 4, 5, 7, 8, 9]
        assert hub.telemetry.store.count_windows()["in_rollups"] == 8
    finally:
        sender.stop()


@pytest.mark.mqtt
def test_through_the_hub_service_as_it_is_a_batch_lost_at_start_is_stored_once(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> None:
    # The real ``hub serve`` service, whether it hands the fleet worker the decoded batch
    # or only its records (then acked by the rule from before after_seq): the agent's
    # batches always follow on, so a lost batch is still stored exactly once in both
    # stores.
    hub = make_service_hub(tmp_path, mosquitto_factory)
    device = Device(hub.port, tmp_path, "pi-a", hub.passwords["pi-a"])
    try:
        seqs = [device.buffer.append("window", dict(r.body)) for r in windows(list(range(1, 13)))]
        device.tick()  # no hub yet: the broker drops the first batch
        assert device.uploader.batches_sent == 1 and device.client.flush(WAIT_S)
        service = hub.start()
        wait_until("every record acked", lambda: device.buffer.records() == [], WAIT_S, device.tick)
        assert service.fleet.drain(WAIT_S)
        assert device.uploader.resends >= 1
        with sqlite3.connect(fleet_location(hub.config.store.path)) as conn:
            stored = [int(r[0]) for r in conn.execute("SELECT seq FROM fleet_records ORDER BY seq")]
        assert stored == seqs
        assert service.fleet.telemetry.store.count_windows()["in_rollups"] == len(seqs)
        gates = list(hub.store.telemetry_windows(MODEL, [1], ["pi-a"], 0.0))
        assert len(gates) == len(seqs)  # the hub store (deduplicated on seq too)
    finally:
        device.close()
        hub.close()
