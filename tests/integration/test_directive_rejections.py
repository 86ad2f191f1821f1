"""Directives the agent must refuse, over a real broker: it keeps serving and the hub learns why.

The device runs v1 from a real rollout; then someone with broker access publishes bad
directives on its retained desired topic (the broker ACL normally prevents that; this
is the defence behind it), and finally the hub itself serves bytes that do not match
the signed bundle hash.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.integration.fleet import WAIT_S, Device, Fleet, Traffic
from tests.support.agents import infer
from tests.support.brokers import ProbeClient
from tests.support.waiting import wait_until

from edgefleet.core.canonical import canonical_json
from edgefleet.core.directive import Assignment, Directive, sign_directive
from edgefleet.core.protocol import Topics

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


@pytest.fixture
def fleet(tmp_path: Path, mosquitto_factory) -> Iterator[Fleet]:  # type: ignore[no-untyped-def]
    broker = mosquitto_factory()
    f = Fleet(tmp_path, broker.host, broker.port)
    f.start_hub()
    yield f
    f.close()


def still_serves_v1(device: Device) -> None:
    code, body = infer(device.url())
    assert code == 200 and body["model_version"] == "1"


def reaches_hub(fleet: Fleet, device: Device, reason: str) -> None:
    """The reason shows in the device's retained state and in a stored event."""
    wait_until(
        f"the hub to see {reason!r} in the state",
        lambda: reason in (fleet.device_state(device).get("directive_error") or ""),
        timeout_s=WAIT_S,
    )
    wait_until(
        f"the hub to store a {reason!r} event",
        lambda: any(
            e.get("state") == "directive_rejected" and reason in (e.get("reason") or "")
            for e in fleet.events(device)
        ),
        timeout_s=WAIT_S,
    )


def test_bad_directives_and_a_bad_bundle_are_refused_while_serving(fleet: Fleet) -> None:
    (device,) = fleet.enroll(1)
    device.start()
    device.url()
    v1 = fleet.bundle(1)
    with Traffic([device]):
        r1 = fleet.rollout(1)
        assert fleet.wait_rollout(r1, "completed") == "completed"
    first = fleet.store.latest_directive(device.id)
    assert first is not None
    accepted_seq = fleet.device_state(device)["directive_seq"]
    assert accepted_seq == first.seq

    assignment = Assignment("iris", v1.sha256, 1, v1.size, r1)
    probe = ProbeClient(fleet.config.broker.port)
    assert probe.connect() == 0
    desired = Topics().desired(device.id)

    def publish(directive: Directive, key: Ed25519PrivateKey) -> None:
        probe.publish(desired, canonical_json(sign_directive(directive, key)), retain=True)

    now = time.time()
    seq = accepted_seq + 1000
    publish(Directive(device.id, seq, now, now + 3600, (assignment,)), Ed25519PrivateKey.generate())
    reaches_hub(fleet, device, "unknown key")
    still_serves_v1(device)

    publish(Directive("pi-99", seq + 1, now, now + 3600, (assignment,)), fleet.hub_key)
    reaches_hub(fleet, device, "another device")
    still_serves_v1(device)

    publish(Directive(device.id, seq + 2, now - 7200, now - 3600, (assignment,)), fleet.hub_key)
    reaches_hub(fleet, device, "expired directive")
    still_serves_v1(device)

    # The hub re-signs (a newer seq); the old, validly signed envelope replayed is refused.
    fleet.hub_issue(device.id)
    wait_until(
        "the device to accept the re-signed directive",
        lambda: fleet.device_state(device).get("directive_seq", 0) > first.seq,
        timeout_s=WAIT_S,
    )
    probe.publish(desired, canonical_json(dict(first.envelope)), retain=True)
    reaches_hub(fleet, device, "replayed directive")
    still_serves_v1(device)
    probe.close()

    # A hub whose stored bundle was damaged: the bytes do not hash to the signed sha256.
    v2 = fleet.bundle(2)
    stored = fleet.bundles.path_for(v2.sha256)
    stored.write_bytes(bytes(reversed(stored.read_bytes())))
    r2 = fleet.rollout(2)

    def rejected() -> dict | None:
        for e in fleet.events(device):
            if e.get("state") == "rejected" and e.get("bundle_sha256") == v2.sha256:
                return e
        return None

    event = wait_until("the hash mismatch to reach the hub", rejected, timeout_s=WAIT_S)
    assert "bundle hash mismatch" in event["reason"] and event["rollout_id"] == r2
    # The failed install breaks the rollout's failure-share gate: the hub aborts it.
    assert fleet.wait_rollout(r2, "aborted", "rolled_back") in ("aborted", "rolled_back")
    details = [e["detail"] for e in fleet.engine.status(r2, time.time())["events"]]
    assert any("gate failed" in d and "max_failure_share" in d for d in details), details
    still_serves_v1(device)
    assert fleet.runs(device, v1)
    assert not list((device.state_dir / "sync" / "downloads").iterdir())
