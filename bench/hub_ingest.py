"""Hub telemetry ingest benchmark: throughput, a reconnect storm, a fleet drift query.

Everything runs through the real ``hub serve`` path against a real mosquitto on a free
loopback port: a :class:`HubService` (its own ``MqttClient``, hub store, fleet database,
ingest worker, alert monitor) in this process, with every simulated device enrolled in its
hub store. Each telemetry batch is decoded on the MQTT thread, stored in the hub store
(without the drift blob) and queued for the ingest worker, which commits it to the fleet
database, publishes the ack and then folds the new windows into their rollups. Devices are
simulated in a separate process with real MQTT connections. Windows carry 64-feature
``WindowStats`` (100 rows each) built with the drift module.

- ``windows_per_s``: 10,000 windows from 200 devices (batches of 10) published as fast as
  one paho client can; from the first publish to the last window committed to the fleet
  database (already folded into its rollups: that happens in the ingest transaction).
- ``storm_*``: 1,000 devices, each with 12 buffered windows, connect at once (one MQTT
  connection each), subscribe to their ack topic and publish their backlog as one batch; a
  device whose ack does not come within 20 s publishes the batch again.
  ``storm_drain_s`` runs from the first connect to the moment every window is stored and
  every device holds its ack; ``storm_duplicates`` counts windows counted more than once
  by a fleet drift query (windows in the aggregate minus distinct stored windows);
  ``storm_losses`` counts windows published but not stored; ``storm_hub_store_windows`` is
  what the rollout gates read through the hub store (the same fleet rows: telemetry is
  stored once); ``storm_retransmits``/``storm_redundant_receipts``
  say how often the at-least-once path was exercised.
- ``drift_query_s``: ``hub drift``'s query (fleet level, with the timeline, its own
  database connection as the command has) over the 10,000 windows, started the moment the
  last window was committed — nothing waits for roll-up or maintenance;
  ``drift_query_raw_windows`` says how many windows it still had to decode one by one.
  ``drift_query_settled_s`` is the same query once the worker is idle and
  ``drift_query_by_group_s`` the query broken down by group.
- ``deferred_rollup``: the throughput run again with ``rollup_delay_s`` set (roll-up left
  to maintenance): the ingest rate and the query over raw windows that trade-off gives.

Prints one JSON object. ``python bench/hub_ingest.py [--quick]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.core.drift import ReferenceProfile, WindowStats
from edgefleet.core.mqtt.client import MqttClient
from edgefleet.core.protocol import (
    LatencyHistogram,
    TelemetryBatch,
    TelemetryRecord,
    Topics,
    WindowSummary,
    encode_json,
)
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.hub.commands.serve_cmd import mqtt_settings
from edgefleet.hub.config import (
    BrokerSettings,
    FleetConfig,
    HubConfig,
    ServiceSettings,
    StoreSettings,
)
from edgefleet.hub.fleet import DriftQuery, FleetAggregator, FleetSettings, References
from edgefleet.hub.fleet.database import FleetDatabase, open_fleet_database
from edgefleet.hub.fleet.settings import fleet_location
from edgefleet.hub.fleet.window_store import FleetWindowStore
from edgefleet.hub.service import HubService
from edgefleet.hub.store import DeviceRecord, SqliteHubStore

MODEL = "bench"
N_FEATURES = 64
ROWS = 100
WINDOW_S = 300.0
TARGETS = {"windows_per_s": 1000, "storm_drain_s": 60, "drift_query_s": 2.0}
LATENCY_EDGES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
RESEND_AFTER_S = 20.0


# -- shared: profile and window bodies -----------------------------------------------
def build_profile(seed: int = 1) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(5000, N_FEATURES))
    return ReferenceProfile.build(
        X, [f"f{i}" for i in range(N_FEATURES)], outputs=rng.integers(0, 10, 5000)
    )


def blob_pool(profile: ReferenceProfile, n: int, seed: int) -> list[str]:
    """``n`` distinct encoded windows (reused across devices: ingest cost is the same)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = WindowStats.empty(profile)
        w.update(rng.normal(size=(ROWS, N_FEATURES)).astype(np.float32))
        w.update_outputs(rng.integers(0, 10, ROWS))
        out.append(base64.b64encode(w.to_bytes()).decode("ascii"))
    return out


