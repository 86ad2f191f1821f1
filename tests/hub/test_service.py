"""The hub service over a real mosquitto with the generated password file and ACL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from tests.hub.hubkit import window
from tests.hub.servicekit import (
    HUB_PASSWORD,
    Hub,
    T,
    directive_from,
    make_service_hub,
)
from tests.support.brokers import ProbeClient
from tests.support.waiting import wait_until

from edgefleet.core.protocol import (
    Ack,
    DeviceState,
    FetchRequest,
    Status,
    TelemetryBatch,
    TelemetryRecord,
    decode_chunk,
    encode_json,
)
from edgefleet.core.protocol.messages import ModelState, SlotInfo
from edgefleet.core.protocol.telemetry import DeploymentEvent, WindowSummary
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.hub.commands.serve_cmd import start_embedded
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.rollout.machine import RolloutState
from edgefleet.hub.store import DesiredAssignment

GATES = ["min_devices=1", "min_inferences=10", "bake=0"]


@pytest.fixture
def hub(
    tmp_path: Path,
    mosquitto_factory: Callable[..., MosquittoBroker],
    store_location: Path | str,  # [sqlite] and [postgresql]: tests/hub/conftest.py
) -> Iterator[Hub]:
    url = store_location if isinstance(store_location, str) else None
    h = make_service_hub(tmp_path, mosquitto_factory, store_url=url)
    yield h
    h.close()


@pytest.mark.mqtt
def test_state_tracking_from_status_state_and_lwt(hub: Hub) -> None:
    hub.start()
    offline = encode_json(Status(online=False))
    device = hub.device("pi-a", will=(T.status("pi-a"), offline))
    device.publish(T.status("pi-a"), encode_json(Status(online=True, at=time.time())), retain=True)
    wait_until("online", lambda: hub.store.get_device("pi-a").online)  # type: ignore[union-attr]
    state = DeviceState(
        device="pi-a",
        agent_version="0.1.0",
        profile="rpi4-arm64",
        at=time.time(),
        models=(ModelState("digits", active=SlotInfo(1, "ab" * 32)),),
        directive_error="expired directive: seq 3",
    )
    device.publish(T.state("pi-a"), encode_json(state), retain=True)
    wait_until("state", lambda: hub.store.get_device("pi-a").state.get("models"))  # type: ignore[union-attr]
    stored = hub.store.get_device("pi-a")
    assert stored is not None and stored.state["directive_error"] == "expired directive: seq 3"
    device.drop()  # no DISCONNECT: the broker publishes the will
    wait_until("offline from LWT", lambda: not hub.store.get_device("pi-a").online)  # type: ignore[union-attr]
    assert hub.store.get_device("pi-a").last_seen is not None  # type: ignore[union-attr]


@pytest.mark.mqtt
def test_chunks_are_served_for_assigned_bundles_only(hub: Hub) -> None:
    sha1 = hub.publish_bundle(1, size=200_000)
    sha2 = hub.publish_bundle(2)
    service = hub.start()
    RolloutEngine(hub.store).create(
        "digits", 1, "ids=pi-a", time.time(), phases_text="100%", gate_overrides=GATES
    )
    service.tick()  # starts the rollout and publishes the directive
    device = hub.device("pi-a")
    directive = directive_from(device, "pi-a", hub.trust)
    [assignment] = directive["assignments"]
    assert (assignment["bundle_sha256"], assignment["version"]) == (sha1, 1)
    size, chunk = assignment["size"], 65536
    total = -(-size // chunk)

    device.publish(T.fetch("pi-a"), encode_json(FetchRequest.for_indexes(sha2, chunk, [0])))
    device.publish(
        T.fetch("pi-a"), encode_json(FetchRequest.for_indexes(sha1, chunk, range(total)))
    )
    frames = {}
    for topic, payload in device.wait_for(
        lambda t, p: t == T.chunk("pi-a") and decode_chunk(p).index == total - 1
    ):
        if topic == T.chunk("pi-a"):
            frame = decode_chunk(payload)
            assert frame.bundle_sha256 == sha1  # nothing of the unassigned bundle
            frames[frame.index] = frame.payload
    data = b"".join(frames[i] for i in range(total))
    assert len(data) == size and hashlib.sha256(data).hexdigest() == sha1
    assert service.counters["fetch_denied"] == 1
    assert service.counters["chunks.sent"] == total


@pytest.mark.mqtt
def test_the_chunk_server_follows_assignment_changes(hub: Hub) -> None:
    sha1 = hub.publish_bundle(1)
    sha2 = hub.publish_bundle(2)
    service = hub.start()
    store = hub.store
    size1 = store.get_bundle(sha1).size  # type: ignore[union-attr]
    size2 = store.get_bundle(sha2).size  # type: ignore[union-attr]
    at = time.time()
    store.set_assignment("pi-a", "digits", DesiredAssignment("digits", sha1, 1, size1, "r1"), at)
    assert service.serve_fetch("pi-a", FetchRequest.for_indexes(sha1, 65536, [0])) == 1
    # Assigned after the device's bundles were cached: served at once, no tick needed.
    store.set_assignment("pi-a", "other", DesiredAssignment("other", sha2, 2, size2, "r2"), at)
    assert service.serve_fetch("pi-a", FetchRequest.for_indexes(sha2, 65536, [0])) == 1
    # Unassigned: refused once a tick has seen the change.
    store.set_assignment("pi-a", "digits", None, at)
    service.tick()
    assert service.serve_fetch("pi-a", FetchRequest.for_indexes(sha1, 65536, [0])) == 0
    assert service.serve_fetch("ghost", FetchRequest.for_indexes(sha1, 65536, [0])) == 0
    assert service.counters["fetch_denied"] == 1
    assert service.counters["unknown_device"] == 1


@pytest.mark.mqtt
def test_telemetry_is_stored_once_and_acked(hub: Hub) -> None:
    service = hub.start()
    device = hub.device("pi-a")

    def batch(seqs: range) -> bytes:
        records = [
            TelemetryRecord.of_window(s, WindowSummary.from_dict(window("digits", 1, requests=10)))
            for s in seqs
        ]
        return encode_json(TelemetryBatch.of("pi-a", records))

    acks = []
    for seqs in (range(1, 4), range(1, 4), range(4, 6)):
        device.publish(T.telemetry("pi-a"), batch(seqs))
        [*_, (_t, payload)] = device.wait_for(lambda t, p: t == T.ack("pi-a"))
        acks.append(Ack.from_dict(json.loads(payload)).highest_seq)
    assert acks == [3, 3, 5]
    assert len(list(hub.store.telemetry_windows("digits", [1], ["pi-a"], 0.0))) == 5
    assert service.counters["telemetry.duplicates"] == 3


@pytest.mark.mqtt
def test_malformed_and_oversized_payloads_are_counted_not_fatal(hub: Hub) -> None:
    service = hub.start()
    device = hub.device("pi-a")
    garbage = [b"not json", b"{}", b"\xff\xfe", b"[1,2]", b'{"v": 99}', b'{"v":1,"online":"yes"}']
    kinds = {"status": T.status, "state": T.state, "fetch": T.fetch, "telemetry": T.telemetry}
    for topic_of in kinds.values():
        for payload in garbage:
            device.publish(topic_of("pi-a"), payload)
        device.publish(topic_of("pi-a"), b"{" + b" " * 20_000 + b"}")
    # Another device's telemetry inside pi-a's batch is refused too.
    other = TelemetryBatch.of(
        "pi-b",
        [TelemetryRecord.of_window(1, WindowSummary.from_dict(window("digits", 1, requests=1)))],
    )
    device.publish(T.telemetry("pi-a"), encode_json(other))
    # The hub account may write anywhere: an unenrolled device id is ignored.
    hub_probe = ProbeClient(hub.port, "edgefleet-hub", HUB_PASSWORD)
    assert hub_probe.connect() == 0
    hub.clients.append(hub_probe)
    hub_probe.publish(T.status("ghost"), encode_json(Status(online=True)))
    # Still alive: a valid message afterwards is handled.
    device.publish(T.status("pi-a"), encode_json(Status(online=True)))
    wait_until("valid status after garbage", lambda: hub.store.get_device("pi-a").online)  # type: ignore[union-attr]
    counts = service.counters
    for kind in kinds:
        assert counts[f"oversized.{kind}"] == 1, counts
        extra = 1 if kind == "telemetry" else 0  # the batch naming another device
        assert counts[f"malformed.{kind}"] == len(garbage) + extra, counts
    assert counts["unknown_device"] == 1
    service.tick()  # saves the counters
    assert hub.store.counters()["oversized.state"] == 1


@pytest.mark.mqtt
def test_rollout_state_survives_a_hub_restart_mid_phase(hub: Hub) -> None:
    sha = hub.publish_bundle(1)
    service = hub.start()
    rollout = RolloutEngine(hub.store).create(
        "digits", 1, "all", time.time(), phases_text="1,100%", gate_overrides=GATES
    )
    service.tick()
    [first] = rollout.plan.devices_of(0)
    rest = rollout.plan.devices_of(1)
    first_client = hub.device(first)
    assert directive_from(first_client, first, hub.trust)["assignments"][0]["bundle_sha256"] == sha

    service = hub.restart()  # the hub goes down in the middle of phase 1
    assert hub.store.get_rollout(rollout.rollout_id).status.phase == 0  # type: ignore[union-attr]
    event = DeploymentEvent(
        "digits", 1, "committed", time.time(), rollout_id=rollout.rollout_id, bundle_sha256=sha
    )
    records = [
        TelemetryRecord.of_event(1, event),
        TelemetryRecord.of_window(2, WindowSummary.from_dict(window("digits", 1, requests=50))),
    ]
    first_client.publish(T.telemetry(first), encode_json(TelemetryBatch.of(first, records)))
    first_client.wait_for(lambda t, p: t == T.ack(first))
    service.tick()
    status = hub.store.get_rollout(rollout.rollout_id).status  # type: ignore[union-attr]
    # The deployment event also wakes the service's own tick thread, so phase 1 may
    # already have been judged (the first device's evidence counts): it went on from
    # where it was before the restart, never back to phase 0 and never past phase 1.
    assert status.phase == 1
    assert status.state in (RolloutState.RUNNING, RolloutState.COMPLETED)
    for device_id in rest:
        client = hub.device(device_id)
        assert directive_from(client, device_id, hub.trust)["assignments"][0]["version"] == 1


@pytest.mark.mqtt
def test_directives_are_restored_after_a_broker_lost_them(hub: Hub) -> None:
    sha = hub.publish_bundle(1)
    service = hub.start()
    RolloutEngine(hub.store).create(
        "digits", 1, "ids=pi-b", time.time(), phases_text="100%", gate_overrides=GATES
    )
    service.tick()
    assert hub.store.latest_directive("pi-b").published_at is not None  # type: ignore[union-attr]
    hub.broker.restart()  # no persistence: the retained directive is gone
    wait_until("hub reconnect", lambda: service.transport.stats.connects >= 2)
    service.tick()
    device = hub.device("pi-b")
    assert directive_from(device, "pi-b", hub.trust)["assignments"][0]["bundle_sha256"] == sha


@pytest.mark.mqtt
def test_directives_are_restored_without_waiting_for_a_tick(hub: Hub) -> None:
    sha = hub.publish_bundle(1)
    service = hub.start()
    RolloutEngine(hub.store).create(
        "digits", 1, "ids=pi-c", time.time(), phases_text="100%", gate_overrides=GATES
    )
    service.tick()
    published = hub.store.latest_directive("pi-c").published_at  # type: ignore[union-attr]
    assert published is not None
    hub.broker.restart()  # no persistence; tick_s is an hour, so only the reconnect can act
    wait_until(
        "directive published again after the reconnect",
        lambda: hub.store.latest_directive("pi-c").published_at != published,  # type: ignore[union-attr]
    )
    device = hub.device("pi-c")
    assert directive_from(device, "pi-c", hub.trust)["assignments"][0]["bundle_sha256"] == sha


@pytest.mark.mqtt
def test_embedded_amqtt_broker_smoke(hub: Hub) -> None:
    from edgefleet.core.testing.brokers import free_port

    port = free_port()
    hub.config = replace(hub.config, broker=replace(hub.config.broker, port=port))
    hub.port = port
    broker = start_embedded(hub.config, hub.store, HUB_PASSWORD)
    try:
        service = hub.start()
        assert ProbeClient(port).connect() != 0  # anonymous refused
        assert ProbeClient(port, "pi-a", "wrong").connect() != 0
        a = hub.device("pi-a")
        a.publish(T.status("pi-b"), encode_json(Status(online=True)))  # not pi-a's topic
        a.publish(T.status("pi-a"), encode_json(Status(online=True)))
        wait_until("status via amqtt", lambda: hub.store.get_device("pi-a").online)  # type: ignore[union-attr]
        assert hub.store.get_device("pi-b").online is False  # type: ignore[union-attr]
        a.subscribe(T.desired("pi-b"))
        a.subscribe(f"{T.root}/#")
        hub_probe = ProbeClient(port, "edgefleet-hub", HUB_PASSWORD)
        assert hub_probe.connect() == 0
        hub.clients.append(hub_probe)
        hub_probe.publish(T.desired("pi-b"), b"for-b")
        hub_probe.publish(T.desired("pi-a"), b"for-a")
        seen = a.wait_for(lambda t, p: p == b"for-a")
        assert all(t.startswith(T.root + "/dev/pi-a/") for t, _ in seen), seen
        assert service.counters.get("malformed.status", 0) == 0
        service.stop()
        hub.service = None
    finally:
        broker.stop()


@pytest.mark.mqtt
def test_hub_serve_command_runs_and_stops_on_sigterm(hub: Hub, tmp_path: Path) -> None:
    text = hub.fx.config_path.read_text().replace("[broker]\n", f"[broker]\nport = {hub.port}\n", 1)
    hub.fx.config_path.write_text(text)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.core.cli.main",
            "hub",
            "serve",
            "--config",
            str(hub.fx.config_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        device = hub.device("pi-c")
        device.publish(T.status("pi-c"), encode_json(Status(online=True)), retain=True)
        wait_until("status via hub serve", lambda: hub.store.get_device("pi-c").online)  # type: ignore[union-attr]
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        assert b"serving edgefleet/v1" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
