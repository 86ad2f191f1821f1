"""Three ``hub serve`` processes on one PostgreSQL store and one mosquitto; ``kill -9`` of
the one holding the singleton work: another takes over within 30 s with the next epoch,
no transition or directive is recorded twice, and the new holder carries the work on.
Telemetry sent before and after the kill, spread over the hubs by the shared
subscription, lands once in the fleet tables they share, one ack cursor per device."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from tests.hub.hubkit import make_hub, window
from tests.support.brokers import ProbeClient
from tests.support.bundles import placeholder_bundle
from tests.support.hub_cluster import HubCluster, directive_counts
from tests.support.waiting import wait_until

from edgefleet.core.cli.main import main
from edgefleet.core.protocol import (
    TelemetryBatch,
    TelemetryRecord,
    Topics,
    WindowSummary,
    encode_json,
)
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.core.testing.postgres import PostgresServer
from edgefleet.hub.rollout.machine import RolloutState
from edgefleet.hub.singleton import LEASE
from edgefleet.hub.store import DeviceRecord, HubStore, open_store

pytestmark = [pytest.mark.postgres, pytest.mark.mqtt, pytest.mark.slow]
DEVICES = [f"pi-{i}" for i in range(6)]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    out, err = capsys.readouterr()
    assert done.value.code in (0, None), err
    return out


def state_of(store: HubStore, rollout_id: str) -> RolloutState:
    record = store.get_rollout(rollout_id)
    assert record is not None
    return record.status.state


def send_telemetry(port: int, seqs: range, devices: list[str] = DEVICES) -> None:
    """The devices' windows ``seqs``, one batch per device, as the agents send them."""
    sender = ProbeClient(port)
    assert sender.connect() == 0
    try:
        for device in devices:
            records = [
                TelemetryRecord.of_window(
                    s, WindowSummary.from_dict(window("digits", 1, requests=5))
                )
                for s in seqs
            ]
            batch = TelemetryBatch.of(device, records, after_seq=seqs[0] - 1)
            sender.client.publish(
                Topics().telemetry(device), encode_json(batch), qos=1
            ).wait_for_publish(10)
    finally:
        sender.client.disconnect()
        sender.client.loop_stop()


def fleet_rows(url: str) -> tuple[int, int, dict[str, int]]:
    """(fleet records, distinct (device, seq), ack cursor per device) in the shared tables."""
    with psycopg.connect(url) as conn:
        total, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT (device, seq)) FROM fleet_records"
        ).fetchone()  # type: ignore[misc]
        cursors = conn.execute("SELECT device, contiguous FROM fleet_cursor").fetchall()
    return int(total), int(distinct), {d: int(c) for d, c in cursors}


def test_kill_9_of_the_holder_hands_the_work_to_another_hub(
    tmp_path: Path,
    mosquitto_factory: Callable[..., MosquittoBroker],
    postgres_server: PostgresServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broker = mosquitto_factory()
    url = postgres_server.dsn(postgres_server.create_database())
    first = make_hub(tmp_path / "keys-home")
    cluster = HubCluster(
        tmp_path,
        url,
        broker.port,
        first.hub_key,
        first.publisher_key.with_suffix(".pub"),
        tmp_path / "bundles",
    )
    configs = cluster.configs
    store = open_store(url)
    for device in DEVICES:
        store.add_device(DeviceRecord(device, "rpi4-arm64", "$7$1$a$b", 1.0))
    for model in ("digits", "iris"):
        bundle = placeholder_bundle(tmp_path / f"{model}.efb", first.publisher_key, model=model)
        cli(capsys, "hub", "publish", str(bundle.path), "--config", str(configs[0]))

    try:
        cluster.start()

        created = cli(capsys, "hub", "rollout", "create", "digits:1", "--to", "all",
                      "--phases", "50%,100%", "--id", "r1", "--config", str(configs[0]))  # fmt: skip
        assert "r1" in created
        wait_until(
            "the holder starting r1",
            lambda: state_of(store, "r1") is RolloutState.RUNNING,
            timeout_s=60.0,
        )
        holder, epoch, victim = cluster.holder(store)
        pid = victim.pid
        phase_1 = {r.device_id for r in store.list_rollout_devices("r1") if r.phase == 0}
        assert len(phase_1) == 3
        wait_until(
            "phase 1 directives",
            lambda: directive_counts(url) == dict.fromkeys(phase_1, 1),
            timeout_s=60.0,
        )
        send_telemetry(broker.port, range(1, 3))  # spread over the three hubs
        wait_until("telemetry in", lambda: fleet_rows(url)[0] == 2 * len(DEVICES), timeout_s=60.0)

        cluster.kill_holder(store)  # kill -9, no goodbye
        assert cluster.wait_takeover(store, holder, timeout_s=30) < 30
        new_holder, new_epoch, _ = store.lease_holder(LEASE)  # type: ignore[misc]
        assert new_epoch == epoch + 1 and int(new_holder.split(":")[1]) != pid

        # The new holder carries on: a rollout created now is started by it.
        cli(capsys, "hub", "rollout", "create", "iris:1", "--to", "ids=pi-5",
            "--phases", "100%", "--id", "r2", "--config", str(configs[1]))  # fmt: skip
        wait_until(
            "r2 started", lambda: state_of(store, "r2") is not RolloutState.CREATED, timeout_s=60.0
        )
        # The dead hub's broker session still takes its share of the shared subscription:
        # like agents, resend what is not acked yet until every batch is stored.
        deadline = time.monotonic() + 60
        while missing := [d for d in DEVICES if fleet_rows(url)[2].get(d) != 4]:
            assert time.monotonic() < deadline, fleet_rows(url)
            send_telemetry(broker.port, range(3, 5), missing)
            time.sleep(1.0)
        time.sleep(1.5)  # a few more ticks of every surviving hub
        # Every (device, seq) once, whichever hub received it; one ack cursor per device
        # that followed every hub's batches of that device.
        assert fleet_rows(url) == (4 * len(DEVICES), 4 * len(DEVICES), dict.fromkeys(DEVICES, 4))
        for rollout_id in ("r1", "r2"):
            events = [e.event for e in store.rollout_events(rollout_id)]
            assert len(events) == len(set(events)), events  # every transition once
        # One directive per assignment change: phase 1 of r1, then pi-5's iris.
        expected = {d: (d in phase_1) + (d == "pi-5") for d in DEVICES}
        assert directive_counts(url) == {d: n for d, n in expected.items() if n}
    finally:
        cluster.stop()
        store.close()
