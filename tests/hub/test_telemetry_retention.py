"""Retention of the hub store's telemetry: bounded deletes, dedupe after pruning, the tick.

The store tests run on a real SQLite file; faults are injected with a trigger written by a
second connection (as another process would). The service tests run the hub over a real
mosquitto with a fake clock, so "eight days later" is one ``advance``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.hub.hubkit import window
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
from edgefleet.hub.errors import HubConfigError, HubStoreError
from edgefleet.hub.rollout import Gates, RolloutPlan, RolloutStatus, parse_phases
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.rollout.machine import RolloutState
from edgefleet.hub.service import HubService
from edgefleet.hub.store import HubStore, RolloutRecord, SqliteHubStore, TelemetryRow, open_store
from edgefleet.hub.telemetry_retention import RETENTION_INTERVAL_S, retention_cutoff

DAY_S = 86400.0


# Windows carry their seq in ``start_s`` modulo this (sent ones start near the hub's clock).
TAG = 100_000


def seqs_of(store: HubStore, device: str) -> list[int]:
    windows = store.telemetry_windows("digits", [1], [device], 0.0)
    return [int(w.body["start_s"]) % TAG for w in windows]


def tagged_rows(seqs: range) -> list[TelemetryRow]:
    """Windows whose ``start_s`` is their seq, so a query shows which records are kept."""
    return [
        TelemetryRow(s, "window", window("digits", 1, requests=10, start_s=float(s))) for s in seqs
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteHubStore]:
    s = SqliteHubStore(tmp_path / "hub.db")
    yield s
    s.close()


def test_prune_deletes_only_older_records_in_batches_and_counts_them(
    any_store: HubStore,
) -> None:
    store = any_store  # SQLite and PostgreSQL
    store.add_telemetry("pi-1", tagged_rows(range(1, 6)), 100.0)
    store.add_telemetry("pi-2", tagged_rows(range(1, 4)), 150.0)
    store.add_telemetry("pi-1", tagged_rows(range(6, 9)), 200.0)

    assert store.prune_telemetry(150.0, batch_size=2, max_rows=3) == 3  # stops at max_rows
    assert seqs_of(store, "pi-1") == [4, 5, 6, 7, 8]
    assert store.prune_telemetry(150.0, batch_size=2) == 2  # the rest of what is older
    assert store.prune_telemetry(150.0, batch_size=2) == 0
    assert seqs_of(store, "pi-1") == [6, 7, 8]
    assert seqs_of(store, "pi-2") == [1, 2, 3]  # received exactly at the cutoff: kept
    with pytest.raises(ValueError, match="batch_size"):
        store.prune_telemetry(150.0, batch_size=0)


def test_a_pruned_record_sent_again_is_not_stored_again(store_location: Path | str) -> None:
    store = open_store(store_location)
    store.add_telemetry("pi-1", tagged_rows(range(1, 4)), 100.0)
    store.add_telemetry("pi-1", tagged_rows(range(4, 6)), 300.0)
    assert seqs_of(store, "pi-1") == [1, 2, 3, 4, 5]
    assert store.prune_telemetry(200.0) == 3
    store.close()

    store = open_store(store_location)  # the mark survives a restart
    try:
        # A late retransmission of 1..3 (the ack never reached the device, say).
        assert store.add_telemetry("pi-1", tagged_rows(range(1, 4)), 400.0) == 0
        # Mixed with kept and new records: only the new one is stored.
        assert store.add_telemetry("pi-1", tagged_rows(range(2, 7)), 400.0) == 1
        assert seqs_of(store, "pi-1") == [4, 5, 6]
        # Another device's seqs are its own.
        assert store.add_telemetry("pi-2", tagged_rows(range(1, 4)), 400.0) == 3
    finally:
        store.close()


def test_each_batch_commits_on_its_own_with_its_dedupe_mark(
    store: SqliteHubStore, tmp_path: Path
) -> None:
    for seq in range(1, 7):
        store.add_telemetry("pi-1", tagged_rows(range(seq, seq + 1)), float(seq))
    other = sqlite3.connect(tmp_path / "hub.db")
    other.execute(
        "CREATE TRIGGER refuse_five BEFORE DELETE ON telemetry WHEN old.seq = 5"
        " BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
    )
    other.commit()

    with pytest.raises(HubStoreError, match="disk says no"):
        store.prune_telemetry(100.0, batch_size=2)
    # Batches {1,2} and {3,4} committed; {5,6} rolled back as a whole, mark included.
    assert seqs_of(store, "pi-1") == [5, 6]
    assert store.add_telemetry("pi-1", tagged_rows(range(4, 5)), 50.0) == 0
    other.execute("DROP TRIGGER refuse_five")
    other.commit()
    other.close()
    assert store.prune_telemetry(100.0, batch_size=2) == 2
    assert store.add_telemetry("pi-1", tagged_rows(range(5, 8)), 200.0) == 1  # only 7


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


def test_retention_cutoff_keeps_what_active_rollouts_read() -> None:
    now = 100 * DAY_S
    assert retention_cutoff(now, 7 * DAY_S, []) == 93 * DAY_S
    recent = rollout("r2", 99 * DAY_S, DAY_S)  # reads from day 98: the retention is older
    assert retention_cutoff(now, 7 * DAY_S, [recent]) == 93 * DAY_S
    old = rollout("r1", 90 * DAY_S, 2 * DAY_S)  # created on day 90, reads from day 88
    assert retention_cutoff(now, 7 * DAY_S, [recent, old]) == 88 * DAY_S


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (3600, "telemetry_retention_s must be at least 86400"),
        ("7d", "store.telemetry_retention_s: expected a number"),
    ],
)
def test_retention_setting_is_checked(tmp_path: Path, value: object, message: str) -> None:
    with pytest.raises(HubConfigError, match=message):
        HubConfig.from_mapping({"store": {"telemetry_retention_s": value}}, base_dir=tmp_path)
    config = HubConfig.from_mapping({}, base_dir=tmp_path)
    assert config.store.telemetry_retention_s == 7 * DAY_S
    assert "telemetry_retention_s = 604800.0" in config.to_toml()


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
    """Windows of ``seqs`` tagged as ``tagged_rows`` tags them, recent for the hub at ``now``
    (the hub refuses windows older than its raw retention)."""
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


@pytest.mark.mqtt
def test_tick_prunes_and_a_late_retransmission_is_acked_not_stored(hub: Hub) -> None:
    clock = FakeClock(time.time())
    service = start_with_clock(hub, clock)
    device = hub.device("pi-a")
    assert send(device, "pi-a", range(1, 4), clock()) == 3

    clock.advance(8 * DAY_S)
    service.tick()
    assert seqs_of(hub.store, "pi-a") == []
    assert service.counters["telemetry.pruned"] == 3
    assert hub.store.counters()["telemetry.pruned"] == 3  # saved by the same tick

    # The device never saw the ack and sends the batch again eight days later.
    assert send(device, "pi-a", range(1, 4), clock()) == 3
    assert send(device, "pi-a", range(4, 6), clock()) == 5
    assert seqs_of(hub.store, "pi-a") == [4, 5]


@pytest.mark.mqtt
def test_retention_runs_every_few_minutes_and_never_raises(hub: Hub, tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    service = start_with_clock(hub, clock)
    service.tick()  # the first round: nothing old yet
    hub.store.add_telemetry("pi-b", tagged_rows(range(1, 3)), clock() - 8 * DAY_S)
    clock.advance(60)
    service.tick()
    assert seqs_of(hub.store, "pi-b") == [1, 2]  # not due yet
    clock.advance(RETENTION_INTERVAL_S)
    service.tick()
    assert seqs_of(hub.store, "pi-b") == []

    hub.store.add_telemetry("pi-c", tagged_rows(range(1, 3)), clock() - 8 * DAY_S)
    other = sqlite3.connect(hub.config.store.path)
    other.execute(
        "CREATE TRIGGER refuse BEFORE DELETE ON telemetry"
        " BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
    )
    other.commit()
    other.close()
    clock.advance(RETENTION_INTERVAL_S)
    service.tick()  # does not raise
    assert service.counters["failed.telemetry_retention"] == 1
    assert seqs_of(hub.store, "pi-c") == [1, 2]


@pytest.mark.mqtt
def test_an_active_rollout_holds_the_telemetry_its_gates_read(hub: Hub) -> None:
    clock = FakeClock(time.time())
    hub.publish_bundle(1)
    service = start_with_clock(hub, clock)
    # Baseline evidence from half a day before the rollout (its lookback is one day).
    hub.store.add_telemetry("pi-a", tagged_rows(range(1, 3)), clock() - DAY_S / 2)
    rollout = RolloutEngine(hub.store).create(
        "digits", 1, "all", clock(), phases_text="1,100%", gate_overrides=["bake=0"]
    )
    service.tick()
    assert hub.store.get_rollout(rollout.rollout_id).status.state is RolloutState.RUNNING  # type: ignore[union-attr]

    clock.advance(30 * DAY_S)  # stuck for a month, far beyond the 7-day retention
    service.tick()
    assert seqs_of(hub.store, "pi-a") == [1, 2]

    RolloutEngine(hub.store).abort(rollout.rollout_id, clock())
    clock.advance(RETENTION_INTERVAL_S)
    service.tick()
    assert seqs_of(hub.store, "pi-a") == []
