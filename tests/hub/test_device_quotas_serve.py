"""One device flooding valid telemetry against a real ``hub serve`` over a real mosquitto.

The offender publishes 80 valid batches of 6,000 windows in 12 s (about 75 MB). Without
per-device quotas every batch was decoded and stored twice and the other devices' acks
waited behind them (19 s and more). With them the hub drops the offender's excess unacked
(counted on /metrics) and every other device's ordinary batch is still acked within 8 s.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tests.hub.servicekit import Hub, T, make_service_hub, scrape, serve
from tests.hub.test_telemetry_bounds_serve import acked_within, batch_payload, metric, ordinary
from tests.support.waiting import wait_until

from edgefleet.core.protocol.limits import MAX_TELEMETRY_BYTES
from edgefleet.core.testing.brokers import MosquittoBroker, free_port
from edgefleet.hub.fleet.settings import fleet_location

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

FLOOD_BATCHES, FLOOD_RECORDS, FLOOD_SECONDS = 80, 6000, 12.0


def small_window(start_s: int) -> dict[str, Any]:
    """A valid window, as small as the protocol allows, so 6,000 fit in one message."""
    return {
        "model": "digits",
        "version": 1,
        "start_s": start_s,
        "end_s": start_s + 1,
        "requests": 1,
        "latency_ms": {"edges": [10], "counts": [1, 0]},
    }


@pytest.fixture
def served_hub(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> Iterator[tuple[Hub, int]]:
    metrics_port = free_port()
    hub = make_service_hub(
        tmp_path, mosquitto_factory, extra=f"\n[fleet]\nmetrics_port = {metrics_port}\n"
    )
    text = hub.fx.config_path.read_text()
    text = text.replace("[broker]\n", f"[broker]\nport = {hub.port}\n", 1)
    text = text.replace("max_payload_bytes = 16384", f"max_payload_bytes = {MAX_TELEMETRY_BYTES}")
    hub.fx.config_path.write_text(text)
    proc = serve(hub.fx.config_path, tmp_path / "hub-serve.log")
    try:
        wait_until("hub serve up", lambda: scrape(metrics_port) is not None)
        yield hub, metrics_port
    finally:
        proc.kill()
        proc.wait()
        hub.close()


def flood(hub: Hub, stop: threading.Event) -> None:
    """pi-a publishes its batches at an even pace, QoS 1, without waiting for acks."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pi-a-flood")
    client.username_pw_set("pi-a", hub.passwords["pi-a"])
    client.connect("127.0.0.1", hub.port, keepalive=60)
    client.loop_start()
    try:
        now = int(time.time())
        for k in range(FLOOD_BATCHES):
            if stop.is_set():
                return
            seqs = range(k * FLOOD_RECORDS + 1, (k + 1) * FLOOD_RECORDS + 1)
            payload = batch_payload(
                "pi-a", [(s, small_window(now - 3600 + s // 200)) for s in seqs]
            )
            assert len(payload) <= MAX_TELEMETRY_BYTES
            client.publish(T.telemetry("pi-a"), payload, qos=1)
            time.sleep(FLOOD_SECONDS / FLOOD_BATCHES)
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_flooding_device_slows_only_itself(served_hub: tuple[Hub, int]) -> None:
    hub, port = served_hub
    honest = {d: hub.device(d) for d in ("pi-b", "pi-c")}
    stop = threading.Event()
    flooder = threading.Thread(target=flood, args=(hub, stop), daemon=True)
    started = time.monotonic()
    flooder.start()
    try:
        seq = 0
        late: list[str] = []
        while time.monotonic() - started < FLOOD_SECONDS + 2:
            seq += 1
            for device, client in honest.items():
                batch = [(seq, ordinary(time.time() - 120))]
                client.publish(T.telemetry(device), batch_payload(device, batch))
                if not acked_within(client, device, seq, 8.0):
                    late.append(f"{device} seq {seq} at {time.monotonic() - started:.1f} s")
            time.sleep(1.0)
        assert late == [], f"not acked within 8 s during the flood: {late}"
        assert seq >= 5
    finally:
        stop.set()
        flooder.join(30)

    text = scrape(port)
    assert text is not None
    refused = sum(
        metric(text, f'edgefleet_hub_device_quota_refused_total{{limit="{limit}"}}')
        for limit in ("messages", "bytes", "records")
    )
    assert refused > 0
    with sqlite3.connect(fleet_location(hub.config.store.path)) as conn:
        [(stored,)] = conn.execute("SELECT COUNT(*) FROM fleet_records WHERE device = 'pi-a'")
    assert 0 < stored <= 5 * FLOOD_RECORDS  # a burst's worth, not 480,000 records
