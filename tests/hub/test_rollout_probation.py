"""A device in probation is installing, not committed; a failed probation fails the rollout.

The state reports are built with the agent's own report builder, so these tests follow
what a device really publishes: in ``probation`` its active slot already points at the
new bundle, and a failed probation restores the previous slot and reports
``rolled_back`` for the new bundle.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.hub.test_rollout_engine import GATES, Fleet, sha

from edgefleet.agent.sync.deployer import Progress
from edgefleet.agent.sync.reconcile import FAILED, HANDED, InstalledModel, LedgerEntry
from edgefleet.agent.sync.reporter import build_state
from edgefleet.hub.rollout import InstallStatus, RolloutEvent, RolloutState
from edgefleet.hub.rollout.gates import SETTLED
from edgefleet.hub.rollout.progress import (
    OBSERVED,
    TRANSITIONS,
    BundleRef,
    ModelReport,
    Outcome,
    next_install,
    observe_event,
    observe_state,
)
from edgefleet.hub.store import RolloutDeviceRecord

DEVICE = "pi-0"
ON_V1 = InstalledModel(sha(1), 1)
ON_V2 = InstalledModel(sha(2), 2, sha(1), 1)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "hub.db")
    yield f
    f.store.close()


def start(fleet: Fleet, *gates: str) -> str:
    """A one-device rollout of digits:2 to pi-0, started."""
    r = fleet.engine.create(
        "digits", 2, f"ids={DEVICE}", 10.0, phases_text="100%", gate_overrides=[*GATES, *gates]
    )
    [started] = fleet.engine.tick(11.0)
    assert started.event is RolloutEvent.START
    return r.rollout_id


def start_on(fleet: Fleet, device: str) -> str:
    """A one-device rollout of digits:2 (default gates), started."""
    r = fleet.engine.create("digits", 2, f"ids={device}", 10.0, phases_text="100%")
    fleet.engine.tick(11.0)
    return r.rollout_id


def row(fleet: Fleet, rollout_id: str) -> RolloutDeviceRecord:
    [only] = fleet.store.list_rollout_devices(rollout_id)
    return only


def report(
    rollout_id: str,
    installed: InstalledModel,
    *,
    progress: str | None = None,
    outcome: str | None = None,
    handed: bool = False,
    ledger_failed: bool = False,
    now: float = 12.0,
) -> dict[str, Any]:
    """The agent's state report for digits (``build_state``, as the sync publishes it).

    ``handed``: the sync's ledger still has the request with the driver (shown as
    ``queued`` once the driver is done with it); ``ledger_failed``: the sync read back
    the failed ``outcome``; otherwise ``outcome`` is the driver's last outcome.
    """
    running = None
    if progress is not None:
        running = Progress("d-1", progress, "digits", 2, sha(2), None, now)
    ledger = []
    if handed or progress is not None:
        ledger.append(LedgerEntry("digits", sha(2), rollout_id, 2, HANDED, now, "d-1"))
    if ledger_failed:
        ledger.append(
            LedgerEntry(
                "digits", sha(2), rollout_id, 2, FAILED, now, "d-1", "probation failed", outcome
            )
        )
    last: dict[str, dict[str, Any]] = {}
    if outcome is not None:
        last["digits"] = {
            "id": "d-1",
            "kind": "install",
            "state": outcome,
            "model": "digits",
            "version": 2,
            "bundle_sha256": sha(2),
            "rollout_id": None,  # the inbox does not carry it
            "reason": "probation: error rate 0.31 over 40 requests"
            if outcome == "rolled_back"
            else None,
            "finished_at": now,
        }
    state = build_state(
        device_id=DEVICE,
        agent_version="0.1.0",
        profile="rpi4-arm64",
        now=now,
        installed={"digits": installed},
        progress=running,
        ledger=ledger,
        download=None,
        last_outcomes=last,
    )
    return state.to_dict()


# -- the reported bug -------------------------------------------------------------------


@pytest.mark.parametrize("via", ["event", "state report"])
def test_probation_is_not_committed_and_its_rollback_fails_the_gate(fleet: Fleet, via: str) -> None:
    rid = start(fleet)
    probation = report(rid, ON_V2, progress="probation")
    model = probation["models"][0]
    assert model["active"]["bundle_sha256"] == sha(2)  # the slot already switched
    assert model["deployment"]["state"] == "probation"

    assert fleet.engine.on_device_state(DEVICE, probation, 12.0) == [rid]
    current = row(fleet, rid)
    assert (current.install, current.settled_at) == (InstallStatus.INSTALLING, None)
    assert current.detail == "probation"
    # Probation serves live requests of v2, and that telemetry reaches the hub, but
    # the phase still waits for the device to settle.
    fleet.telemetry(DEVICE, 2, at=12.5, requests=100, errors=1)
    [waiting] = fleet.engine.tick(13.0)
    assert waiting.event is None and waiting.decision is not None
    assert waiting.decision.counts["committed"] == 0
    assert waiting.decision.counts["installing"] == 1
    assert "settled" in waiting.decision.reason

    if via == "event":
        changed = fleet.engine.on_deployment(
            DEVICE,
            "digits",
            2,
            "rolled_back",
            14.0,
            reason="probation: error rate 0.31",
            bundle_sha256=sha(2),
            kind="install",
        )
    else:
        # Slot restored, the driver done, the sync has not read the outcome back yet.
        restored = report(rid, ON_V1, handed=True, outcome="rolled_back", now=13.5)
        assert restored["models"][0]["deployment"]["state"] == "queued"
        assert fleet.engine.on_device_state(DEVICE, restored, 13.5) == [rid]
        assert row(fleet, rid).install is InstallStatus.INSTALLING
        changed = fleet.engine.on_device_state(
            DEVICE, report(rid, ON_V1, ledger_failed=True, outcome="rolled_back", now=14.0), 14.0
        )
    assert changed == [rid]
    failed = row(fleet, rid)
    assert (failed.install, failed.settled_at) == (InstallStatus.FAILED, 14.0)
    assert failed.detail.startswith("rolled_back: probation")

    [result] = fleet.engine.tick(15.0)
    assert result.event is RolloutEvent.ABORT
    assert result.decision is not None
    assert result.decision.counts["failed"] == 1
    assert "max_failure_share" in result.decision.reason
    assert fleet.engine.get(rid).status.state is RolloutState.ROLLED_BACK


def test_a_late_step_event_does_not_undo_a_failure(fleet: Fleet) -> None:
    rid = start(fleet)
    fleet.engine.on_device_state(DEVICE, report(rid, ON_V1, outcome="rolled_back"), 12.0)
    # The uploader delivers the driver's earlier events after the retained state.
    for step in ("activating", "probation", "rolling_back"):
        assert (
            fleet.engine.on_deployment(DEVICE, "digits", 2, step, 13.0, bundle_sha256=sha(2)) == []
        )
    assert row(fleet, rid).install is InstallStatus.FAILED


# -- the normal path still commits ----------------------------------------------------------


@pytest.mark.parametrize(
    "final",
    [
        pytest.param({"outcome": "committed"}, id="deployment committed"),
        pytest.param({}, id="active, nothing in progress"),
        pytest.param({"handed": True}, id="active, outcome not read back yet"),
    ],
)
def test_probation_then_commit_passes_the_phase(fleet: Fleet, final: dict[str, Any]) -> None:
    rid = start(fleet)
    for step in ("downloading", "verifying", "staged"):
        fleet.engine.on_device_state(DEVICE, report(rid, ON_V1, progress=step), 11.5)
        assert row(fleet, rid).install is InstallStatus.INSTALLING
        assert row(fleet, rid).detail == step
    fleet.engine.on_device_state(DEVICE, report(rid, ON_V2, progress="probation"), 12.0)
    assert row(fleet, rid).install is InstallStatus.INSTALLING

    assert fleet.engine.on_device_state(DEVICE, report(rid, ON_V2, **final), 13.0) == [rid]
    committed = row(fleet, rid)
    assert (committed.install, committed.settled_at) == (InstallStatus.COMMITTED, 13.0)
    fleet.telemetry(DEVICE, 2, at=13.0, requests=100)
    [done] = fleet.engine.tick(14.0)
    assert done.event is RolloutEvent.COMPLETE, done.decision and done.decision.reason
    # Committed is final: a stale report of an earlier step changes nothing.
    assert (
        fleet.engine.on_device_state(DEVICE, report(rid, ON_V2, progress="probation"), 15.0) == []
    )


def test_committed_event_commits(fleet: Fleet) -> None:
    rid = start(fleet)
    fleet.engine.on_deployment(DEVICE, "digits", 2, "probation", 12.0, bundle_sha256=sha(2))
    assert row(fleet, rid).install is InstallStatus.INSTALLING
    fleet.engine.on_deployment(DEVICE, "digits", 2, "committed", 13.0, bundle_sha256=sha(2))
    assert (row(fleet, rid).install, row(fleet, rid).settled_at) == (InstallStatus.COMMITTED, 13.0)


def test_a_rollback_to_the_rollouts_bundle_commits(fleet: Fleet) -> None:
    """When the rollout's bundle is the device's previous slot, the agent switches back to it.

    That deployment is of kind ``rollback``, names the bundle it goes back to, and ends
    ``rolled_back`` with that bundle active: a success for the rollout.
    """
    rid = start(fleet)
    fleet.engine.on_deployment(
        DEVICE, "digits", 2, "rolled_back", 12.0, bundle_sha256=sha(2), kind="rollback"
    )
    assert row(fleet, rid).install is InstallStatus.COMMITTED

    other = start_on(fleet, "pi-1")
    state = report(other, ON_V2, outcome="rolled_back")
    assert fleet.engine.on_device_state("pi-1", state, 12.0) == [other]
    assert row(fleet, other).install is InstallStatus.COMMITTED


def test_queued_before_the_switch_is_installing(fleet: Fleet) -> None:
    rid = start(fleet)
    fleet.engine.on_device_state(DEVICE, report(rid, ON_V1, handed=True), 12.0)
    assert (row(fleet, rid).install, row(fleet, rid).detail) == (InstallStatus.INSTALLING, "queued")


def test_another_rollouts_deployment_of_the_bundle_is_not_ours(fleet: Fleet) -> None:
    rid = start(fleet)
    state = report("r-other", ON_V2, progress="probation")
    assert state["models"][0]["deployment"]["rollout_id"] == "r-other"
    assert fleet.engine.on_device_state(DEVICE, state, 12.0) == []
    assert row(fleet, rid).install is InstallStatus.PENDING
    failing = {"rollout_id": "r-other", "bundle_sha256": sha(2)}
    assert fleet.engine.on_deployment(DEVICE, "digits", 2, "failed", 13.0, **failing) == []


def test_a_timed_out_device_settles_when_it_reports_an_outcome(fleet: Fleet) -> None:
    rid = start(fleet, "max_failure_share=1")  # a time-out alone does not abort here
    [timeout] = fleet.engine.tick(11.0 + 3600.0)
    assert timeout.decision is not None and timeout.decision.timed_out == (DEVICE,)
    assert row(fleet, rid).install is InstallStatus.TIMED_OUT
    fleet.engine.on_device_state(DEVICE, report(rid, ON_V2, progress="probation"), 3700.0)
    assert row(fleet, rid).install is InstallStatus.TIMED_OUT  # still no outcome
    fleet.engine.on_device_state(DEVICE, report(rid, ON_V1, outcome="rolled_back"), 3800.0)
    assert (row(fleet, rid).install, row(fleet, rid).settled_at) == (InstallStatus.FAILED, 3800.0)


# -- the tables -----------------------------------------------------------------------------


def test_every_observation_has_a_rule() -> None:
    keys = set(itertools.product([None, *Outcome], [False, True]))
    assert set(OBSERVED) == keys


@pytest.mark.parametrize(
    "state",
    ["downloading", "verifying", "staged", "activating", "probation", "rolling_back", "new"],
)
def test_a_running_deployment_never_commits_even_with_the_slot_switched(state: str) -> None:
    ref = BundleRef("r-1", sha(2), 2)
    model = ModelReport.from_entry(
        {
            "name": "digits",
            "active": {"version": 2, "bundle_sha256": sha(2)},
            "deployment": {"state": state, "version": 2, "bundle_sha256": sha(2)},
        }
    )
    assert model is not None
    seen = observe_state(ref, model)
    assert seen is not None and seen.status is InstallStatus.INSTALLING
    event = observe_event(ref, state=state, version=2, bundle_sha256=sha(2), kind="install")
    assert event is not None and event.status is InstallStatus.INSTALLING


@pytest.mark.parametrize("state", ["failed", "rejected", "rolled_back"])
def test_an_undone_install_fails(state: str) -> None:
    ref = BundleRef("r-1", sha(2), 2)
    seen = observe_event(ref, state=state, version=2, bundle_sha256=None, kind="install")
    assert seen is not None and seen.status is InstallStatus.FAILED
    assert observe_event(ref, state=state, version=3, bundle_sha256=None) is None
    assert observe_event(ref, state=state, version=2, bundle_sha256=sha(3)) is None


def test_settled_statuses_are_final_and_pending_is_never_reentered() -> None:
    observations = [InstallStatus.INSTALLING, InstallStatus.COMMITTED, InstallStatus.FAILED]
    for current, seen in itertools.product(InstallStatus, observations):
        nxt = next_install(current, seen)
        if current in (InstallStatus.COMMITTED, InstallStatus.FAILED, InstallStatus.ROLLED_BACK):
            assert nxt is None, (current, seen)
        assert nxt is not InstallStatus.PENDING
        if current is InstallStatus.TIMED_OUT and nxt is not None:
            assert nxt in SETTLED
    assert all(k[1] in observations for k in TRANSITIONS)
