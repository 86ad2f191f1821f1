"""Retention of telemetry, stored once in the fleet tables: what the rollout gates read is
held back while a rollout is active, and the retired ``[store] telemetry_retention_s``.

The fleet tests run on both engines; the service test runs the hub over a real mosquitto
with a fake clock, so "a month later" is one ``advance``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.hub.hubkit import TelemetryWriter, window
from tests.hub.servicekit import HUB_PASSWORD, Hub, T, make_service_hub
from tests.support.brokers import ProbeClient

from edgefleet.core.keys import load_private_key
from edgefleet.core.mqtt.client import MqttClient
from edgefleet.core.protocol import Ack, TelemetryBatch, TelemetryRecord, encode_json
from edgefleet.core.protocol.telemetry import WindowSummary
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.core.testing.clock import FakeClock
from edgefleet.hub.commands.serve_cmd import mqtt_settings
from edgefleet.hub.config import HubConfig
from edgefleet.hub.errors import HubConfigError
from edgefleet.hub.rollout import Gates, RolloutPlan, RolloutStatus, parse_phases
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.rollout.evaluation import gate_horizon
from edgefleet.hub.rollout.machine import RolloutState
from edgefleet.hub.service import HubService
from edgefleet.hub.store import HubStore, RolloutRecord, open_store

DAY_S = 86400.0
RAW_RETENTION_S = 2 * DAY_S  # FleetSettings' default

# Windows carry their seq in ``start_s`` modulo this (sent ones start near the hub's clock).
TAG = 100_000


def seqs_of(store: HubStore, device: str) -> list[int]:
    windows = store.telemetry_windows("digits", [1], [device], 0.0)
    return [int(w.totals.start_s or 0) % TAG for w in windows]


def rollout(rollout_id: str, created_at: float, lookback_s: float) -> RolloutRecord:
    plan = RolloutPlan.build(
        rollout_id,
        "digits",
        2,
        "all",
        ["a"],
        parse_phases("100%"),
        Gates(baseline_lookback_s=lookback_s),
    )
    return RolloutRecord(plan, RolloutStatus(), created_at)


def test_the_gate_horizon_is_the_oldest_receipt_an_active_rollout_reads() -> None:
    assert gate_horizon([]) is None
    recent = rollout("r2", 99 * DAY_S, DAY_S)  # reads from day 98
    assert gate_horizon([recent]) == 98 * DAY_S
    old = rollout("r1", 90 * DAY_S, 2 * DAY_S)  # created on day 90, reads from day 88
    assert gate_horizon([recent, old]) == 88 * DAY_S


def test_fleet_retention_keeps_what_is_held_and_prunes_the_rest(
    store_location: Path | str,
) -> None:
    store = open_store(store_location)
    writer = TelemetryWriter(store_location)
    now = 100 * DAY_S
    try:
        for device, at in (("pi-1", 90 * DAY_S), ("pi-2", 95 * DAY_S)):
            base = at - at % TAG
            bodies = [(s, window("digits", 1, requests=10, start_s=base + s)) for s in (1, 2, 3)]
            assert writer.windows(device, bodies, at).stored == 3
        # Both are past the raw retention; a rollout reading from day 94 holds pi-2's.
        writer.fleet.maintain(now, keep_since=94 * DAY_S)
        assert seqs_of(store, "pi-1") == []
        assert seqs_of(store, "pi-2") == [1, 2, 3]
        writer.fleet.maintain(now, keep_since=None)  # the rollout finished
        assert seqs_of(store, "pi-2") == []
        # A late retransmission of a pruned window is acked, not stored again.
        again = writer.windows("pi-2", [(2, window("digits", 1, requests=10, start_s=now))], now)
        assert (again.stored, again.highest_contiguous_seq) == (0, 3)
        assert seqs_of(store, "pi-2") == []
    finally:
        writer.close()
        store.close()


def test_the_retired_store_retention_becomes_the_fleet_retention(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "edgefleet.hub"):
        config = HubConfig.from_mapping(
            {"store": {"telemetry_retention_s": 7 * DAY_S}}, base_dir=tmp_path
        )
    assert config.fleet.settings.raw_retention_s == 7 * DAY_S
    assert "is now [fleet] raw_retention_s" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "edgefleet.hub"):
        config = HubConfig.from_mapping(
            {"store": {"telemetry_retention_s": 7 * DAY_S}, "fleet": {"raw_retention_s": DAY_S}},
            base_dir=tmp_path,
        )
    assert config.fleet.settings.raw_retention_s == DAY_S
    assert "is no longer used" in caplog.text
    assert "telemetry_retention_s" not in config.to_toml()
    with pytest.raises(HubConfigError, match="raw_retention_s"):
        HubConfig.from_mapping({"store": {"telemetry_retention_s": "7d"}}, base_dir=tmp_path)


# -- the hub service ----------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]) -> Iterator[Hub]:
    h = make_service_hub(tmp_path, mosquitto_factory)
    yield h
    h.close()


def start_with_clock(hub: Hub, clock: FakeClock) -> HubService:
    client = MqttClient(mqtt_settings(hub.config, HUB_PASSWORD))
    hub.service = HubService(
        hub.config, hub.store, client, load_private_key(hub.fx.hub_key), clock=clock
    )
    hub.service.start()
    assert hub.service.wait_ready(20.0)
    return hub.service


def send(device: ProbeClient, device_id: str, seqs: range, now: float) -> int:
    """Windows tagged with their seq, recent for the hub at ``now`` (the hub refuses
    windows older than its raw retention)."""
    base = now - now % TAG
    records = [
        TelemetryRecord.of_window(
            s, WindowSummary.from_dict(window("digits", 1, requests=10, start_s=base + s))
        )
        for s in seqs
    ]
    device.publish(T.telemetry(device_id), encode_json(TelemetryBatch.of(device_id, records)))
    [*_, (_t, payload)] = device.wait_for(lambda t, p: t == T.ack(device_id))
    return Ack.from_dict(json.loads(payload)).highest_seq


def wait_until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    until = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > until:
            pytest.fail("the fleet maintenance never got there")
        time.sleep(0.1)


@pytest.mark.mqtt
def test_an_active_rollout_holds_the_telemetry_its_gates_read(hub: Hub) -> None:
    clock = FakeClock(time.time())
    hub.publish_bundle(1)
    service = start_with_clock(hub, clock)
    # pi-b's windows arrive before anything a rollout will read, pi-a's inside the
    # rollout's baseline lookback (one day).
    assert send(hub.device("pi-b"), "pi-b", range(1, 3), clock()) == 2
    clock.advance(2 * DAY_S)
    assert send(hub.device("pi-a"), "pi-a", range(1, 3), clock()) == 2
    rollout = RolloutEngine(hub.store).create(
        "digits", 1, "all", clock(), phases_text="1,100%", gate_overrides=["bake=0"]
    )
    service.tick()
    state = hub.store.get_rollout(rollout.rollout_id).status.state  # type: ignore[union-attr]
    assert state is RolloutState.RUNNING
    assert service.fleet.retention_hold() == clock() - DAY_S

    clock.advance(30 * DAY_S)  # stuck for a month, far beyond the raw retention
    wait_until(lambda: seqs_of(hub.store, "pi-b") == [])  # the maintenance ran
    assert seqs_of(hub.store, "pi-a") == [1, 2]  # held for the gates

    RolloutEngine(hub.store).abort(rollout.rollout_id, clock())
    assert service.fleet.retention_hold() is None
    clock.advance(60)
    wait_until(lambda: seqs_of(hub.store, "pi-a") == [])
