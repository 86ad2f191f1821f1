"""The same flow on the embedded amqtt broker (no shared subscriptions, MQTT 3.1.1 only)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.fleet import WAIT_S, Device, Fleet, Traffic
from tests.support.agents import infer
from tests.support.waiting import wait_until

from edgefleet.core.testing.brokers import AmqttBroker

pytestmark = [pytest.mark.slow]


@pytest.fixture
def fleet(tmp_path: Path, amqtt_broker: AmqttBroker) -> Iterator[Fleet]:
    f = Fleet(tmp_path, amqtt_broker.host, amqtt_broker.port)
    f.start_hub()
    yield f
    f.close()


@pytest.mark.mqtt
def test_enroll_roll_out_and_upgrade_over_amqtt(fleet: Fleet) -> None:
    devices = fleet.enroll(2)
    for device in devices:
        device.start()
    for device in devices:
        device.url()
    v1 = fleet.bundle(1, pad_bytes=100 * 1024)
    v2 = fleet.bundle(2, pad_bytes=100 * 1024)
    with Traffic(devices):
        assert fleet.wait_rollout(fleet.rollout(1), "completed", "aborted") == "completed"
        assert all(fleet.runs(d, v1) for d in devices)
        r2 = fleet.rollout(2, phases="50%,100%")
        assert fleet.wait_rollout(r2, "completed", "aborted") == "completed"
    wait_until(
        "both devices on v2", lambda: all(fleet.runs(d, v2) for d in devices), timeout_s=WAIT_S
    )
    for device in devices:

        def serves_v2(d: Device = device) -> bool:
            code, body = infer(d.url())
            return code == 200 and body["model_version"] == "2"

        wait_until(f"{device.id} to serve v2", serves_v2, timeout_s=WAIT_S)
        states = [e["state"] for e in fleet.events(device)]
        assert "downloaded" in states and "committed" in states
