"""``hub store migrate --to postgresql://...`` with a real SQLite file and the session's
PostgreSQL server: everything copied, the copy usable, refusals leave no half-copy."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from tests.hub.hubkit import HubFixture, make_hub, window

from edgefleet.core.cli.main import main
from edgefleet.core.protocol import TelemetryRecord
from edgefleet.core.testing.postgres import PostgresServer
from edgefleet.hub.fleet.database import open_fleet_database
from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry
from edgefleet.hub.rollout import Gates, RolloutPlan, RolloutStatus, parse_phases
from edgefleet.hub.rollout.machine import RolloutState
from edgefleet.hub.store import (
    BundleRecord,
    DesiredAssignment,
    DeviceRecord,
    DirectiveRecord,
    HubStore,
    RolloutDeviceRecord,
    RolloutRecord,
    open_store,
)
from edgefleet.hub.store.serve_lock import ServeLock
from edgefleet.hub.store.sql_blobs import BLOB_PART_BYTES

pytestmark = pytest.mark.postgres
SHA = "ef" * 32


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def fill(store: HubStore) -> None:
    """A small fleet touching every table."""
    for i in range(3):
        store.add_device(DeviceRecord(f"pi-{i}", "rpi4-arm64", "$7$1$a$b", 1.0, group="lab"))
    store.set_presence("pi-1", True, 5.0)
    store.set_device_state("pi-1", {"models": [], "directive_seq": 2}, 6.0)
    store.set_assignment("pi-0", "digits", DesiredAssignment("digits", SHA, 2, 100, "r1"), 7.0)
    store.record_directive(DirectiveRecord("pi-0", 1, 1.0, 99.0, 1, {"directive": {"seq": 1}}))
    store.mark_directive_published("pi-0", 1, 2.0)
    store.add_bundle(BundleRecord(SHA, "digits", 2, "rpi4-arm64", 100, "ef/x.efb", {}, ("k",), 1.0))
    data = bytes(range(256)) * (BLOB_PART_BYTES // 128 + 1)  # three parts
    blob = BundleRecord(
        hashlib.sha256(data).hexdigest(), "digits", 3, None, len(data), "x", {}, ("k",), 2.0
    )
    store.add_bundle_with_bytes(blob, io.BytesIO(data))
    plan = RolloutPlan.build(
        "r1", "digits", 2, "all", ["pi-0", "pi-1"], parse_phases("50%,100%"), Gates()
    )
    rows = [RolloutDeviceRecord("r1", d, plan.phase_of(d), SHA, 100) for d in plan.devices]
    store.create_rollout(RolloutRecord(plan, RolloutStatus(), 1.0), rows)
    store.update_rollout_status("r1", RolloutStatus(RolloutState.RUNNING, 0, 2.0, 2.0, "go"))
    for event in ("create", "start"):
        store.add_rollout_event("r1", 2.0, event, "")
    store.bump_counter("malformed", 4)


def snapshot(store: HubStore) -> dict[str, Any]:
    return {
        "devices": store.list_devices(),
        "assignments": store.get_assignments("pi-0"),
        "directives": store.latest_directives(),
        "bundles": store.list_bundles(),
        "rollouts": store.list_rollouts(),
        "rollout_devices": store.list_rollout_devices("r1"),
        "events": store.rollout_events("r1"),
        "windows": [
            (w.device_id, w.version, w.received_at, w.totals.to_dict())
            for w in store.telemetry_windows("digits", [2], None, 0.0)
        ],
        "counters": store.counters(),
        "bundle_bytes": {
            b.sha256: b"".join(store.bundle_parts(b.sha256))
            for b in store.list_bundles()
            if b.sha256 not in store.bundles_without_bytes()
        },
    }


FLEET_RECORDS = [TelemetryRecord(s, "event", {"model": "digits", "state": "x"}) for s in (1, 2, 3)]
# The windows the rollout gates read: in the fleet tables too (telemetry is stored once).
WINDOWS = [TelemetryRecord(s, "window", window("digits", 2, requests=9)) for s in range(4, 54)]


@pytest.fixture
def hub(tmp_path: Path) -> HubFixture:
    hub = make_hub(tmp_path)
    store = open_store(hub.config().store.path)
    fill(store)
    store.close()
    fleet = FleetTelemetry(hub.config().store.path)  # the fleet tables, in the same file
    fleet.ingest(DeviceInfo("pi-0", "lab"), FLEET_RECORDS + WINDOWS, 100.0)
    fleet.ingest(DeviceInfo("pi-1", "lab"), WINDOWS[:5], 300.0)
    fleet.close()
    return hub


def test_migrate_copies_the_whole_store_and_the_copy_carries_on(
    hub: HubFixture, postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres_server.dsn(postgres_server.create_database())
    code, out, err = run(
        capsys, "hub", "store", "migrate", "--to", url, "--config", str(hub.config_path), "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["rows"]["devices"] == 3 and report["rows"]["rollout_events"] == 2
    assert "telemetry" not in report["rows"]  # kept once, in the fleet tables
    assert report["rows"]["bundle_blobs"] == 3
    # SHA's record predates bundle bytes and this host has no file for it.
    assert report["bundle_bytes_stored"] == 0 and report["bundles_without_bytes"] == [SHA]
    assert report["rows"]["fleet_records"] == 3 + 50 + 5 and report["rows"]["fleet_cursor"] == 2

    source, target = open_store(hub.config().store.path), open_store(url)
    try:
        assert snapshot(target) == snapshot(source)
        assert len(snapshot(target)["windows"]) == 55
        # The copy is a working store: identities and seqs carried over.
        target.add_rollout_event("r1", 3.0, "advance", "")
        assert [e.event for e in target.rollout_events("r1")] == ["create", "start", "advance"]
        with pytest.raises(Exception, match="not above"):
            target.record_directive(DirectiveRecord("pi-0", 1, 1.0, 99.0, 1, {}))
    finally:
        source.close()
        target.close()
    # The fleet tables came along: dedupe, the ack cursor and the row ids carry on.
    fleet = FleetTelemetry(url)
    try:
        again = fleet.ingest(DeviceInfo("pi-0", "lab"), FLEET_RECORDS, 400.0)
        assert (again.stored, again.duplicates, again.highest_contiguous_seq) == (0, 3, 53)
        more = [TelemetryRecord(54, "event", {"model": "digits", "state": "x"})]
        assert fleet.ingest(DeviceInfo("pi-0", "lab"), more, 400.0).stored == 1
        assert fleet.store.max_rid() == 3 + 50 + 5 + 1
    finally:
        fleet.close()


def test_migrate_refuses_a_target_that_holds_a_store_and_changes_nothing(
    hub: HubFixture, postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres_server.dsn(postgres_server.create_database())
    existing = open_store(url)
    existing.add_device(DeviceRecord("other", "rpi5", "$7$1$a$b", 1.0))
    existing.close()
    code, out, err = run(
        capsys, "hub", "store", "migrate", "--to", url, "--config", str(hub.config_path)
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "already holds a hub store (1 rows in devices)" in err
    target = open_store(url)
    try:
        assert [d.device_id for d in target.list_devices()] == ["other"]
    finally:
        target.close()


def test_a_copy_failing_half_way_leaves_the_target_empty(
    hub: HubFixture, postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    url = postgres_server.dsn(postgres_server.create_database())
    open_store(url).close()
    open_fleet_database(url).close()
    with psycopg.connect(url) as conn:  # the server refuses telemetry, after devices went in
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'disk says no'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON fleet_records FOR EACH ROW"
            " EXECUTE FUNCTION refuse()"
        )
    code, _out, err = run(
        capsys, "hub", "store", "migrate", "--to", url, "--config", str(hub.config_path)
    )
    assert code == 1 and "disk says no" in err and err.count("\n") == 1
    target = open_store(url)
    try:
        assert target.list_devices() == [] and target.list_rollouts() == []
    finally:
        target.close()


def test_migrate_refuses_while_hub_serve_holds_the_store(
    hub: HubFixture, postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres_server.dsn(postgres_server.create_database())
    with ServeLock(hub.config().store.path):
        code, _out, err = run(
            capsys, "hub", "store", "migrate", "--to", url, "--config", str(hub.config_path)
        )
    assert code == 1 and "in use by hub serve" in err
    code, _out, err = run(
        capsys,
        "hub",
        "store",
        "migrate",
        "--to",
        "mysql://x@y/z",
        "--config",
        str(hub.config_path),
    )
    assert code == 2 and "postgresql://" in err