def window(seq: int, blob: str, start_s: float) -> TelemetryRecord:
    counts = [0] * (len(LATENCY_EDGES) + 1)
    counts[2] = ROWS
    summary = WindowSummary(
        model=MODEL,
        version=1,
        start_s=start_s,
        end_s=start_s + WINDOW_S,
        requests=ROWS,
        latency_ms=LatencyHistogram(LATENCY_EDGES, tuple(counts)),
        predictions={str(k): ROWS // 10 for k in range(10)},
        drift=blob,
    )
    return TelemetryRecord.of_window(seq, summary)


def device_batches(
    device: str, n_windows: int, per_batch: int, pool: list[str], offset: int, now: float
) -> list[bytes]:
    start = now - n_windows * WINDOW_S
    records = [
        window(seq, pool[(offset + seq) % len(pool)], start + (seq - 1) * WINDOW_S)
        for seq in range(1, n_windows + 1)
    ]
    return [
        encode_json(TelemetryBatch.of(device, records[i : i + per_batch]))
        for i in range(0, n_windows, per_batch)
    ]


# -- the hub side (this process) ------------------------------------------------------
class Hub:
    """``hub serve`` in-process: a HubService over the bench's mosquitto."""

    def __init__(
        self,
        port: int,
        work: Path,
        name: str,
        devices: list[str],
        groups: int = 10,
        fleet: FleetConfig | None = None,
    ):
        self.config = HubConfig(
            store=StoreSettings(path=work / f"{name}.db", bundles_dir=work / "bundles"),
            broker=BrokerSettings(port=port, username=None, client_id=f"hub-{name}"),
            service=ServiceSettings(tick_s=3600.0),
            fleet=fleet or FleetConfig(),
        )
        self.store = SqliteHubStore(self.config.store.path)
        with self.store.transaction():
            for device_id in devices:
                group = f"g{int(device_id.rsplit('-', 1)[1]) % groups}"
                self.store.add_device(DeviceRecord(device_id, "rpi4-arm64", "-", 0.0, group))
        client = MqttClient(mqtt_settings(self.config, None))
        self.service = HubService(self.config, self.store, client, Ed25519PrivateKey.generate())
        self.worker = self.service.fleet.worker

    @property
    def fleet_db(self) -> Path | str:
        return fleet_location(self.config.store.path)

    def start(self) -> None:
        self.service.start()
        if not self.service.wait_ready(20):
            raise RuntimeError("hub did not subscribe")

    def wait_stored(self, n: int, timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.worker.stats.stored_records >= n:
                return time.time()
            time.sleep(0.002)
        return None

    def stop(self) -> None:
        self.service.stop()
        self.store.close()


# -- device side (a separate process) -------------------------------------------------
def run_throughput_publisher(args: argparse.Namespace) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    profile = ReferenceProfile.from_json(Path(args.reference).read_text())
    pool = blob_pool(profile, 64, seed=2)
    now = time.time()
    topics = Topics()
    messages = [
        (topics.telemetry(dev), payload)
        for d in range(args.devices)
        for dev in [f"tp-{d}"]
        for payload in device_batches(dev, args.windows, args.batch, pool, d, now)
    ]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", args.port, keepalive=120)
    client.loop_start()
    started = time.time()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(timeout=300)
    finished = time.time()
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"started": started, "published": finished, "messages": len(messages)}))


class StormDevice:
    def __init__(self, device_id: str, payload: bytes, n_windows: int) -> None:
        self.id = device_id
        self.payload = payload
        self.n_windows = n_windows
        self.published_at: float | None = None
        self.acked_at: float | None = None
        self.sends = 0


