"""Fleet telemetry inside the hub service, over a real mosquitto.

Telemetry goes to two stores: the hub store (what the rollout gates read, windows without
their drift blob) and the fleet database (full windows, drift aggregation, alerts). The
ack goes out only after the fleet commit. These tests hold the fleet database's write lock
to freeze the worker between the two commits, fill the ingest queue, start from the state a
crash between the commits leaves behind, and SIGKILL a real ``hub serve`` in the middle of
a stream; every window must end up stored exactly once in both stores.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.hub.fleet.fleetkit import MODEL, N_FEATURES, Receiver, reference, run_cli, window_record
from tests.hub.servicekit import FleetCommitHold, Hub, T, make_service_hub, scrape, serve
from tests.support.brokers import ProbeClient
from tests.support.bundles import placeholder_bundle
from tests.support.waiting import wait_until

from edgefleet.core.drift import ReferenceProfile
from edgefleet.core.protocol import Ack, TelemetryBatch, TelemetryRecord, encode_json
from edgefleet.core.testing.brokers import MosquittoBroker, free_port
from edgefleet.hub.bundles import PublishedBundleStore
from edgefleet.hub.enrollment import publisher_trust
from edgefleet.hub.fleet import DeviceInfo, DriftQuery, FleetAggregator, FleetTelemetry, References
from edgefleet.hub.fleet.settings import fleet_location
from edgefleet.hub.fleet.totals import WindowTotals
from edgefleet.hub.store import SqliteHubStore

PROFILE = reference(np.random.default_rng(71))
START = time.time() - 1800


def windows(first_seq: int, n: int, *, rows: int = 50, shift: float = 0.0) -> list[TelemetryRecord]:
    rng = np.random.default_rng(first_seq)
    out = []
    for seq in range(first_seq, first_seq + n):
        X = rng.normal(size=(rows, N_FEATURES))
        X[:, :5] += shift
        t = START + seq * 10
        out.append(window_record(seq, PROFILE, X, t, t + 10))
    return out


def batch(device_id: str, records: list[TelemetryRecord]) -> bytes:
    return encode_json(TelemetryBatch.of(device_id, records))


def acks(client: ProbeClient, device_id: str) -> list[int]:
    """Acks received so far for ``device_id`` (without waiting)."""
    seen = []
    while not client.messages.empty():
        topic, payload, _retain = client.messages.get_nowait()
        if topic == T.ack(device_id):
            seen.append(Ack.from_dict(json.loads(payload)).highest_seq)
    return seen


def wait_ack(client: ProbeClient, device_id: str, seq: int) -> None:
    client.wait_for(
        lambda t, p: t == T.ack(device_id) and Ack.from_dict(json.loads(p)).highest_seq >= seq
    )


def publish_reference_bundle(hub: Hub, profile: ReferenceProfile) -> None:
    path = hub.fx.root / f"{MODEL}-1.efb"
    placeholder_bundle(
        path,
        hub.fx.publisher_key,
        model=MODEL,
        version=1,
        payload_bytes=256,
        reference=profile.to_json().encode(),
        bundle_id=f"{MODEL}-1",
        labels=[0, 1],
        validation={"packaged": {"accuracy": 0.95}},
    )
    PublishedBundleStore(hub.config.store.bundles_dir, hub.store).publish(
        path, publisher_trust(hub.config), time.time()
    )


def gate_windows(hub: Hub, device_id: str) -> list[WindowTotals]:
    """What the rollout gates read of a device's windows (the fleet tables' rows)."""
    return [w.totals for w in hub.store.telemetry_windows(MODEL, [1], [device_id], 0.0)]


def fleet_seqs(hub: Hub) -> dict[str, list[int]]:
    """Window seqs per device in the fleet database (a seq twice would show twice)."""
    with sqlite3.connect(fleet_location(hub.config.store.path)) as conn:
        rows = conn.execute(
            "SELECT device, seq FROM fleet_records WHERE kind = 'window' ORDER BY device, seq"
        ).fetchall()
    out: dict[str, list[int]] = {}
    for device, seq in rows:
        out.setdefault(device, []).append(seq)
    return out


def fleet_windows_counted(hub: Hub) -> int:
    """Windows a fleet drift query counts (raw rows and rollups alike)."""
    telemetry = FleetTelemetry(fleet_location(hub.config.store.path))
    try:
        result = FleetAggregator(telemetry.store, References(lambda m, v: PROFILE)).query(
            DriftQuery(MODEL, timeline=False), time.time()
        )
        return result.fleet.windows
    finally:
        telemetry.close()


@pytest.fixture
def hub_factory(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> Iterator[Callable[[str], Hub]]:
    made: list[Hub] = []

    def make(fleet_toml: str = "") -> Hub:
        hub = make_service_hub(tmp_path, mosquitto_factory, extra=f"\n[fleet]\n{fleet_toml}\n")
        made.append(hub)
        return hub

    yield make
    for hub in made:
        hub.close()


@pytest.mark.mqtt
def test_windows_are_stored_once_and_the_ack_waits_for_that_commit(
    hub_factory: Callable[[str], Hub], capsys: pytest.CaptureFixture[str]
) -> None:
    hub = hub_factory("")
    publish_reference_bundle(hub, PROFILE)
    service = hub.start()
    device = hub.device("pi-a")
    lock = FleetCommitHold(service)
    try:
        device.publish(T.telemetry("pi-a"), batch("pi-a", windows(1, 4)))
        wait_until("taken by the ingest", lambda: service.fleet.worker.stats.submitted == 1)
        time.sleep(0.5)  # room for a premature ack or a premature write to show
        assert acks(device, "pi-a") == []  # the fleet commit is blocked: no ack yet
        assert gate_windows(hub, "pi-a") == []  # and no copy the gates could read
    finally:
        lock.release()
    wait_ack(device, "pi-a", 4)

    # The gates read the same rows as drift: each window's totals.
    totals = gate_windows(hub, "pi-a")
    assert len(totals) == 4
    assert all(t.requests == 50 and t.latency and t.windows == 1 for t in totals)
    assert fleet_seqs(hub) == {"pi-a": [1, 2, 3, 4]}
    assert service.counters["telemetry.records"] == 4

    # `hub drift --config` reads what `hub serve` stored, scored against the bundle's reference.
    code, out, err = run_cli(
        capsys, "hub", "drift", MODEL, "--config", str(hub.fx.config_path), "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["reference"] is True and result["profile_id"] == PROFILE.profile_id
    assert result["fleet"]["windows"] == 4 and result["fleet"]["rows"] == 200


@pytest.mark.mqtt
def test_a_full_ingest_queue_is_not_acked_and_the_resend_is_stored_once(
    hub_factory: Callable[[str], Hub],
) -> None:
    hub = hub_factory("ingest_queue_size = 1")
    service = hub.start()
    worker = service.fleet.worker
    a, b, c = (hub.device(d) for d in ("pi-a", "pi-b", "pi-c"))
    lock = FleetCommitHold(service)
    try:
        a.publish(T.telemetry("pi-a"), batch("pi-a", windows(1, 2)))
        wait_until("a taken", lambda: worker.stats.submitted == 1 and worker.backlog == 0)
        b.publish(T.telemetry("pi-b"), batch("pi-b", windows(1, 2)))
        wait_until("b queued", lambda: worker.backlog == 1)
        c.publish(T.telemetry("pi-c"), batch("pi-c", windows(1, 2)))
        wait_until("c refused", lambda: service.counters.get("telemetry.fleet_backlog_full") == 1)
    finally:
        lock.release()
    wait_ack(a, "pi-a", 2)
    wait_ack(b, "pi-b", 2)
    assert service.fleet.drain(20)
    assert acks(c, "pi-c") == []  # refused, so never acked
    assert fleet_seqs(hub) == {"pi-a": [1, 2], "pi-b": [1, 2]}
    assert gate_windows(hub, "pi-c") == []  # refused: stored nowhere

    c.publish(T.telemetry("pi-c"), batch("pi-c", windows(1, 2)))  # the agent resends
    wait_ack(c, "pi-c", 2)
    assert len(gate_windows(hub, "pi-c")) == 2
    assert fleet_seqs(hub)["pi-c"] == [1, 2]
    assert fleet_windows_counted(hub) == 6


@pytest.mark.mqtt
def test_a_batch_stored_before_its_ack_was_lost_is_acked_on_resend_and_kept_once(
    hub_factory: Callable[[str], Hub],
) -> None:
    hub = hub_factory("")
    first = windows(1, 3)
    # The hub committed pi-b's batch and died before publishing the ack.
    telemetry = FleetTelemetry(fleet_location(hub.config.store.path))
    telemetry.ingest(DeviceInfo("pi-b", None, "rpi4-arm64"), first, time.time())
    telemetry.close()

    hub.start()
    client = hub.device("pi-b")
    client.publish(T.telemetry("pi-b"), batch("pi-b", first + windows(4, 2)))
    wait_ack(client, "pi-b", 5)
    assert len(gate_windows(hub, "pi-b")) == 5
    assert fleet_seqs(hub) == {"pi-b": [1, 2, 3, 4, 5]}
    assert fleet_windows_counted(hub) == 5


@pytest.mark.mqtt
def test_alerts_reach_mqtt_and_the_webhook_and_metrics_are_served(
    hub_factory: Callable[[str], Hub], capsys: pytest.CaptureFixture[str]
) -> None:
    receiver = Receiver([])
    try:
        port = free_port()
        hub = hub_factory(
            f'webhook_url = "{receiver.url}"\nmetrics_port = {port}\n'
            'monitor_interval_s = 3600\nk_fire = 1\nscopes = ["fleet"]\n'
        )
        publish_reference_bundle(hub, PROFILE)
        service = hub.start()
        observer = hub.observer()
        observer.subscribe(T.alerts())
        for device_id in ("pi-a", "pi-b", "pi-c"):
            client = hub.device(device_id)
            client.publish(T.telemetry(device_id), batch(device_id, windows(1, 2, shift=1.5)))
            wait_ack(client, device_id, 2)

        events = service.fleet.monitor.run_once(time.time())
        fired = {e.alert.rule for e in events if e.kind == "fired"}
        assert {"feature_drift", "dataset_drift"} <= fired
        [*_, (_topic, payload)] = observer.wait_for(lambda t, p: t == T.alerts())
        assert json.loads(payload)["event"] == "fired"
        wait_until("webhook deliveries", lambda: len(receiver.bodies) == len(events))
        assert {b["alert"]["rule"] for b in receiver.bodies} == fired  # type: ignore[index]

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            lines = set(response.read().decode().splitlines())
        assert "edgefleet_hub_devices 3" in lines
        assert "edgefleet_hub_telemetry_records_total 6" in lines
        assert "edgefleet_hub_telemetry_backlog 0" in lines
        assert 'edgefleet_hub_alerts_open{severity="critical"} 1' in lines  # dataset_drift

        code, out, err = run_cli(
            capsys, "hub", "alerts", "--config", str(hub.fx.config_path), "--json"
        )
        assert code == 0, err
        assert json.loads(out)["open"] == len(fired)
    finally:
        receiver.close()


@pytest.mark.mqtt
def test_hub_serve_killed_mid_stream_loses_and_doubles_nothing(
    hub_factory: Callable[[str], Hub],
) -> None:
    metrics_port = free_port()
    hub = hub_factory(f"metrics_port = {metrics_port}")
    text = hub.fx.config_path.read_text().replace("[broker]\n", f"[broker]\nport = {hub.port}\n", 1)
    hub.fx.config_path.write_text(text)
    total, per_batch = 120, 4
    records = windows(1, total, rows=20)
    device = hub.device("pi-a")

    proc = serve(hub.fx.config_path)
    try:
        wait_until("hub serve up", lambda: scrape(metrics_port) is not None)
        for sent in range(0, 3 * per_batch, per_batch):
            device.publish(T.telemetry("pi-a"), batch("pi-a", records[sent : sent + per_batch]))
        wait_ack(device, "pi-a", 3 * per_batch)  # committed and acked
        highest = 3 * per_batch
        for sent in range(highest, highest + 5 * per_batch, per_batch):  # more in flight
            device.publish(T.telemetry("pi-a"), batch("pi-a", records[sent : sent + per_batch]))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(0.2)  # acks the hub published before dying are delivered by now
        highest = max([highest, *acks(device, "pi-a")])
        assert 0 < highest < total

        proc = serve(hub.fx.config_path)
        wait_until("hub serve up again", lambda: scrape(metrics_port) is not None)
        # The agent resends everything above the highest ack it holds.
        rest = [r for r in records if r.seq > highest]
        for i in range(0, len(rest), per_batch):
            device.publish(T.telemetry("pi-a"), batch("pi-a", rest[i : i + per_batch]))
        wait_ack(device, "pi-a", total)
        metrics = scrape(metrics_port)
        assert metrics is not None and "edgefleet_hub_devices 3" in metrics
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert fleet_seqs(hub) == {"pi-a": list(range(1, total + 1))}
    store = SqliteHubStore(hub.config.store.path)
    try:
        assert len(list(store.telemetry_windows(MODEL, [1], ["pi-a"], 0.0))) == total
    finally:
        store.close()
    assert fleet_windows_counted(hub) == total
