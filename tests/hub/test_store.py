"""The hub store on both engines: rows, dedupe, seq order, transactions, reopening,
another process writing, schema versions.

Every test taking ``any_store`` or ``store_location`` runs on SQLite and on PostgreSQL
(see tests/hub/conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.hub.hubkit import TelemetryWriter, window

from edgefleet.hub.errors import HubStoreError
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
    SqliteHubStore,
    open_store,
)
from edgefleet.hub.store.schema import SCHEMA_VERSION

SHA = "ab" * 32


def device(device_id: str = "pi-1", **kw: object) -> DeviceRecord:
    return DeviceRecord(device_id, "rpi4-arm64", "$7$1000$x$y", 1.0, **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(any_store: HubStore) -> HubStore:
    return any_store


def test_devices_round_trip_and_presence(store: HubStore) -> None:
    store.add_device(device(group="lab", tags={"site": "x"}))
    with pytest.raises(HubStoreError, match="already enrolled"):
        store.add_device(device())
    store.set_presence("pi-1", True, 50.0)
    store.set_device_state("pi-1", {"models": [], "directive_seq": 3}, 60.0)
    store.set_presence("pi-1", False, 55.0)  # a late LWT does not move last_seen back
    got = store.get_device("pi-1")
    assert got is not None
    assert (got.group, dict(got.tags), got.online, got.last_seen) == (
        "lab",
        {"site": "x"},
        False,
        60.0,
    )
    assert got.state["directive_seq"] == 3
    assert "password_hash" not in got.to_dict()


def test_assignments_bump_the_desired_revision(store: HubStore) -> None:
    store.add_device(device())
    a = DesiredAssignment("digits", SHA, 2, 100, "r1")
    store.set_assignment("pi-1", "digits", a, 5.0)
    store.set_assignment("pi-1", "digits", a, 6.0)
    assert store.get_assignments("pi-1") == {"digits": a}
    assert store.get_device("pi-1").desired_rev == 2  # type: ignore[union-attr]
    store.set_assignment("pi-1", "digits", None, 7.0)
    assert store.get_assignments("pi-1") == {}
    with pytest.raises(HubStoreError):
        store.set_assignment("ghost", "digits", a, 8.0)


def test_all_assignments_matches_each_devices_own(store: HubStore) -> None:
    for d in ("a", "b", "c"):
        store.add_device(device(d))
    store.set_assignment("a", "digits", DesiredAssignment("digits", SHA, 2, 100, "r1"), 5.0)
    store.set_assignment("a", "iris", DesiredAssignment("iris", SHA, 1, 10, "r2"), 5.0)
    store.set_assignment("c", "digits", DesiredAssignment("digits", SHA, 3, 100, "r3"), 5.0)
    every = store.all_assignments()
    assert every == {d: store.get_assignments(d) for d in ("a", "c")}
    assert "b" not in every and sorted(every["a"]) == ["digits", "iris"]


def test_directive_seq_strictly_increases(store: HubStore) -> None:
    store.add_device(device())
    rec = DirectiveRecord("pi-1", 5, 1.0, 2.0, 1, {"directive": {}, "signatures": []})
    store.record_directive(rec)
    for seq in (5, 4):
        with pytest.raises(HubStoreError, match="not above"):
            store.record_directive(DirectiveRecord("pi-1", seq, 1.0, 2.0, 1, {}))
    store.mark_directive_published("pi-1", 5, 3.0)
    latest = store.latest_directive("pi-1")
    assert latest is not None and latest.seq == 5 and latest.published_at == 3.0


def test_gates_read_the_windows_the_fleet_ingest_stored_once(store: HubStore) -> None:
    assert list(store.telemetry_windows("digits", [2], None, 0.0)) == []  # no fleet tables yet
    writer = TelemetryWriter(store)
    try:
        bodies = [(i, window("digits", 2, requests=10)) for i in (1, 2, 3)]
        assert writer.windows("pi-1", bodies, 10.0).stored == 3
        assert writer.windows("pi-1", bodies[1:], 11.0).stored == 0  # redelivery
        assert writer.windows("pi-2", bodies, 11.0).stored == 3  # same seqs, another device
        # A batch overlapping what is stored: only the record not seen before goes in.
        more = [(i, window("digits", 2, requests=7, errors=1)) for i in (3, 4)]
        assert writer.windows("pi-1", more, 12.0).stored == 1
    finally:
        writer.close()
    windows = list(store.telemetry_windows("digits", [2], ["pi-1"], 0.0))
    assert len(windows) == 4 and all(w.device_id == "pi-1" for w in windows)
    assert [w.totals.requests for w in windows] == [10, 10, 10, 7]
    assert [w.totals.error_count for w in windows] == [0, 0, 0, 1]
    assert [w.received_at for w in windows] == [10.0, 10.0, 10.0, 12.0]
    assert list(store.telemetry_windows("digits", [1], None, 0.0)) == []
    assert len(list(store.telemetry_windows("digits", [2], None, 10.5))) == 4  # 11.0 and 12.0


def test_failed_transaction_leaves_nothing(store: HubStore) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.add_device(device("pi-1"))
        store.bump_counter("x")
        raise RuntimeError("boom")
    assert store.get_device("pi-1") is None
    assert store.counters() == {}


def test_rollouts_survive_reopening(store_location: Path | str) -> None:
    store = open_store(store_location)
    for d in ("a", "b"):
        store.add_device(device(d))
    plan = RolloutPlan.build("r1", "digits", 2, "all", ["a", "b"], parse_phases("1,100%"), Gates())
    rows = [RolloutDeviceRecord("r1", d, plan.phase_of(d), SHA, 10) for d in plan.devices]
    store.create_rollout(RolloutRecord(plan, RolloutStatus(), 1.0), rows)
    running = RolloutStatus(RolloutState.RUNNING, 0, 2.0, 2.0, "started")
    store.update_rollout_status("r1", running)
    store.add_rollout_event("r1", 2.0, "start", "phase 1")
    store.close()
    again = open_store(store_location)
    got = again.get_rollout("r1")
    assert got is not None and got.plan == plan and got.status == running
    assert [r.device_id for r in again.list_rollout_devices("r1")] == list(plan.devices)
    assert [e.event for e in again.rollout_events("r1")] == ["start"]
    again.close()


def test_bundles_are_idempotent(store: HubStore) -> None:
    b = BundleRecord(SHA, "digits", 2, "rpi5", 10, "ab/x.efb", {"k": 1}, ("kid",), 1.0)
    assert store.add_bundle(b) is True
    assert store.add_bundle(b) is False
    assert store.find_bundles("digits", 2) == [b]
    assert store.list_bundles() == [b]


@pytest.mark.subprocess
def test_another_process_writes_while_we_hold_the_store(store_location: Path | str) -> None:
    store = open_store(store_location)
    store.add_device(device("a"))
    code = (
        "import sys\n"
        "from edgefleet.hub.store import open_store\n"
        "s = open_store(sys.argv[1])\n"
        "s.bump_counter('from_cli', 2)\n"
        "print(len(s.list_devices()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(store_location)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
    assert store.counters() == {"from_cli": 2}
    store.close()


def set_schema(location: Path | str, version: int) -> None:
    """Write ``meta.schema`` behind the store's back, as another edgefleet version would."""
    if isinstance(location, Path):
        import sqlite3

        db = sqlite3.connect(location)
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(version),))
        db.commit()
        db.close()
    else:
        import psycopg

        with psycopg.connect(location) as conn:
            conn.execute("UPDATE meta SET value=%s WHERE key='schema'", (str(version),))


