"""PostgreSQL restarted under a running hub: the store reconnects after one failed
operation, a hub service over mosquitto leaves the failed batch unacked, the device's
resend is stored, and nothing is lost or stored twice."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.hub.hubkit import window
from tests.hub.servicekit import T, make_service_hub

from edgefleet.core.protocol import TelemetryBatch, TelemetryRecord, encode_json
from edgefleet.core.protocol.telemetry import WindowSummary
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.core.testing.postgres import PostgresServer
from edgefleet.hub.errors import HubStoreError
from edgefleet.hub.store import open_store

pytestmark = pytest.mark.postgres


def test_after_a_server_restart_only_one_operation_fails(postgres_server: PostgresServer) -> None:
    url = postgres_server.dsn(postgres_server.create_database())
    store = open_store(url)
    try:
        store.bump_counter("writes")
        # Several idle connections in the pool, as a busy hub has.
        gate = threading.Barrier(4)

        def hold_a_connection() -> None:
            with store.transaction():
                gate.wait(10)
                store.counters()

        threads = [threading.Thread(target=hold_a_connection) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

        postgres_server.restart()
        failures = 0
        for _ in range(6):
            try:
                store.bump_counter("writes")
                break
            except HubStoreError:
                failures += 1
        else:
            pytest.fail("the store never reconnected")
        assert failures <= 1
        assert store.counters()["writes"] == 2  # the failed attempt left nothing
    finally:
        store.close()


@pytest.mark.mqtt
def test_a_hub_over_a_restarted_server_stores_every_batch_once(
    tmp_path: Path,
    mosquitto_factory: Callable[..., MosquittoBroker],
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.dsn(postgres_server.create_database())
    hub = make_service_hub(tmp_path, mosquitto_factory, store_url=url)
    try:
        hub.start()
        device = hub.device("pi-a")

        def batch(seqs: range) -> bytes:
            records = [
                TelemetryRecord.of_window(
                    s, WindowSummary.from_dict(window("digits", 1, requests=5))
                )
                for s in seqs
            ]
            return encode_json(TelemetryBatch.of("pi-a", records))

        def acked(seq: int, within_s: float) -> bool:
            until = time.monotonic() + within_s
            while (left := until - time.monotonic()) > 0:
                try:
                    topic, payload, _retain = device.messages.get(timeout=left)
                except queue.Empty:
                    return False
                if topic == T.ack("pi-a") and json.loads(payload)["highest_seq"] >= seq:
                    return True
            return False

        def send_until_acked(seqs: range) -> int:
            """Publish like an agent: again whenever the ack does not come; the sends."""
            sends = 0
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                sends += 1
                device.publish(T.telemetry("pi-a"), batch(seqs))
                if acked(seqs[-1], 3.0):
                    return sends
            pytest.fail(f"batch {seqs} never acked")

        send_until_acked(range(1, 6))
        postgres_server.restart()
        send_until_acked(range(6, 11))
        send_until_acked(range(1, 11))  # a device that lost its acks sends everything again
        store = open_store(url)
        try:
            stored = list(store.telemetry_windows("digits", [1], ["pi-a"], 0.0))
        finally:
            store.close()
        assert len(stored) == 10
    finally:
        hub.close()
