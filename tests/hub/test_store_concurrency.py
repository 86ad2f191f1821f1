"""Two store objects on one store (as two hub processes would be), on both engines:
concurrent telemetry inserts dedupe without failing, a rollout transition read under
``lock_rollout`` waits for the other writer's commit, directive seqs stay ordered.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from tests.hub.hubkit import TelemetryWriter, window

from edgefleet.hub.errors import HubStoreError, RolloutStateError
from edgefleet.hub.rollout import Gates, RolloutPlan, RolloutStatus, parse_phases
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.rollout.machine import RolloutEvent, RolloutState
from edgefleet.hub.rollout.transitions import apply_transition
from edgefleet.hub.store import (
    DeviceRecord,
    DirectiveRecord,
    RolloutDeviceRecord,
    RolloutRecord,
    open_store,
)

SHA = "cd" * 32


def test_concurrent_overlapping_telemetry_is_stored_once_without_errors(
    store_location: Path | str,
) -> None:
    """Two hubs' fleet ingests deliver the same batches at once; the gates' read of the
    store then sees every window once."""
    store = open_store(store_location)
    writers = [TelemetryWriter(store_location), TelemetryWriter(store_location)]
    bodies = [(seq, window("digits", 1, requests=5)) for seq in range(1, 201)]
    inserted = [0, 0]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def ingest(i: int) -> None:
        try:
            start.wait()
            for lo in range(0, len(bodies), 20):  # both hubs deliver every batch
                inserted[i] += writers[i].windows("pi-1", bodies[lo : lo + 20], 10.0).stored
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=ingest, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert sum(inserted) == len(bodies)
        stored = list(store.telemetry_windows("digits", [1], ["pi-1"], 0.0))
        assert len(stored) == len(bodies)
    finally:
        for writer in writers:
            writer.close()
        store.close()


def test_a_transition_under_lock_rollout_sees_the_other_writers_commit(
    store_location: Path | str,
) -> None:
    first, second = open_store(store_location), open_store(store_location)
    plan = RolloutPlan.build(
        "r1", "digits", 2, "all", ["a", "b"], parse_phases("50%,100%"), Gates()
    )
    rows = [RolloutDeviceRecord("r1", d, plan.phase_of(d), SHA, 10) for d in plan.devices]
    running = RolloutStatus(RolloutState.RUNNING, 0, 1.0, 1.0, "")
    first.create_rollout(RolloutRecord(plan, running, 1.0), rows)
    locked, seen = threading.Event(), []

    def advance(store: object, signal: threading.Event | None) -> None:
        with store.transaction():  # type: ignore[attr-defined]
            current = store.lock_rollout("r1")  # type: ignore[attr-defined]
            if signal is not None:
                signal.set()
                time.sleep(0.5)  # hold the lock while the other writer tries
            seen.append(current.status.phase)
            nxt = RolloutStatus(RolloutState.RUNNING, current.status.phase + 1, 2.0, 2.0, "")
            store.update_rollout_status("r1", nxt)  # type: ignore[attr-defined]

    holder = threading.Thread(target=advance, args=(first, locked))
    holder.start()
    assert locked.wait(30)
    advance(second, None)  # must wait for the holder, then read its phase
    holder.join(30)
    try:
        assert seen == [0, 1]  # without the lock both read phase 0 and one step is lost
        got = first.get_rollout("r1")
        assert got is not None and got.status.phase == 2
    finally:
        first.close()
        second.close()


def test_directive_seqs_from_two_writers_never_go_backwards(store_location: Path | str) -> None:
    hubs = [open_store(store_location), open_store(store_location)]
    hubs[0].add_device(DeviceRecord("pi-1", "rpi4-arm64", "$7$1$a$b", 1.0))
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def record(i: int) -> None:
        start.wait()
        for seq in range(1 + i, 41, 2):  # interleaved seqs from the two writers
            try:
                hubs[i].record_directive(DirectiveRecord("pi-1", seq, 1.0, 2.0, 1, {"n": seq}))
                outcomes.append("ok")
            except HubStoreError as e:
                assert "not above" in str(e), e
                outcomes.append("refused")

    threads = [threading.Thread(target=record, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert len(outcomes) == 40
        heads = hubs[1].directive_heads()
        latest = hubs[1].latest_directive("pi-1")
        assert latest is not None and heads["pi-1"].seq == latest.seq
        # every stored seq was above the one before it when it was recorded
        assert outcomes.count("ok") >= 20
    finally:
        for hub in hubs:
            hub.close()


@pytest.mark.postgres
def test_a_postgresql_store_that_cannot_connect_says_so_in_one_line() -> None:
    from edgefleet.core.testing.brokers import free_port
    from edgefleet.hub.store.postgres import PostgresHubStore

    url = f"postgresql://hub:secret@127.0.0.1:{free_port()}/fleet"
    with pytest.raises(HubStoreError) as refused:
        PostgresHubStore(url, connect_timeout_s=1.0)
    message = str(refused.value)
    assert "\n" not in message and "secret" not in message and "127.0.0.1" in message


def test_an_operator_command_racing_a_transition_waits_and_sees_it(
    store_location: Path | str,
) -> None:
    """``RolloutEngine.pause`` reads the rollout with ``lock_rollout``: while another hub's
    transition holds the row, the command waits and then refuses the stale pause instead
    of writing a second "paused" over it (with a plain read both would be recorded)."""
    first, second = open_store(store_location), open_store(store_location)
    plan = RolloutPlan.build(
        "r1", "digits", 2, "all", ["a", "b"], parse_phases("50%,100%"), Gates()
    )
    rows = [RolloutDeviceRecord("r1", d, plan.phase_of(d), SHA, 10) for d in plan.devices]
    running = RolloutStatus(RolloutState.RUNNING, 0, 1.0, 1.0, "")
    first.create_rollout(RolloutRecord(plan, running, 1.0), rows)
    locked = threading.Event()

    def pause_holding_the_lock() -> None:
        with first.transaction():
            current = first.lock_rollout("r1")
            assert current is not None
            locked.set()
            time.sleep(0.5)  # hold the lock while the operator command runs
            apply_transition(first, current, RolloutEvent.PAUSE, 2.0, "first")

    holder = threading.Thread(target=pause_holding_the_lock)
    holder.start()
    assert locked.wait(30)
    try:
        with pytest.raises(RolloutStateError):
            RolloutEngine(second).pause("r1", 3.0, "second")
        holder.join(30)
        events = [e.event for e in first.rollout_events("r1")]
        assert events.count(RolloutEvent.PAUSE.value) == 1
    finally:
        holder.join(30)
        first.close()
        second.close()