def test_newer_schema_is_refused_with_one_line(store_location: Path | str) -> None:
    open_store(store_location).close()
    set_schema(store_location, 99)
    with pytest.raises(HubStoreError, match="newer than this hub") as refused:
        open_store(store_location)
    assert "\n" not in str(refused.value)


def test_a_garbled_schema_version_is_refused_with_one_line(store_location: Path | str) -> None:
    open_store(store_location).close()
    set_schema(store_location, "two")  # type: ignore[arg-type]
    with pytest.raises(HubStoreError, match="'two' is not a version number"):
        open_store(store_location)


def test_a_fresh_store_is_at_the_current_schema(any_store: HubStore) -> None:
    assert any_store.schema_version() == SCHEMA_VERSION


@pytest.mark.postgres
def test_postgresql_refuses_a_schema_older_than_it_can_migrate(postgres_server: object) -> None:
    location = postgres_server.dsn(postgres_server.create_database())  # type: ignore[attr-defined]
    open_store(location).close()
    set_schema(location, 1)  # the first PostgreSQL layout is 2
    with pytest.raises(HubStoreError, match="older than this hub can migrate"):
        open_store(location)


@pytest.mark.postgres
def test_a_schema_2_postgresql_store_gains_the_leases_table_on_open(
    postgres_server: object,
) -> None:
    import psycopg

    location = postgres_server.dsn(postgres_server.create_database())  # type: ignore[attr-defined]
    store = open_store(location)
    store.add_device(device("kept"))
    store.close()
    with psycopg.connect(location) as conn:  # the layout the first PostgreSQL hub wrote
        conn.execute("DROP TABLE leases")
        conn.execute("ALTER TABLE devices DROP COLUMN presence_at")
        conn.execute("UPDATE meta SET value='2' WHERE key='schema'")
    store = open_store(location)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.claim_lease("x", "me", 5.0) == 1
        assert store.get_device("kept") is not None
    finally:
        store.close()


