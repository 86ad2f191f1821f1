"""The fleet tables shared by several hubs (PostgreSQL), and absorbed into the hub store's
file (SQLite).

PostgreSQL: two ``FleetTelemetry`` objects on one database stand for two hub processes.
Both store the same batches at once from two threads (each device's records reach both
hubs, as after a shared-subscription redelivery): every (device, seq) is stored once,
the rollups hold each window once, and one alert monitor — the lease holder's — sees the
windows either hub received.

SQLite: an older hub's pair of files (``hub.db`` + ``hub.fleet.db``) becomes one file on
first open, the old fleet file renamed aside.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from tests.hub.fleet.fleetkit import MODEL, N_FEATURES, SimDevice, fleet, reference

from edgefleet.core.protocol import TelemetryRecord
from edgefleet.hub.errors import HubStoreError
from edgefleet.hub.fleet.alert_sinks import AlertEvent
from edgefleet.hub.fleet.alerts import AlertPolicy
from edgefleet.hub.fleet.fleet_file import ABSORBED_SUFFIX
from edgefleet.hub.fleet.ingest import FleetTelemetry
from edgefleet.hub.fleet.monitor import FleetMonitor
from edgefleet.hub.fleet.references import References
from edgefleet.hub.fleet.sqlite_db import SqliteFleetDatabase
from edgefleet.hub.store import open_store

T0 = float(1_700_000_000 // 3600 * 3600)
PERIOD_S = 900.0


class Recorder:
    def __init__(self) -> None:
        self.events: list[AlertEvent] = []

    def send(self, event: AlertEvent) -> None:
        self.events.append(event)


def _stored_pairs(telemetry: FleetTelemetry) -> list[tuple[str, int]]:
    with telemetry.db.read() as conn:
        rows = conn.execute("SELECT device, seq FROM fleet_records").fetchall()
    return [(str(d), int(s)) for d, s in rows]


@pytest.mark.postgres
def test_two_hubs_on_postgresql_store_each_window_once_and_one_monitor_sees_both(
    postgres_server: object,
) -> None:
    server = postgres_server
    name = server.create_database()  # type: ignore[attr-defined]
    url = str(server.dsn(name))  # type: ignore[attr-defined]
    rng = np.random.default_rng(31)
    profile = reference(rng)
    hub_a, hub_b = FleetTelemetry(url), FleetTelemetry(url)
    recorder = Recorder()
    monitor = FleetMonitor(  # hub a holds the lease: its monitor is the only one
        hub_a,
        References(lambda m, v: profile, cache=hub_a.store),
        AlertPolicy(k_fire=1, k_resolve=1),
        sinks=[recorder],
    )
    devices = fleet(["north", "east"], 4)
    failures: list[BaseException] = []

    def deliver(hub: FleetTelemetry, who: list[SimDevice], now: float) -> None:
        try:
            for dev in who:
                hub.ingest(dev.info, dev.unacked, now)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failures.append(e)

    try:
        for period in range(4):
            start = T0 + period * PERIOD_S
            now = start + PERIOD_S + 5
            for dev in devices:
                X = rng.normal(size=(60, N_FEATURES))
                if dev.info.group == "east":
                    X[:, :5] += 1.5  # only the east devices drift
                dev.record(profile, X, start, start + PERIOD_S)
            # Every batch reaches both hubs at once; east's only ever through hub b.
            threads = [
                threading.Thread(target=deliver, args=(hub_a, devices[:4], now)),
                threading.Thread(target=deliver, args=(hub_b, devices, now)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not failures, failures
            for dev in devices:
                dev.ack(hub_b.store.cursor(dev.info.id))
            monitor.run_once(now)

        pairs = _stored_pairs(hub_a)
        assert len(pairs) == len(set(pairs)) == 4 * len(devices)  # each (device, seq) once
        assert all(dev.unacked == [] for dev in devices)  # both hubs' cursors agree
        counts = hub_b.store.count_windows()
        assert counts["in_rollups"] == counts["in_group_rollups"] == 4 * len(devices)
        # The monitor in hub a read every window, hub b's included, and alerted on the
        # group only hub b received.
        assert monitor.alerts.cursor(MODEL, 1) == hub_b.store.max_rid()
        fired = {(e.alert.scope_kind, e.alert.scope) for e in recorder.events}
        assert ("group", "east") in fired and ("group", "north") not in fired
        # Statistics blobs are stored uncompressed (compressing them cost more than it saved).
        with hub_a.db.read() as conn:
            storage = conn.execute(
                "SELECT attstorage FROM pg_attribute WHERE attrelid = 'fleet_records'::regclass"
                " AND attname = 'drift'"
            ).fetchone()
        assert storage == ("e",)
    finally:
        hub_a.close()
        hub_b.close()
        server.drop_database(name)  # type: ignore[attr-defined]


def _old_layout(
    tmp_path: Path, devices: list[SimDevice], rng: np.random.Generator
) -> tuple[Path, list[TelemetryRecord]]:
    """A hub store and, beside it, the separate fleet file an older hub wrote (the fleet
    tables alone in a file); the records of the first device."""
    profile = reference(rng, 2000)
    store_path = tmp_path / "hub.db"
    open_store(store_path).close()
    telemetry = FleetTelemetry(tmp_path / "hub.fleet.db")  # no "hub.fleet.fleet.db" beside
    sent: list[TelemetryRecord] = []
    for dev in devices:
        for k in range(3):
            dev.record(profile, rng.normal(size=(20, N_FEATURES)), T0 + k * 60, T0 + k * 60 + 60)
        sent = sent or list(dev.unacked)
        dev.ack(telemetry.ingest(dev.info, dev.unacked, T0 + 300).highest_contiguous_seq)
    telemetry.close()
    return store_path, sent


def test_an_older_hubs_separate_fleet_file_is_absorbed_into_the_store_file(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(32)
    devices = fleet(["a"], 2)
    store_path, sent = _old_layout(tmp_path, devices, rng)

    telemetry = FleetTelemetry(store_path)
    try:
        assert not (tmp_path / "hub.fleet.db").exists()
        assert (tmp_path / f"hub.fleet.db{ABSORBED_SUFFIX}").is_file()
        assert sorted(_stored_pairs(telemetry)) == [
            (d.info.id, s) for d in devices for s in (1, 2, 3)
        ]
        assert telemetry.store.count_windows()["in_rollups"] == 6
        # Cursors and dedupe came along: a resend is a duplicate, acked as before.
        again = telemetry.ingest(devices[0].info, sent, T0 + 400)
        assert (again.stored, again.duplicates, again.highest_contiguous_seq) == (0, 3, 3)
    finally:
        telemetry.close()
    # The hub store still opens, and the fleet tables are in its file now.
    open_store(store_path).close()
    reopened = FleetTelemetry(store_path)
    try:
        assert len(_stored_pairs(reopened)) == 6  # not absorbed twice
    finally:
        reopened.close()


def test_a_store_file_with_fleet_data_of_its_own_is_never_merged_into(tmp_path: Path) -> None:
    rng = np.random.default_rng(33)
    store_path, _ = _old_layout(tmp_path, fleet(["a"], 1), rng)
    (tmp_path / "hub.fleet.db").rename(tmp_path / "aside.db")
    FleetTelemetry(store_path).close()  # fleet tables in the store file...
    (tmp_path / "aside.db").rename(tmp_path / "hub.fleet.db")
    db = SqliteFleetDatabase(store_path)
    with db.write() as conn:  # ...holding data of their own
        conn.execute("INSERT INTO fleet_cursor VALUES ('x', 1, -1)")
    db.close()
    with pytest.raises(HubStoreError, match="already holds fleet data"):
        FleetTelemetry(store_path)
    assert (tmp_path / "hub.fleet.db").is_file()  # left where it was
