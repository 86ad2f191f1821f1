"""The alert monitor over real telemetry: fires once, resolves once, stays quiet on clean data.

Alerts go to a recording sink and to the MQTT alert topic of a real mosquitto; ``hub
alerts`` lists them afterwards.
"""

from __future__ import annotations

import json
import queue
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tests.hub.fleet.fleetkit import MODEL, N_FEATURES, classify, fleet, reference, run_cli
from tests.support.brokers import ProbeClient

from edgefleet.core.mqtt import MqttSettings
from edgefleet.core.mqtt.client import MqttClient
from edgefleet.core.protocol import Topics
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.hub.fleet.alert_sinks import AlertEvent, LogSink, MqttAlertSink
from edgefleet.hub.fleet.alerts import AlertPolicy
from edgefleet.hub.fleet.ingest import FleetTelemetry
from edgefleet.hub.fleet.monitor import FleetMonitor
from edgefleet.hub.fleet.references import References

T0 = float(1_700_000_000 // 3600 * 3600)
PERIOD_S = 900.0
DRIFTED = ("east-d00", "east-d03", "east-d04")


class Recorder:
    def __init__(self) -> None:
        self.events: list[AlertEvent] = []

    def send(self, event: AlertEvent) -> None:
        self.events.append(event)


@pytest.mark.mqtt
def test_alert_fires_once_and_resolves_after_drift_stops(
    tmp_path: Path, mosquitto: MosquittoBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(21)
    profile = reference(rng)
    db = tmp_path / "fleet.db"
    telemetry = FleetTelemetry(db)
    topics = Topics()
    observer = ProbeClient(mosquitto.port)
    assert observer.connect() == 0
    observer.subscribe(topics.alerts())
    hub_client = MqttClient(MqttSettings(host="127.0.0.1", port=mosquitto.port, client_id="hub"))
    hub_client.start()
    assert hub_client.wait_connected(10)
    recorder = Recorder()
    monitor = FleetMonitor(
        telemetry,
        References(lambda m, v: profile, cache=telemetry.store),
        AlertPolicy(k_fire=2, k_resolve=2),
        sinks=[recorder, LogSink(), MqttAlertSink(hub_client.publish, topics.alerts())],
    )
    devices = fleet(["north", "south", "east", "west"], 5)
    drift_periods = range(8, 16)
    fired_at = resolved_at = None
    try:
        for period in range(28):
            start = T0 + period * PERIOD_S
            now = start + PERIOD_S + 5
            for dev in devices:
                X = rng.normal(size=(60, N_FEATURES))
                if dev.info.id in DRIFTED and period in drift_periods:
                    X[:, :5] += 1.5
                dev.record(profile, X, start, start + PERIOD_S)
                dev.ack(telemetry.ingest(dev.info, dev.unacked, now).highest_contiguous_seq)
            for event in monitor.run_once(now):
                a = event.alert
                if (a.rule, a.scope_kind, a.scope) == ("feature_drift", "group", "east"):
                    if event.kind == "fired":
                        fired_at = period
                    else:
                        resolved_at = period
        assert hub_client.flush(10)
    finally:
        hub_client.stop()

    # The east group's feature drift: fired once while drifting, resolved once after.
    assert fired_at is not None and fired_at in drift_periods
    assert resolved_at is not None and resolved_at >= drift_periods[-1] + 1
    # Every alert key fired at most once and nothing is left open; only the drifting
    # group (and the fleet it belongs to) ever alerted.
    fired = Counter(e.alert.key for e in recorder.events if e.kind == "fired")
    resolved = Counter(e.alert.key for e in recorder.events if e.kind == "resolved")
    assert fired and max(fired.values()) == 1 and fired == resolved
    assert {(e.alert.scope_kind, e.alert.scope) for e in recorder.events} <= {
        ("group", "east"),
        ("fleet", "*"),
    }
    east = next(
        e
        for e in recorder.events
        if e.kind == "fired" and e.alert.key.startswith("feature_drift") and e.alert.scope == "east"
    )
    assert sorted(east.alert.details["features"]) == [f"f{i}" for i in range(5)]

    # The same events arrived on {root}/alerts.
    received = []
    while True:
        try:
            topic, payload, _retain = observer.messages.get(timeout=5)
        except queue.Empty:
            break
        assert topic == "edgefleet/v1/alerts"
        received.append(json.loads(payload))
        if len(received) == len(recorder.events):
            break
    observer.client.loop_stop()
    assert [(m["event"], m["alert"]["id"]) for m in received] == [
        (e.kind, e.alert.id) for e in recorder.events
    ]

    code, out, err = run_cli(capsys, "hub", "alerts", "--db", str(db), "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert listed["open"] == 0
    assert len(listed["alerts"]) == sum(fired.values())
    assert all(a["status"] == "resolved" for a in listed["alerts"])
    code, out, err = run_cli(capsys, "hub", "alerts", "--db", str(db))
    assert code == 0 and "feature_drift" in out and "group=east" in out


def test_no_alert_on_fifty_clean_devices_for_a_day(tmp_path: Path) -> None:
    rng = np.random.default_rng(22)
    profile = reference(rng)
    telemetry = FleetTelemetry(tmp_path / "fleet.db")
    recorder = Recorder()
    monitor = FleetMonitor(
        telemetry,
        References(lambda m, v: profile, lambda m, v: {"accuracy": 0.95}),
        AlertPolicy(),
        sinks=[recorder],
    )
    devices = fleet([f"site{i}" for i in range(5)], 10)
    period_s = 1800.0
    for period in range(48):  # a day of 30-minute windows
        start = T0 + period * period_s
        now = start + period_s + 5
        for dev in devices:
            X = rng.normal(size=(40, N_FEATURES))
            truth = classify(X)
            flip = rng.random(len(truth)) < 0.05  # 95 % accurate, as validated
            truth[flip] = 1 - truth[flip]
            dev.record(
                profile, X, start, start + period_s, y_true=truth, errors=int(rng.integers(0, 2))
            )
        # One transaction for the whole period, as the ingest worker commits.
        results = telemetry.ingest_many([(d.info, d.unacked) for d in devices], now)
        for dev, result in zip(devices, results, strict=True):
            dev.ack(result.highest_contiguous_seq)
        monitor.run_once(now)
    assert recorder.events == []
    assert monitor.alerts.list_alerts() == []
    # The monitor really looked: it read every window and scored them all (no carry left).
    assert monitor.alerts.cursor(MODEL, 1) == telemetry.store.max_rid()
    for scope in ["fleet|*", *(f"group|site{i}" for i in range(5))]:
        assert monitor.alerts.scope(f"{MODEL}|1|{scope}").totals is None