def run_storm_devices(args: argparse.Namespace) -> None:
    """1,000 MQTT connections driven by one selector loop (paho's external-loop API)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    profile = ReferenceProfile.from_json(Path(args.reference).read_text())
    pool = blob_pool(profile, 64, seed=3)
    topics = Topics()
    now = time.time()
    devices = [
        StormDevice(
            f"st-{d}",
            device_batches(f"st-{d}", args.windows, args.windows, pool, d, now)[0],
            args.windows,
        )
        for d in range(args.devices)
    ]
    selector = selectors.DefaultSelector()
    clients: list[tuple[Any, StormDevice]] = []

    def send(client: Any, dev: StormDevice) -> None:
        dev.sends += 1
        dev.published_at = time.time()
        client.publish(topics.telemetry(dev.id), dev.payload, qos=1)

    def on_connect(client: Any, dev: StormDevice, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(topics.ack(dev.id), qos=1)

    def on_subscribe(client: Any, dev: StormDevice, mid: Any, rcs: Any, props: Any) -> None:
        send(client, dev)

    def on_message(client: Any, dev: StormDevice, message: Any) -> None:
        if json.loads(message.payload)["highest_seq"] >= dev.n_windows and dev.acked_at is None:
            dev.acked_at = time.time()

    started = time.time()
    for dev in devices:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=dev.id, userdata=dev, clean_session=True
        )
        client.on_connect, client.on_subscribe, client.on_message = (
            on_connect,
            on_subscribe,
            on_message,
        )
        client.connect("127.0.0.1", args.port, keepalive=300)
        sock = client.socket()
        assert sock is not None
        selector.register(sock, selectors.EVENT_READ, (client, dev))
        clients.append((client, dev))
    connected = time.time()
    deadline = started + args.timeout
    last_misc = 0.0
    while time.time() < deadline and any(d.acked_at is None for d in devices):
        for key, _mask in selector.select(timeout=0.02):
            client, _dev = key.data
            client.loop_read()
        for client, _dev in clients:
            if client.want_write():
                client.loop_write()
        current = time.time()
        if current - last_misc > 1.0:
            last_misc = current
            for client, dev in clients:
                client.loop_misc()
                waited = dev.published_at is not None and current - dev.published_at
                if dev.acked_at is None and waited and waited > RESEND_AFTER_S:
                    send(client, dev)  # the lease expired: send the backlog again
    acked = [d.acked_at for d in devices if d.acked_at is not None]
    print(
        json.dumps(
            {
                "started": started,
                "connected": connected,
                "last_ack": max(acked) if acked else None,
                "acked_devices": len(acked),
                "retransmits": sum(d.sends - 1 for d in devices),
            }
        )
    )
    for client, _dev in clients:
        try:
            client.disconnect()
        except Exception:
            pass


def spawn(role: str, port: int, reference: Path, **kwargs: Any) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        __file__,
        "--role",
        role,
        "--port",
        str(port),
        "--reference",
        str(reference),
    ]
    for key, value in kwargs.items():
        argv += [f"--{key}", str(value)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"device simulator failed: {err[-2000:]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


# -- phases -----------------------------------------------------------------------------
def open_query(db: Path | str, reference: Path) -> tuple[FleetAggregator, FleetDatabase]:
    """What ``hub drift --db`` opens: its own connection, read only."""
    profile = ReferenceProfile.from_json(reference.read_text())
    database = open_fleet_database(db)
    store = FleetWindowStore(database, FleetSettings())
    return FleetAggregator(store, References(lambda m, v: profile)), database


def timed_query(aggregator: FleetAggregator, q: DriftQuery) -> tuple[float, int]:
    t = time.perf_counter()
    result = aggregator.query(q, time.time())
    return time.perf_counter() - t, result.fleet.windows


def throughput(
    broker: MosquittoBroker, work: Path, reference: Path, quick: bool, deferred: bool = False
) -> dict[str, Any]:
    devices, windows = (50, 40) if quick else (200, 50)
    total = devices * windows
    name = "deferred" if deferred else "throughput"
    # Deferred: roll-up left to maintenance (none due during the run), the trade-off
    # `rollup_delay_s > 0` makes: cheaper ingest, queries decode windows one by one.
    fleet = FleetConfig(settings=FleetSettings(rollup_delay_s=3600.0)) if deferred else None
    hub = Hub(broker.port, work, name, [f"tp-{d}" for d in range(devices)], fleet=fleet)
    hub.start()
    try:
        proc = spawn("throughput", broker.port, reference, devices=devices, windows=windows)
        stored_at = hub.wait_stored(total, 900)
        if stored_at is None:
            raise RuntimeError(f"only {hub.worker.stats.stored_records} of {total} windows stored")
        # The query `hub drift` would run right now: nothing waited for roll-up.
        aggregator, database = open_query(hub.fleet_db, reference)
        unrolled = aggregator.store.count_windows()["raw_unrolled"]
        since = time.time() - 86400
        query_s, counted = timed_query(aggregator, DriftQuery(MODEL, since_s=since))
        report = finish(proc, 600)
        assert hub.worker.wait_idle(60)
        settled_s, settled_count = timed_query(aggregator, DriftQuery(MODEL, since_s=since))
        by_group_s, _ = timed_query(aggregator, DriftQuery(MODEL, by="group", since_s=since))
        database.close()
    finally:
        hub.stop()
    if counted != total or settled_count != total:
        raise RuntimeError(f"query counted {counted}/{settled_count} of {total} windows")
    elapsed = stored_at - report["started"]
    return {
        "throughput_windows": total,
        "windows_per_s": round(total / elapsed, 1),
        "publish_s": round(report["published"] - report["started"], 3),
        "ingest_commits": hub.worker.stats.commits,
        "drift_query_windows": counted,
        "drift_query_s": round(query_s, 3),
        "drift_query_raw_windows": unrolled,
        "drift_query_settled_s": round(settled_s, 3),
        "drift_query_by_group_s": round(by_group_s, 3),
    }


def storm(broker: MosquittoBroker, work: Path, reference: Path, quick: bool) -> dict[str, Any]:
    devices, windows = (200, 12) if quick else (1000, 12)
    total = devices * windows
    hub = Hub(broker.port, work, "storm", [f"st-{d}" for d in range(devices)])
    hub.start()
    try:
        proc = spawn("storm", broker.port, reference, devices=devices, windows=windows, timeout=300)
        report = finish(proc, 900)
        stored_at = hub.wait_stored(total, 60) or time.time()
        hub.worker.wait_idle(60)
        refused = hub.service.counters.get("telemetry.fleet_backlog_full", 0)
        hub_store_windows = sum(1 for _ in hub.store.telemetry_windows(MODEL, [1], None, 0.0))
    finally:
        hub.stop()
    aggregator, database = open_query(hub.fleet_db, reference)
    try:
        counts = aggregator.store.count_windows()
        aggregated = aggregator.query(DriftQuery(MODEL, timeline=False), time.time())
    finally:
        database.close()
    distinct = counts["raw_unrolled"] + counts["raw_rolled"]
    last_ack = report["last_ack"] or float("inf")
    return {
        "storm_devices": devices,
        "storm_windows": total,
        "storm_drain_s": round(max(last_ack, stored_at) - report["started"], 3),
        "storm_connect_s": round(report["connected"] - report["started"], 3),
        "storm_duplicates": aggregated.fleet.windows - distinct,
        "storm_losses": total - distinct,
        "storm_hub_store_windows": hub_store_windows,
        "storm_acked_devices": report["acked_devices"],
        "storm_retransmits": report["retransmits"],
        "storm_redundant_receipts": hub.worker.stats.duplicates,
        "storm_refused_batches": refused,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--role", choices=["throughput", "storm"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--reference")
    parser.add_argument("--devices", type=int)
    parser.add_argument("--windows", type=int)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    if args.role == "throughput":
        run_throughput_publisher(args)
        return
    if args.role == "storm":
        run_storm_devices(args)
        return

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-ingest-") as tmp:
        work = Path(tmp)
        reference = work / "reference.json"
        reference.write_text(build_profile().to_json())
        broker = MosquittoBroker(work / "broker")
        broker.start()
        try:
            result: dict[str, Any] = {
                "path": "hub serve (HubService): hub store + fleet db, ack after the fleet commit",
                "features": N_FEATURES,
                "rows_per_window": ROWS,
            }
            result.update(throughput(broker, work, reference, args.quick))
            deferred = throughput(broker, work, reference, args.quick, deferred=True)
            result["deferred_rollup"] = {
                k: deferred[k]
                for k in ("windows_per_s", "drift_query_s", "drift_query_raw_windows")
            }
            result.update(storm(broker, work, reference, args.quick))
        finally:
            broker.kill()
    result["targets"] = TARGETS
    result["meets_targets"] = (
        result["windows_per_s"] >= TARGETS["windows_per_s"]
        and result["storm_drain_s"] <= TARGETS["storm_drain_s"]
        and result["storm_duplicates"] == 0
        and result["storm_losses"] == 0
        and result["storm_acked_devices"] == result["storm_devices"]
        and result["storm_hub_store_windows"] == result["storm_windows"]
        and result["drift_query_s"] <= TARGETS["drift_query_s"]
    )
    print(json.dumps(result))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