# The store as edgefleet wrote it at schema 1 (before versioned migrations): the tables
# of today plus the telemetry_cursor nothing read.
SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '1');
CREATE TABLE devices (
    id TEXT PRIMARY KEY, profile TEXT NOT NULL, grp TEXT, tags TEXT NOT NULL,
    password_hash TEXT NOT NULL, created_at REAL NOT NULL, last_seen REAL,
    online INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT '{}', state_at REAL,
    desired_rev INTEGER NOT NULL DEFAULT 0);
INSERT INTO devices VALUES ('pi-1', 'rpi4-arm64', NULL, '{}', '$7$x', 1.0, NULL, 0, '{}',
    NULL, 3);
CREATE TABLE telemetry (
    device TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, model TEXT,
    version INTEGER, received_at REAL NOT NULL, body TEXT NOT NULL, PRIMARY KEY (device, seq));
CREATE TABLE telemetry_cursor (device TEXT PRIMARY KEY, contiguous INTEGER);
INSERT INTO telemetry_cursor VALUES ('pi-1', 7);
"""


def test_a_schema_1_sqlite_store_is_migrated_on_open(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "hub.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    db.close()
    store = SqliteHubStore(path)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 6
        got = store.get_device("pi-1")
        assert got is not None and got.desired_rev == 3  # rows kept
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()
    # Telemetry is kept once, in the fleet tables: the store's own copy is gone.
    assert not {"telemetry_cursor", "telemetry", "telemetry_pruned"} & tables
    assert {
        "rollouts",
        "counters",
        "leases",
        "bundle_blobs",
    } <= tables


def test_sqlite_store_commits_with_synchronous_full(tmp_path: Path) -> None:
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        assert store._one("PRAGMA synchronous")["synchronous"] == 2  # FULL; NORMAL is 1
    finally:
        store.close()


def test_heads_name_each_devices_latest_directive(store: HubStore) -> None:
    for d in ("a", "b", "c"):
        store.add_device(device(d))
    store.set_presence("b", True, 5.0)
    store.set_assignment("b", "digits", DesiredAssignment("digits", SHA, 2, 100, "r1"), 5.0)
    assert {i: (h.online, h.desired_rev) for i, h in store.device_heads().items()} == {
        "a": (False, 0),
        "b": (True, 1),
        "c": (False, 0),
    }
    heads = store.device_heads_of(["b", "nope", "b"])
    assert {i: (h.online, h.desired_rev) for i, h in heads.items()} == {"b": (True, 1)}
    for seq, published in ((1, 2.0), (2, None)):
        store.record_directive(DirectiveRecord("a", seq, 1.0, 10.0 + seq, seq, {"n": seq}))
        if published is not None:
            store.mark_directive_published("a", seq, published)
    store.record_directive(DirectiveRecord("b", 7, 1.0, 30.0, 1, {"n": 7}))
    store.mark_directive_published("b", 7, 3.0)
    heads = store.directive_heads()
    assert sorted(heads) == ["a", "b"]  # c never had a directive
    assert (heads["a"].seq, heads["a"].expires_at, heads["a"].published_at) == (2, 12.0, None)
    assert (heads["b"].seq, heads["b"].published_at) == (7, 3.0)
    assert [(r.device_id, r.seq) for r in store.latest_directives()] == [("a", 2), ("b", 7)]
    assert [r.envelope for r in store.latest_directives(unpublished_only=True)] == [{"n": 2}]


def test_a_devices_rollout_rows_skip_other_models_and_rolled_back_rollouts(
    store: HubStore,
) -> None:
    for d in ("a", "b"):
        store.add_device(device(d))
    for rid, model, version, state in (
        ("r1", "digits", 2, RolloutState.ROLLED_BACK),
        ("r2", "digits", 3, RolloutState.RUNNING),
        ("r3", "iris", 1, RolloutState.RUNNING),
    ):
        plan = RolloutPlan.build(
            rid, model, version, "all", ["a", "b"], parse_phases("100%"), Gates()
        )
        rows = [RolloutDeviceRecord(rid, d, 0, SHA, 10) for d in plan.devices]
        store.create_rollout(RolloutRecord(plan, RolloutStatus(), float(version)), rows)
        store.update_rollout_status(rid, RolloutStatus(state, 0, 2.0, 2.0, ""))
    [entry] = store.device_rollout_rows("a", "digits")
    assert (entry.rollout_version, entry.row.rollout_id, entry.row.device_id) == (3, "r2", "a")
    assert store.device_rollout_rows("a", "other") == []
    running = store.list_rollouts([RolloutState.RUNNING])
    assert [r.rollout_id for r in running] == ["r3", "r2"]  # by creation time
    assert [r.rollout_id for r in store.list_rollouts([RolloutState.ROLLED_BACK])] == ["r1"]
    assert len(store.list_rollouts()) == 3
