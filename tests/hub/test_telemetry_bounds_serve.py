"""One device's absurd numbers against a real ``hub serve`` over a real mosquitto.

A device with its own credentials sends windows claiming ``requests = 2**63``, latency
counts of ``2**70``, ``start_s = 1e300`` and a batch whose seq is ``2**63``. Before the
bounds existed the first one killed the fleet ingest thread (an SQLite INTEGER overflow)
and no device was acked again. Now every other device's ordinary batch is still acked
within 8 s, the offender's records are refused and counted on /metrics, its refused
records are acked (so it stops resending them), and ``/healthz`` answers 200.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.hub.hubkit import window
from tests.hub.servicekit import FleetCommitHold, Hub, T, make_service_hub, scrape, serve
from tests.support.brokers import ProbeClient
from tests.support.waiting import wait_until

from edgefleet.core.protocol import Ack
from edgefleet.core.testing.brokers import MosquittoBroker, free_port
from edgefleet.hub.fleet.settings import fleet_location

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

ACK_WITHIN_S = 8.0


def batch_payload(device: str, records: list[tuple[int, dict[str, Any]]]) -> bytes:
    """A telemetry batch as JSON, built by hand: the numbers need not be sane."""
    return json.dumps(
        {
            "v": 1,
            "device": device,
            "first_seq": records[0][0],
            "last_seq": records[-1][0],
            "records": [{"seq": s, "kind": "window", "body": b} for s, b in records],
        },
        separators=(",", ":"),
    ).encode()


def ordinary(start_s: float, requests: int = 40) -> dict[str, Any]:
    return window("digits", 1, requests=requests, start_s=start_s)


def acked_within(client: ProbeClient, device: str, seq: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            topic, payload, _ = client.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        except Exception:
            continue
        if topic == T.ack(device) and Ack.from_dict(json.loads(payload)).highest_seq >= seq:
            return True
    return False


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def healthz(port: int) -> int:
    return healthz_answer(port)[0]


def healthz_answer(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


@pytest.fixture
def served_hub(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> Iterator[tuple[Hub, int]]:
    metrics_port = free_port()
    hub = make_service_hub(
        tmp_path, mosquitto_factory, extra=f"\n[fleet]\nmetrics_port = {metrics_port}\n"
    )
    text = hub.fx.config_path.read_text().replace("[broker]\n", f"[broker]\nport = {hub.port}\n", 1)
    hub.fx.config_path.write_text(text)
    proc = serve(hub.fx.config_path, tmp_path / "hub-serve.log")
    try:
        wait_until("hub serve up", lambda: scrape(metrics_port) is not None)
        yield hub, metrics_port
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "hub-serve.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        hub.close()


def test_absurd_numbers_are_refused_and_every_other_device_is_still_acked(
    served_hub: tuple[Hub, int],
) -> None:
    hub, port = served_hub
    now = time.time()
    offender, honest = hub.device("pi-a"), hub.device("pi-b")

    huge_requests = ordinary(now - 600)
    huge_requests["requests"] = 2**63
    huge_counts = ordinary(now - 540)
    huge_counts["latency_ms"]["counts"] = [2**70] * len(huge_counts["latency_ms"]["counts"])
    far_future = ordinary(now - 480)
    far_future["start_s"] = 1e300
    far_future["end_s"] = 1e300 + 60
    for seq, body in ((1, huge_requests), (2, huge_counts), (3, far_future)):
        offender.publish(T.telemetry("pi-a"), batch_payload("pi-a", [(seq, body)]))
    # A seq no database column holds: the whole batch is refused, nothing acked.
    offender.publish(T.telemetry("pi-a"), batch_payload("pi-a", [(2**63, ordinary(now - 60))]))

    honest.publish(
        T.telemetry("pi-b"),
        batch_payload("pi-b", [(1, ordinary(now - 120)), (2, ordinary(now - 60))]),
    )
    assert acked_within(honest, "pi-b", 2, ACK_WITHIN_S), "the honest device was not acked"
    # The offender's refused records are acked too: it drops them instead of resending.
    assert acked_within(offender, "pi-a", 3, ACK_WITHIN_S)

    # And the hub keeps storing: a later ordinary batch of either device is acked.
    honest.publish(T.telemetry("pi-b"), batch_payload("pi-b", [(3, ordinary(now - 30))]))
    assert acked_within(honest, "pi-b", 3, ACK_WITHIN_S)
    offender.publish(T.telemetry("pi-a"), batch_payload("pi-a", [(4, ordinary(now - 30))]))
    assert acked_within(offender, "pi-a", 4, ACK_WITHIN_S)

    text = scrape(port)
    assert text is not None
    assert metric(text, 'edgefleet_hub_telemetry_refused_total{reason="number_out_of_range"}') == 3
    assert metric(text, 'edgefleet_hub_telemetry_refused_total{reason="from_the_future"}') == 1
    assert metric(text, 'edgefleet_hub_worker_stalled{worker="fleet-ingest"}') == 0
    assert healthz(port) == 200

    with sqlite3.connect(fleet_location(hub.config.store.path)) as conn:
        rows = conn.execute(
            "SELECT device, seq, kind, requests FROM fleet_records ORDER BY device, seq"
        ).fetchall()
    assert rows == [
        ("pi-a", 1, "refused", 0),
        ("pi-a", 2, "refused", 0),
        ("pi-a", 3, "refused", 0),
        ("pi-a", 4, "window", 40),
        ("pi-b", 1, "window", 40),
        ("pi-b", 2, "window", 40),
        ("pi-b", 3, "window", 40),
    ]


def test_healthz_answers_503_while_the_ingest_worker_is_stuck(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> None:
    metrics_port = free_port()
    hub = make_service_hub(
        tmp_path, mosquitto_factory, extra=f"\n[fleet]\nmetrics_port = {metrics_port}\n"
    )
    try:
        service = hub.start()
        service.fleet.worker.stall_after_s = 0.5
        assert healthz(metrics_port) == 200
        device = hub.device("pi-a")
        lock = FleetCommitHold(service)  # the worker's next commit hangs on it
        try:
            device.publish(
                T.telemetry("pi-a"), batch_payload("pi-a", [(1, ordinary(time.time() - 60))])
            )
            wait_until("/healthz 503", lambda: healthz(metrics_port) == 503)
            text = scrape(metrics_port)
            assert text is not None
            assert metric(text, 'edgefleet_hub_worker_stalled{worker="fleet-ingest"}') == 1
        finally:
            lock.release()
        assert acked_within(device, "pi-a", 1, 20.0)
        wait_until("/healthz 200 again", lambda: healthz(metrics_port) == 200)
    finally:
        hub.close()


def test_healthz_names_a_stuck_inbound_worker(
    tmp_path: Path,
    mosquitto_factory: Callable[..., MosquittoBroker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("edgefleet.hub.service.INBOUND_STALL_S", 0.5)
    metrics_port = free_port()
    hub = make_service_hub(
        tmp_path, mosquitto_factory, extra=f"\n[fleet]\nmetrics_port = {metrics_port}\n"
    )
    try:
        hub.start()
        assert healthz(metrics_port) == 200
        device = hub.device("pi-a")
        lock = sqlite3.connect(hub.config.store.path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the hub store write of the telemetry waits
        try:
            device.publish(
                T.telemetry("pi-a"), batch_payload("pi-a", [(1, ordinary(time.time() - 60))])
            )
            wait_until("/healthz 503", lambda: healthz(metrics_port) == 503)
            # (/metrics also reads the locked hub store: /healthz must not, and names it.)
            assert healthz_answer(metrics_port) == (503, "stalled: hub-inbound\n")
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert acked_within(device, "pi-a", 1, 20.0)
        wait_until("/healthz 200 again", lambda: healthz(metrics_port) == 200)
    finally:
        hub.close()
