"""Leases and fencing epochs in the hub store, on both engines; then three real processes on
one PostgreSQL store: kill -9 of the holder, and a paused holder whose late writes are
refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tests.support.waiting import wait_until

from edgefleet.hub.store import FencedError, HubStore, open_store

LEASE = "singleton"


def test_a_lease_is_renewed_refused_taken_over_and_released(any_store: HubStore) -> None:
    store = any_store
    assert store.claim_lease(LEASE, "hub-a", 30.0) == 1
    assert store.claim_lease(LEASE, "hub-a", 30.0) == 1  # renewal keeps the epoch
    assert store.claim_lease(LEASE, "hub-b", 30.0) is None  # held
    store.release_lease(LEASE, "hub-b")  # not b's: no effect
    assert store.claim_lease(LEASE, "hub-b", 30.0) is None
    store.release_lease(LEASE, "hub-a")
    assert store.claim_lease(LEASE, "hub-b", 30.0) == 2  # a new holder, a new epoch
    holder = store.lease_holder(LEASE)
    assert holder is not None and holder[:2] == ("hub-b", 2)
    assert holder[2] > store.db_now() + 20
    with pytest.raises(ValueError):
        store.claim_lease(LEASE, "hub-b", 0)


def test_an_expired_lease_goes_to_the_next_claimant(any_store: HubStore) -> None:
    assert any_store.claim_lease(LEASE, "hub-a", 0.2) == 1
    time.sleep(0.4)
    assert any_store.claim_lease(LEASE, "hub-b", 30.0) == 2
    assert any_store.claim_lease(LEASE, "hub-a", 30.0) is None


def test_a_fenced_write_under_an_old_epoch_is_refused_and_leaves_nothing(
    store_location: Path | str,
) -> None:
    old, new = open_store(store_location), open_store(store_location)
    try:
        epoch = old.claim_lease(LEASE, "hub-a", 0.2)
        assert epoch == 1
        with old.fenced(LEASE, epoch):
            old.bump_counter("leader_work")  # still the holder: written
        time.sleep(0.4)
        assert new.claim_lease(LEASE, "hub-b", 30.0) == 2
        with pytest.raises(FencedError, match="epoch 1 was taken over"), old.fenced(LEASE, epoch):
            old.bump_counter("leader_work")
        old.bump_counter("unfenced")  # outside the block nothing is checked
        assert new.counters() == {"leader_work": 1, "unfenced": 1}
    finally:
        old.close()
        new.close()


# A hub's singleton loop, reduced to what the lease decides: claim every 0.1 s and, while
# holding, record one rollout event per turn under the fence. Prints what it does.
WORKER = """
import sys, time
from edgefleet.hub.store import FencedError, open_store
store = open_store(sys.argv[1])
me = sys.argv[2]
print("ready", flush=True)
while True:
    epoch = store.claim_lease("singleton", me, 1.5)
    if epoch is not None:
        print("claimed", epoch, flush=True)
        time.sleep(0.3)  # the work between the claim and its write (a pause lands here)
        try:
            with store.fenced("singleton", epoch):
                store.add_rollout_event("r", store.db_now(), "turn", f"{me} {epoch}")
        except FencedError:
            print("refused", epoch, flush=True)
    time.sleep(0.1)
"""


def turns(store: HubStore) -> list[tuple[str, int]]:
    out = []
    for event in store.rollout_events("r"):
        holder, epoch = event.detail.split()
        out.append((holder, int(epoch)))
    return out


@pytest.mark.postgres
@pytest.mark.slow
def test_three_hubs_kill_9_and_a_paused_holder_is_fenced_off(
    postgres_server: object,
) -> None:
    url = postgres_server.dsn(postgres_server.create_database())  # type: ignore[attr-defined]
    store = open_store(url)
    hubs: dict[str, subprocess.Popen[str]] = {}
    try:
        for name in ("hub-1", "hub-2", "hub-3"):
            hubs[name] = subprocess.Popen(
                [sys.executable, "-c", WORKER, url, name], stdout=subprocess.PIPE, text=True
            )
        lines: dict[str, list[str]] = {name: [] for name in hubs}
        for name, proc in hubs.items():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            threading.Thread(
                target=lambda out, into: into.extend(line.strip() for line in out),
                args=(proc.stdout, lines[name]),
                daemon=True,
            ).start()
        wait_until("a leader doing the work", lambda: len(turns(store)) >= 5)
        leader = store.lease_holder(LEASE)
        assert leader is not None
        first, first_epoch = leader[0], leader[1]

        os.kill(hubs[first].pid, signal.SIGKILL)  # kill -9 the holder
        hubs[first].wait(10)
        killed_at = time.monotonic()
        wait_until(
            "takeover after kill -9",
            lambda: (h := store.lease_holder(LEASE)) is not None and h[0] != first,
        )
        assert time.monotonic() - killed_at < 30
        second, second_epoch, _ = store.lease_holder(LEASE)  # type: ignore[misc]
        assert second_epoch == first_epoch + 1

        # Pause the new holder between a claim and its write, past its lease; let the last
        # hub take over; wake it up: its write must be refused by the fence.
        seen = len(lines[second])
        wait_until("a claim to pause after", lambda: "claimed" in " ".join(lines[second][seen:]))
        os.kill(hubs[second].pid, signal.SIGSTOP)
        wait_until(
            "takeover from a paused holder",
            lambda: (h := store.lease_holder(LEASE)) is not None and h[0] not in (first, second),
        )
        os.kill(hubs[second].pid, signal.SIGCONT)
        wait_until("the fence refusing", lambda: f"refused {second_epoch}" in lines[second])
        wait_until("the third holder's work", lambda: len({e for _h, e in turns(store)}) >= 3)
        history = turns(store)
        epochs = [epoch for _holder, epoch in history]
        assert epochs == sorted(epochs), "a write under an older epoch landed after a newer one"
        holders_per_epoch = {}
        for holder, epoch in history:
            assert holders_per_epoch.setdefault(epoch, holder) == holder
        assert len(set(holders_per_epoch.values())) == 3
    finally:
        for proc in hubs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        store.close()
