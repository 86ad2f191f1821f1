"""The rollout engine over a real store, SQLite and PostgreSQL (no MQTT): phases, gates,
abort, rollback, restart."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from tests.hub.hubkit import TelemetryWriter, window

from edgefleet.core.errors import UsageError
from edgefleet.hub.errors import HubNotFoundError, RolloutStateError
from edgefleet.hub.rollout import InstallStatus, RolloutEvent, RolloutState, Verdict
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.store import (
    BundleRecord,
    DesiredAssignment,
    DeviceHead,
    DeviceRecord,
    HubStore,
    RolloutDeviceRecord,
    open_store,
)

DEVICES = [f"pi-{i}" for i in range(5)]
GATES = ["min_devices=1", "min_inferences=50", "bake=0", "device_timeout=1h"]


def sha(version: int) -> str:
    return f"{version:02d}" * 32


class Fleet:
    """A store with five enrolled devices running digits v1, and bundles v1..v3."""

    def __init__(self, path: Path | str) -> None:
        self.path = path  # an SQLite file or a PostgreSQL URL
        self.store: HubStore = open_store(path)
        self.writer = TelemetryWriter(path)
        self.seq: dict[str, int] = {}
        for d in DEVICES:
            self.store.add_device(DeviceRecord(d, "rpi4-arm64", "$7$1$a$b", 0.0))
            self.store.set_presence(d, True, 0.0)
            self.store.set_assignment(
                d, "digits", DesiredAssignment("digits", sha(1), 1, 100, "r0"), 0.0
            )
        for v in (1, 2, 3):
            self.store.add_bundle(
                BundleRecord(sha(v), "digits", v, "rpi4-arm64", 100, "x", {}, ("k",), float(v))
            )
        self.engine = RolloutEngine(self.store)
        for d in DEVICES:  # baseline evidence for v1
            self.telemetry(d, 1, requests=200, at=0.0)

    def reopen(self) -> None:
        self.store.close()
        self.store = open_store(self.path)
        self.engine = RolloutEngine(self.store)

    def telemetry(self, device: str, version: int, *, at: float, **kw: object) -> None:
        seq = self.seq.get(device, 0) + 1
        self.seq[device] = seq
        body = window("digits", version, **kw)  # type: ignore[arg-type]
        self.writer.windows(device, [(seq, body)], at)

    def moved(self, rollout_id: str) -> list[str]:
        return [
            r.device_id
            for r in self.store.list_rollout_devices(rollout_id)
            if r.assigned_at is not None
        ]

    def commit(self, rollout_id: str, version: int, at: float, **kw: object) -> None:
        """Every moved device commits ``version`` and reports healthy inference."""
        for d in self.moved(rollout_id):
            self.engine.on_deployment(
                d, "digits", version, "committed", at, bundle_sha256=sha(version)
            )
            self.telemetry(d, version, at=at, **({"requests": 100} | kw))

    def desired_version(self, device: str) -> int:
        return self.store.get_assignments(device)["digits"].version


@pytest.fixture
def fleet(store_location: Path | str) -> Iterator[Fleet]:
    f = Fleet(store_location)
    yield f
    f.writer.close()
    f.store.close()


def state_of(fleet: Fleet, rollout_id: str) -> RolloutState:
    return fleet.engine.get(rollout_id).status.state


def test_rollout_moves_phase_by_phase_to_completion(fleet: Fleet) -> None:
    r = fleet.engine.create("digits", 2, "all", 10.0, phases_text="20%,100%", gate_overrides=GATES)
    assert r.plan.phase_sizes == (1, 5)
    assert fleet.moved(r.rollout_id) == []

    [start] = fleet.engine.tick(11.0)
    assert start.event is RolloutEvent.START
    first = fleet.moved(r.rollout_id)
    assert len(first) == 1 and fleet.desired_version(first[0]) == 2
    assert all(fleet.desired_version(d) == 1 for d in DEVICES if d not in first)

    [wait] = fleet.engine.tick(12.0)
    assert wait.event is None and wait.decision is not None
    assert "settled" in wait.decision.reason

    fleet.commit(r.rollout_id, 2, 13.0)
    [advance] = fleet.engine.tick(14.0)
    assert advance.event is RolloutEvent.ADVANCE, advance.decision and advance.decision.reason
    assert sorted(fleet.moved(r.rollout_id)) == DEVICES
    assert all(fleet.desired_version(d) == 2 for d in DEVICES)

    fleet.commit(r.rollout_id, 2, 15.0)
    [complete] = fleet.engine.tick(16.0)
    assert complete.event is RolloutEvent.COMPLETE
    assert state_of(fleet, r.rollout_id) is RolloutState.COMPLETED
    events = [e.event for e in fleet.store.rollout_events(r.rollout_id)]
    assert events == ["created", "start", "advance", "complete"]
    status = fleet.engine.status(r.rollout_id, 17.0)
    assert [p["counts"] for p in status["phases"]] == [{"committed": 1}, {"committed": 4}]


def test_bad_version_aborts_in_first_phase_and_rolls_back(fleet: Fleet) -> None:
    r = fleet.engine.create("digits", 3, "all", 10.0, phases_text="20%,100%", gate_overrides=GATES)
    fleet.engine.tick(11.0)
    [moved] = fleet.moved(r.rollout_id)
    fleet.commit(r.rollout_id, 3, 12.0, errors=30)  # 30% errors
    [result] = fleet.engine.tick(13.0)
    assert result.event is RolloutEvent.ABORT
    assert result.decision is not None and "max_error_rate" in result.decision.reason
    assert state_of(fleet, r.rollout_id) is RolloutState.ROLLED_BACK
    back = fleet.store.get_assignments(moved)["digits"]
    assert (back.version, back.bundle_sha256, back.allow_downgrade) == (1, sha(1), True)
    assert all(fleet.desired_version(d) == 1 for d in DEVICES)  # the rest never moved
    row = next(x for x in fleet.store.list_rollout_devices(r.rollout_id) if x.device_id == moved)
    assert row.install is InstallStatus.ROLLED_BACK
    assert [e.event for e in fleet.store.rollout_events(r.rollout_id)][-2:] == ["abort", "rollback"]


def test_latency_regression_aborts_without_rollback_when_asked(fleet: Fleet) -> None:
    r = fleet.engine.create(
        "digits",
        3,
        "all",
        10.0,
        phases_text="20%,100%",
        gate_overrides=[*GATES, "auto_rollback=no"],
    )
    fleet.engine.tick(11.0)
    fleet.commit(r.rollout_id, 3, 12.0, latency_bucket=6)
    [result] = fleet.engine.tick(13.0)
    assert result.event is RolloutEvent.ABORT
    assert state_of(fleet, r.rollout_id) is RolloutState.ABORTED
    [moved] = fleet.moved(r.rollout_id)
    assert fleet.desired_version(moved) == 3  # halted, not rolled back
    fleet.engine.rollback(r.rollout_id, 14.0)
    assert fleet.desired_version(moved) == 1


def test_state_survives_a_restart_mid_phase(fleet: Fleet) -> None:
    r = fleet.engine.create("digits", 2, "all", 10.0, phases_text="2,100%", gate_overrides=GATES)
    fleet.engine.tick(11.0)
    before = sorted(fleet.moved(r.rollout_id))
    fleet.commit(r.rollout_id, 2, 12.0)
    fleet.reopen()  # the hub restarts in the middle of phase 1
    status = fleet.engine.get(r.rollout_id).status
    assert (status.state, status.phase) == (RolloutState.RUNNING, 0)
    assert sorted(fleet.moved(r.rollout_id)) == before
    [advance] = fleet.engine.tick(13.0)
    assert advance.event is RolloutEvent.ADVANCE
    assert len(fleet.moved(r.rollout_id)) == 5


def test_offline_device_stays_pending(fleet: Fleet) -> None:
    r = fleet.engine.create(
        "digits", 2, "all", 10.0, phases_text="100%", gate_overrides=[*GATES, "min_devices=5"]
    )
    fleet.engine.tick(11.0)
    fleet.store.set_presence("pi-3", False, 11.5)
    for d in DEVICES:
        if d != "pi-3":
            fleet.engine.on_deployment(d, "digits", 2, "committed", 12.0, bundle_sha256=sha(2))
            fleet.telemetry(d, 2, at=12.0, requests=100)
    [result] = fleet.engine.tick(10_000.0)  # long after the device timeout
    assert result.event is None
    assert result.decision is not None and result.decision.counts["offline_pending"] == 1
    row = next(x for x in fleet.store.list_rollout_devices(r.rollout_id) if x.device_id == "pi-3")
    assert row.install is InstallStatus.PENDING


def test_pause_resume_abort_and_operator_rollback(fleet: Fleet) -> None:
    r = fleet.engine.create("digits", 2, "all", 10.0, phases_text="20%,100%", gate_overrides=GATES)
    with pytest.raises(RolloutStateError):
        fleet.engine.pause(r.rollout_id, 10.5)  # not started yet
    fleet.engine.tick(11.0)
    fleet.engine.pause(r.rollout_id, 12.0)
    fleet.commit(r.rollout_id, 2, 12.5)
    assert fleet.engine.tick(13.0) == []  # paused: no evaluation, nothing moves
    assert len(fleet.moved(r.rollout_id)) == 1
    fleet.engine.resume(r.rollout_id, 14.0)
    [advance] = fleet.engine.tick(15.0)
    assert advance.event is RolloutEvent.ADVANCE
    fleet.engine.abort(r.rollout_id, 16.0)
    assert all(fleet.desired_version(d) == 2 for d in DEVICES)
    with pytest.raises(RolloutStateError):
        fleet.engine.resume(r.rollout_id, 17.0)
    fleet.engine.rollback(r.rollout_id, 18.0)
    assert all(fleet.desired_version(d) == 1 for d in DEVICES)
    assert all(a.allow_downgrade for d in DEVICES for a in fleet.store.get_assignments(d).values())


def test_rollback_of_an_old_rollout_leaves_newer_assignments_alone(fleet: Fleet) -> None:
    old = fleet.engine.create(
        "digits", 2, "ids=pi-0", 10.0, phases_text="100%", gate_overrides=GATES
    )
    fleet.engine.tick(11.0)
    fleet.commit(old.rollout_id, 2, 12.0)
    fleet.engine.tick(13.0)
    assert state_of(fleet, old.rollout_id) is RolloutState.COMPLETED
    new = fleet.engine.create(
        "digits", 3, "ids=pi-0", 14.0, phases_text="100%", gate_overrides=GATES
    )
    fleet.engine.tick(15.0)
    assert fleet.desired_version("pi-0") == 3
    fleet.engine.rollback(old.rollout_id, 16.0)
    assert fleet.desired_version("pi-0") == 3
    assert state_of(fleet, new.rollout_id) is RolloutState.RUNNING


def test_create_refusals(fleet: Fleet) -> None:
    with pytest.raises(HubNotFoundError):
        fleet.engine.create("digits", 9, "all", 1.0)
    fleet.store.add_device(DeviceRecord("jet", "jetson-orin-nano", "$7$1$a$b", 0.0))
    with pytest.raises(UsageError, match="jetson-orin-nano"):
        fleet.engine.create("digits", 2, "all", 1.0)
    with pytest.raises(UsageError, match="no enrolled device"):
        fleet.engine.create("digits", 2, "group=nobody", 1.0)
    fleet.engine.create("digits", 2, "profile=rpi4-arm64", 1.0, rollout_id="first")
    with pytest.raises(UsageError, match="first"):
        fleet.engine.create("digits", 3, "ids=pi-1", 2.0)


def test_device_state_report_commits_a_device(fleet: Fleet) -> None:
    r = fleet.engine.create("digits", 2, "ids=pi-0", 10.0, phases_text="100%", gate_overrides=GATES)
    fleet.engine.tick(11.0)
    state = {
        "models": [
            {
                "name": "digits",
                "active": {"version": 2, "bundle_sha256": sha(2)},
                "previous": {"version": 1, "bundle_sha256": sha(1)},
            }
        ]
    }
    assert fleet.engine.on_device_state("pi-0", state, 12.0) == [r.rollout_id]
    row = fleet.store.list_rollout_devices(r.rollout_id)[0]
    assert (row.install, row.settled_at) == (InstallStatus.COMMITTED, 12.0)
    failing = {
        "models": [
            {
                "name": "digits",
                "deployment": {"state": "rolled_back", "version": 2, "bundle_sha256": sha(2)},
            }
        ]
    }
    assert fleet.engine.on_device_state("pi-0", failing, 13.0) == []  # committed is final


def test_a_stale_decision_is_dropped_when_an_operator_acted(fleet: Fleet) -> None:
    r = fleet.engine.create("digits", 2, "all", 10.0, phases_text="20%,100%", gate_overrides=GATES)
    fleet.engine.tick(11.0)
    fleet.commit(r.rollout_id, 2, 12.0)
    stale = fleet.engine.get(r.rollout_id)
    decision = fleet.engine.evaluate(stale, 13.0)
    assert decision is not None
    other = open_store(fleet.path)  # as another process would
    RolloutEngine(other).pause(r.rollout_id, 13.5)
    other.close()
    result = fleet.engine._act(stale, decision, 14.0)
    assert result.event is None
    assert state_of(fleet, r.rollout_id) is RolloutState.PAUSED
    assert len(fleet.moved(r.rollout_id)) == 1


class CountingStore:
    """A real store (either engine), counting the reads a tick or a status report makes."""

    def __init__(self, inner: HubStore) -> None:
        self._inner = inner
        self.reads: Counter[str] = Counter()
        self.heads_asked: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def device_heads(self) -> dict[str, DeviceHead]:
        self.reads["device_heads"] += 1
        return self._inner.device_heads()

    def device_heads_of(self, device_ids: Sequence[str]) -> dict[str, DeviceHead]:
        self.reads["device_heads_of"] += 1
        self.heads_asked.append(len(device_ids))
        return self._inner.device_heads_of(device_ids)

    def list_rollout_devices(self, rollout_id: str) -> list[RolloutDeviceRecord]:
        self.reads["list_rollout_devices"] += 1
        return self._inner.list_rollout_devices(rollout_id)


def test_a_tick_reads_device_heads_once_for_all_running_rollouts(fleet: Fleet) -> None:
    store = CountingStore(fleet.store)
    fleet.engine = RolloutEngine(store)  # type: ignore[arg-type]
    a, b = (
        fleet.engine.create("digits", v, ids, 10.0, phases_text="100%", gate_overrides=GATES)
        for v, ids in ((2, "ids=pi-0,pi-1"), (3, "ids=pi-2,pi-3"))
    )
    assert {r.event for r in fleet.engine.tick(11.0)} == {RolloutEvent.START}
    store.set_presence("pi-3", False, 11.5)

    store.reads.clear()
    results = fleet.engine.tick(12.0)
    assert store.reads["device_heads"] == 1
    offline = {r.rollout_id: r.decision.counts["offline_pending"] for r in results if r.decision}
    # Presence from the shared read still reaches each rollout's gates.
    assert offline == {a.rollout_id: 0, b.rollout_id: 1}

    fleet.engine.pause(a.rollout_id, 12.5)
    fleet.engine.pause(b.rollout_id, 12.5)
    store.reads.clear()
    assert fleet.engine.tick(13.0) == []
    assert store.reads["device_heads"] == 0  # nothing running: nothing to evaluate


def test_status_reads_rows_and_its_own_devices_heads_once_and_matches_evaluate(
    fleet: Fleet,
) -> None:
    store = CountingStore(fleet.store)
    fleet.engine = RolloutEngine(store)  # type: ignore[arg-type]
    r = fleet.engine.create("digits", 2, "all", 10.0, phases_text="20%,100%", gate_overrides=GATES)
    fleet.engine.tick(11.0)
    fleet.commit(r.rollout_id, 2, 12.0)

    store.reads.clear()
    status = fleet.engine.status(r.rollout_id, 13.0)
    # Only the rollout's own devices' heads, never the whole fleet's.
    assert store.reads == Counter({"device_heads_of": 1, "list_rollout_devices": 1})
    assert store.heads_asked == [len(status["devices"])]
    decision = fleet.engine.evaluate(fleet.engine.get(r.rollout_id), 13.0)
    assert decision is not None and decision.verdict is Verdict.PASS
    assert status["decision"] == decision.to_dict()
