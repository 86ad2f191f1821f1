"""One device flooding valid telemetry: how long the other devices wait for their acks.

The real ``hub serve`` path (a :class:`HubService` in this process, its own MQTT client,
hub store and fleet database) over a real mosquitto on a free loopback port. One device
publishes ``--batches`` valid batches of ``--records`` small windows over ``--seconds``
(QoS 1, not waiting for acks); meanwhile ``--honest`` other devices each publish one
ordinary window a second and time its ack. The run is done twice: with the per-device
quotas at their defaults, and with them lifted (what the hub did before it had any).

Prints one JSON object: per run, the honest devices' ack latency (p50, p95, max, and how
many acks never came within 30 s), what the flooder got stored, what the quotas refused
and the size of both databases. ``python bench/hub_flood.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.core.mqtt.client import MqttClient
from edgefleet.core.protocol import Topics
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.hub.commands.serve_cmd import mqtt_settings
from edgefleet.hub.config import BrokerSettings, FleetConfig, HubConfig, StoreSettings
from edgefleet.hub.fleet.settings import fleet_location
from edgefleet.hub.service import HubService
from edgefleet.hub.store import DeviceRecord, SqliteHubStore

TOPICS = Topics()
ACK_WAIT_S = 30.0
LIFTED = {
    "device_messages_per_s": 1e9,
    "device_bytes_per_s": 1e12,
    "device_records_per_s": 1e9,
}


def window(start_s: int, requests: int = 1) -> dict[str, Any]:
    return {
        "model": "bench",
        "version": 1,
        "start_s": start_s,
        "end_s": start_s + 60,
        "requests": requests,
        "latency_ms": {"edges": [10], "counts": [requests, 0]},
    }


def payload(device: str, records: list[tuple[int, dict[str, Any]]]) -> bytes:
    body = {
        "v": 1,
        "device": device,
        "first_seq": records[0][0],
        "last_seq": records[-1][0],
        "records": [{"seq": s, "kind": "window", "body": b} for s, b in records],
    }
    return json.dumps(body, separators=(",", ":")).encode()


class Honest:
    """One honest device: publishes a window a second and times each ack."""

    def __init__(self, port: int, device: str) -> None:
        self.device = device
        self.sent: dict[int, float] = {}
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device)
        self.client.on_message = self._on_ack
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.subscribe(TOPICS.ack(device), qos=1)
        self.client.loop_start()

    def _on_ack(self, client: Any, userdata: Any, message: Any) -> None:
        highest = json.loads(message.payload)["highest_seq"]
        now = time.monotonic()
        with self.lock:
            for seq in [s for s in self.sent if s <= highest]:
                self.latencies.append(now - self.sent.pop(seq))

    def send(self, seq: int) -> None:
        with self.lock:
            self.sent[seq] = time.monotonic()
        data = payload(self.device, [(seq, window(int(time.time()) - 120, 20))])
        self.client.publish(TOPICS.telemetry(self.device), data, qos=1)

    def close(self) -> int:
        """Stop; the number of acks that never came."""
        self.client.loop_stop()
        self.client.disconnect()
        return len(self.sent)


def flood(port: int, batches: int, records: int, seconds: float) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flooder")
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    now = int(time.time())
    for k in range(batches):
        seqs = range(k * records + 1, (k + 1) * records + 1)
        data = payload("flooder", [(s, window(now - 3600 + s // 200)) for s in seqs])
        client.publish(TOPICS.telemetry("flooder"), data, qos=1)
        time.sleep(seconds / batches)
    client.loop_stop()
    client.disconnect()


def run(
    broker: MosquittoBroker, work: Path, args: argparse.Namespace, lifted: bool
) -> dict[str, Any]:
    name = "lifted" if lifted else "quotas"
    fleet = FleetConfig(**LIFTED) if lifted else FleetConfig()  # type: ignore[arg-type]
    config = HubConfig(
        store=StoreSettings(path=work / f"{name}.db", bundles_dir=work / "bundles"),
        broker=BrokerSettings(port=broker.port, username=None, client_id=f"hub-{name}"),
        fleet=fleet,
    )
    store = SqliteHubStore(config.store.path)
    devices = ["flooder"] + [f"honest-{i}" for i in range(args.honest)]
    with store.transaction():
        for device in devices:
            store.add_device(DeviceRecord(device, "rpi4-arm64", "-", 0.0))
    service = HubService(
        config, store, MqttClient(mqtt_settings(config, None)), Ed25519PrivateKey.generate()
    )
    service.start()
    honest = [Honest(broker.port, d) for d in devices[1:]]
    try:
        flooder = threading.Thread(
            target=flood, args=(broker.port, args.batches, args.records, args.seconds)
        )
        flooder.start()
        started, seq = time.monotonic(), 0
        while time.monotonic() - started < args.seconds:
            seq += 1
            for h in honest:
                h.send(seq)
            time.sleep(1.0)
        flooder.join()
        deadline = time.monotonic() + ACK_WAIT_S
        while time.monotonic() < deadline and any(h.sent for h in honest):
            time.sleep(0.1)
    finally:
        lost = sum(h.close() for h in honest)
        latencies = sorted(x for h in honest for x in h.latencies)
        quota_refused = service.fleet.quotas.refused()
        service.stop()
        flooder_stored = len(list(store.telemetry_windows("bench", [1], ["flooder"], 0.0)))
        store.close()
    return {
        "honest_acks": len(latencies),
        "honest_ack_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "honest_ack_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3)
        if latencies
        else None,
        "honest_ack_max_s": round(latencies[-1], 3) if latencies else None,
        "honest_not_acked_within_30s": lost,
        "flooder_windows_stored": flooder_stored,
        "quota_refused_messages": quota_refused,
        "hub_db_mb": round(config.store.path.stat().st_size / 2**20, 1),
        "fleet_db_mb": round(fleet_location(config.store.path).stat().st_size / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--honest", type=int, default=20)
    args = parser.parse_args()
    args.batches, args.records, args.seconds = (20, 6000, 4.0) if args.quick else (80, 6000, 12.0)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-flood-") as tmp:
        work = Path(tmp)
        broker = MosquittoBroker(work / "broker")
        broker.start()
        try:
            result: dict[str, Any] = {
                "flood": {
                    "batches": args.batches,
                    "records_per_batch": args.records,
                    "seconds": args.seconds,
                },
                "honest_devices": args.honest,
                "with_quotas": run(broker, work, args, lifted=False),
                "quotas_lifted": run(broker, work, args, lifted=True),
            }
        finally:
            broker.kill()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
