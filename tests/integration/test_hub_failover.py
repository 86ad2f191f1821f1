"""Three ``hub serve`` processes on one PostgreSQL store and one mosquitto; a three-phase
rollout over 5 real ``agent run`` processes and 45 simulated devices with telemetry
flowing; ``kill -9`` of the hub holding the singleton lease during phase 2 (started again
once the rollout ended, as its service manager would). Nothing is lost or doubled and
the rollout finishes (tests/support/failover.py runs the scenario;
``bench/hub_scale.py --scenario failover`` runs it with 50 agents)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.support.failover import FailoverSettings, run_failover
from tests.support.hub_cluster import highest_contiguous

from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.core.testing.postgres import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.mqtt, pytest.mark.subprocess, pytest.mark.slow]
SETTINGS = FailoverSettings(agents=5, simulated=45, tick_s=0.5, window_s=1, timeout_s=120.0)


def test_kill_9_of_the_lease_holder_during_a_rollout_loses_and_doubles_nothing(
    tmp_path: Path,
    mosquitto_factory: Callable[..., MosquittoBroker],
    postgres_server: PostgresServer,
) -> None:
    broker = mosquitto_factory()
    url = postgres_server.dsn(postgres_server.create_database())
    run = run_failover(tmp_path, url, broker.port, SETTINGS)
    print(f"failover timings: {run.timings}, takeover_s {run.takeover_s}")
    devices = run.devices
    assert len(devices) == 50

    # The holder died in phase 2; another hub took over with the next epoch.
    assert run.killed_in_phase == 2
    assert run.new_epoch == run.old_epoch + 1

    # The rollout finishes, every transition recorded once, phases 1 -> 2 -> 3 in order.
    assert run.rollout_state == "completed"
    assert run.transitions == ["created", "start:1", "advance:2", "advance:3", "complete"]

    # One directive per assignment change: each device moved once, signed once.
    assert run.assignment_changes == dict.fromkeys(devices, 1)
    assert run.directives == run.assignment_changes
    assert all(run.accepted[d] == 1 for d in run.accepted)  # what the simulated ones took

    # At most one open alert per key.
    assert all(n == 1 for n in run.open_alerts.values()), run.open_alerts

    # Every (device, seq) at most once in the hub store.
    for device in devices:
        seqs = run.stored.get(device, [])
        assert len(seqs) == len(set(seqs)), f"{device}: a seq stored twice in the hub store"

    # The fleet tables are the store's, shared by the three hubs.
    assert run.shared_fleet_tables

    # Nothing lost: each device's stored seqs are exactly its first .. the highest it
    # issued (no agent gave records up on purpose at this size), nothing left unacked.
    assert {d: n for d, n in run.unacked.items() if n} == {}
    for device in devices:
        assert run.given_up.get(device, 0) == 0
        first = run.first_seq[device]
        assert sorted(run.stored.get(device, [])) == list(range(first, run.issued[device] + 1))

    # Every (device, seq) exactly once in the fleet tables, the same set as the hub store.
    doubled = {key: n for key, n in run.fleet_records.items() if n > 1}
    assert doubled == {}, f"{len(doubled)} (device, seq) held more than once in the fleet tables"
    store_keys = {(d, s) for d, seqs in run.stored.items() for s in seqs}
    assert set(run.fleet_records) == store_keys

    # Ack cursors: the fleet tables' cursor of each device is its highest contiguous stored
    # seq, and it is what the simulated devices were acked last.
    for device in devices:
        top = highest_contiguous(run.stored.get(device, []), run.first_seq[device])
        assert run.fleet_cursors.get(device, []) == ([top] if top is not None else []), device
        if device in run.acked:
            assert run.acked[device] == top == run.issued[device], device
