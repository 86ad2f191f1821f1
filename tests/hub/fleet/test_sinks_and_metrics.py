"""Webhook delivery with retries (never blocking the caller) and the Prometheus endpoint."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.hub.fleet.fleetkit import Receiver
from tests.support.waiting import wait_until

from edgefleet.core.mqtt import BackoffPolicy
from edgefleet.hub.fleet.alert_sinks import AlertEvent, WebhookSink
from edgefleet.hub.fleet.alert_store import AlertRecord, AlertStore, NewAlert
from edgefleet.hub.fleet.ingest import FleetTelemetry, IngestWorker
from edgefleet.hub.fleet.metrics import MetricsServer, collect, render_metrics

FAST = BackoffPolicy(initial_s=0.01, max_s=0.05, jitter=0.0)


def event(alert_id: int = 1) -> AlertEvent:
    record = AlertRecord(
        alert_id, "k", "feature_drift", "sensor", 1, "group", "east", "warning", "open",
        100.0, None, "3 feature(s) drifted", {"features": {}},
    )  # fmt: skip
    return AlertEvent("fired", record, 100.0)


@pytest.fixture
def receiver_factory() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


def test_webhook_retries_server_errors_then_delivers(receiver_factory: list[Receiver]) -> None:
    receiver = Receiver([503, 500, 200])
    receiver_factory.append(receiver)
    sink = WebhookSink(receiver.url, backoff=FAST).start()
    try:
        sink.send(event(7))
        assert wait_until("the delivery", lambda: sink.stats.delivered == 1)
    finally:
        sink.stop()
    assert sink.stats.retries == 2 and sink.stats.failed == 0
    assert len(receiver.bodies) == 3
    assert receiver.bodies[-1]["event"] == "fired"
    assert receiver.bodies[-1]["alert"]["id"] == 7  # type: ignore[index]


def test_webhook_gives_up_on_client_errors_and_unreachable_hosts(
    receiver_factory: list[Receiver],
) -> None:
    receiver = Receiver([404])
    receiver_factory.append(receiver)
    sink = WebhookSink(receiver.url, backoff=FAST, max_attempts=3).start()
    closed = WebhookSink("http://127.0.0.1:9/nothing", backoff=FAST, max_attempts=3).start()
    try:
        sink.send(event())
        closed.send(event())
        assert wait_until(
            "both failures", lambda: sink.stats.failed == 1 and closed.stats.failed == 1
        )
    finally:
        sink.stop()
        closed.stop()
    assert len(receiver.bodies) == 1 and sink.stats.retries == 0  # 404 is final
    assert closed.stats.retries == 2  # connection refused is retried


def test_webhook_send_never_blocks() -> None:
    sink = WebhookSink("http://127.0.0.1:9/x", queue_size=2)  # thread not started
    started = time.monotonic()
    for i in range(5):
        sink.send(event(i))
    assert time.monotonic() - started < 0.5
    assert (sink.pending, sink.stats.dropped) == (2, 3)
    with pytest.raises(ValueError):
        WebhookSink("file:///etc/passwd")


def test_metrics_text_and_endpoint(tmp_path: Path) -> None:
    telemetry = FleetTelemetry(tmp_path / "fleet.db")
    alerts = AlertStore(telemetry.db)
    with telemetry.db.write() as conn:
        alerts.open_alert(
            conn,
            NewAlert("k1", "error_rate", "sensor", 1, "fleet", "*", "critical", "s", {}),
            100.0,
        )
    worker = IngestWorker(telemetry)
    worker.stats.stored_records, worker.stats.duplicates = 12, 3
    server = MetricsServer(lambda: render_metrics(collect(worker, alerts, lambda: (50, 47))))
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = response.read().decode()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{url}/other", timeout=5)
        assert missing.value.code == 404
    finally:
        server.stop()
    lines = set(text.splitlines())
    assert "edgefleet_hub_devices 50" in lines
    assert "edgefleet_hub_devices_online 47" in lines
    assert "edgefleet_hub_telemetry_records_total 12" in lines
    assert "edgefleet_hub_telemetry_duplicates_total 3" in lines
    assert "edgefleet_hub_telemetry_backlog 0" in lines
    # Nothing ingested yet: the ack-cursor counters are present at zero.
    assert "edgefleet_hub_telemetry_ahead_of_cursor_batches_total 0" in lines
    assert "edgefleet_hub_telemetry_spans_full_batches_total 0" in lines
    assert 'edgefleet_hub_alerts_open{severity="critical"} 1' in lines
    assert 'edgefleet_hub_alerts_open{severity="warning"} 0' in lines
    assert "# TYPE edgefleet_hub_telemetry_records_total counter" in lines
    # Every sample line is "name{labels} value" with a number for value.
    for line in text.splitlines():
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def test_scrapes_share_one_database_connection(tmp_path: Path) -> None:
    telemetry = FleetTelemetry(tmp_path / "fleet.db")
    alerts = AlertStore(telemetry.db)
    worker = IngestWorker(telemetry)
    server = MetricsServer(lambda: render_metrics(collect(worker, alerts, lambda: (1, 1))))
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
        after_first = telemetry.db.open_connections
        for _ in range(20):
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200
                response.read()
    finally:
        server.stop()
    # A thread per scrape would have opened one more connection per scrape.
    assert telemetry.db.open_connections == after_first
