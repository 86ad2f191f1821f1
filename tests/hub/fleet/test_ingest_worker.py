"""IngestWorker behind a real MQTT subscriber: stored once, acked after the commit.

The hub side here is what the hub service does with telemetry: decode the batch in the MQTT
thread, hand it to the worker, publish the ack from the worker's ``on_done``. Devices are
plain paho clients; some of them publish the same batch twice (an ack lost on the way).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from tests.hub.fleet.fleetkit import fleet, reference
from tests.support.brokers import ProbeClient

from edgefleet.core.mqtt import InboundMessage, MqttSettings
from edgefleet.core.mqtt.client import MqttClient
from edgefleet.core.protocol import (
    Ack,
    TelemetryBatch,
    TelemetryRecord,
    TopicKind,
    Topics,
    decode_telemetry,
    encode_json,
)
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry, IngestResult, IngestWorker

T0 = time.time() - 3600  # recent: the worker applies retention against the real clock


@pytest.mark.mqtt
def test_worker_stores_each_window_once_and_acks_after_commit(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    profile = reference(np.random.default_rng(41))
    rng = np.random.default_rng(42)
    topics = Topics()
    devices = fleet(["a", "b"], 4)
    registry = {d.info.id: d.info for d in devices}
    telemetry = FleetTelemetry(tmp_path / "fleet.db")
    worker = IngestWorker(telemetry, device_lookup=registry.get, max_batches_per_commit=8).start()
    hub = MqttClient(MqttSettings(host="127.0.0.1", port=mosquitto.port, client_id="hub"))

    def on_telemetry(message: InboundMessage) -> None:  # runs on the MQTT network thread
        device_id, _kind = topics.parse(message.topic)
        batch = decode_telemetry(message.payload)

        def ack(result: IngestResult) -> None:
            assert result.highest_contiguous_seq is not None
            hub.publish(topics.ack(device_id), encode_json(Ack(result.highest_contiguous_seq)))

        assert worker.submit(device_id, batch.records, on_done=ack)

    hub.subscribe(topics.all_devices(TopicKind.TELEMETRY), on_telemetry)
    hub.start()
    probes: dict[str, ProbeClient] = {}
    try:
        assert hub.wait_subscribed(10)
        for dev in devices:
            probe = ProbeClient(mosquitto.port, client_id=dev.info.id)
            assert probe.connect() == 0
            probe.subscribe(topics.ack(dev.info.id))
            probes[dev.info.id] = probe
        sent: dict[str, list[TelemetryRecord]] = {}
        for dev in devices:
            for k in range(5):
                dev.record(profile, rng.normal(size=(30, 8)), T0 + k * 60, T0 + (k + 1) * 60)
            batch = TelemetryBatch.of(dev.info.id, dev.unacked)
            payload = encode_json(batch)
            probes[dev.info.id].publish(topics.telemetry(dev.info.id), payload)
            if dev.info.group == "b":  # the ack got lost: the whole batch comes again
                probes[dev.info.id].publish(topics.telemetry(dev.info.id), payload)
            sent[dev.info.id] = list(dev.unacked)
        for dev in devices:
            copies = 2 if dev.info.group == "b" else 1
            acks = []
            deadline = time.monotonic() + 20
            while len(acks) < copies and time.monotonic() < deadline:
                _topic, body, _retain = probes[dev.info.id].messages.get(timeout=20)
                acks.append(json.loads(body)["highest_seq"])
            assert acks == [5] * copies
        assert worker.wait_idle(10)
    finally:
        for probe in probes.values():
            probe.client.loop_stop()
        hub.stop()
        worker.stop()

    counts = telemetry.store.count_windows()
    # Each window stored once (the worker may already have rolled old hours up).
    assert counts["raw_unrolled"] + counts["raw_rolled"] == 8 * 5
    assert counts["raw_unrolled"] + counts["in_rollups"] == 8 * 5
    assert worker.stats.duplicates == 4 * 5  # group b's second copies
    assert worker.stats.stored_records == 8 * 5
    assert worker.stats.rejected_full == 0 and worker.stats.failed_batches == 0
    rows = telemetry.store.stats("sensor", 1)
    assert {r.group for r in rows} == {"a", "b"}  # device info resolved in the worker
    assert {r.profile for r in rows} == {"rpi4-arm64"}


def test_full_queue_refuses_without_blocking_and_without_acking(tmp_path: Path) -> None:
    profile = reference(np.random.default_rng(43))
    (dev,) = fleet(["a"], 1)
    dev.record(profile, np.zeros((3, 8)), T0, T0 + 60)
    worker = IngestWorker(FleetTelemetry(tmp_path / "fleet.db"), queue_size=1)  # not started
    done: list[IngestResult] = []
    assert worker.submit(dev.info, dev.unacked, on_done=done.append)
    started = time.monotonic()
    assert not worker.submit(dev.info, dev.unacked, on_done=done.append)
    assert time.monotonic() - started < 1.0
    assert worker.stats.rejected_full == 1 and worker.backlog == 1
    worker.start()
    assert worker.wait_idle(10)
    worker.stop()
    assert [r.stored for r in done] == [1]  # only the queued batch was stored and acked


def test_malformed_window_is_stored_acked_and_counted_not_aggregated(tmp_path: Path) -> None:
    telemetry = FleetTelemetry(tmp_path / "fleet.db")
    bad = [
        TelemetryRecord(1, "window", {"model": "sensor", "version": 1}),  # no times, no counts
        TelemetryRecord(2, "window", {**_window_body(), "drift": "***not base64***"}),
        TelemetryRecord(3, "event", {"model": "sensor", "version": 1, "state": "committed"}),
    ]
    result = telemetry.ingest(DeviceInfo("d1"), bad, T0)
    assert (result.stored, result.malformed, result.highest_contiguous_seq) == (3, 2, 3)
    assert telemetry.store.count_windows()["raw_unrolled"] == 0
    again = telemetry.ingest(DeviceInfo("d1"), bad, T0 + 1)
    assert (again.stored, again.duplicates) == (0, 3)


def _window_body() -> dict[str, object]:
    return {
        "model": "sensor",
        "version": 1,
        "start_s": T0,
        "end_s": T0 + 60,
        "requests": 3,
    }


def test_a_hub_that_does_not_hold_the_fleet_work_never_maintains(tmp_path: Path) -> None:
    """Hubs on one store share the fleet tables: only the lease holder maintains them."""
    telemetry = FleetTelemetry(tmp_path / "fleet.db")
    worker = IngestWorker(telemetry, maintenance_interval_s=0.0)
    steps: list[float] = []
    held: list[float | None] = []

    def maintain(now: float, keep_since: float | None = None) -> object:
        steps.append(now)
        held.append(keep_since)
        return telemetry.store.maintain(now, keep_since)

    telemetry.maintain = maintain  # type: ignore[method-assign]
    try:
        holds = False
        worker.maintains = lambda: holds
        worker._maintain(idle=True)
        assert steps == []
        holds = True  # it took the lease over
        worker.retention_hold = lambda: 42.0  # an active rollout's gates read from then
        worker._maintain(idle=True)
        assert len(steps) == 1 and held == [42.0]
    finally:
        telemetry.close()
