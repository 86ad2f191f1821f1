"""End to end over a real mosquitto: enrollment, staged rollouts, a bad version rolled back.

Five real agent daemons, the real hub service, signed bundles of models trained here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.fleet import WAIT_S, Device, Fleet, Traffic
from tests.support.agents import infer
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def serves(device: Device, version: str) -> bool:
    code, body = infer(device.url())
    return code == 200 and body["model_version"] == version


@pytest.fixture
def fleet(tmp_path: Path, mosquitto_factory) -> Iterator[Fleet]:  # type: ignore[no-untyped-def]
    broker = mosquitto_factory()
    f = Fleet(tmp_path, broker.host, broker.port)
    f.start_hub()
    yield f
    f.close()


def test_five_devices_v1_then_v2_in_phases_then_a_bad_v3_rolled_back(fleet: Fleet) -> None:
    devices = fleet.enroll(5)
    for device in devices:
        device.start()
    for device in devices:
        device.url()
    v1 = fleet.bundle(1)
    v2 = fleet.bundle(2)
    with Traffic(devices) as traffic:
        r1 = fleet.rollout(1)
        assert fleet.wait_rollout(r1, "completed", "aborted", "rolled_back") == "completed"
        assert all(fleet.runs(d, v1) for d in devices)

        r2 = fleet.rollout(2, phases="20%,100%")
        # Phase one moves one device; the others stay on v1 until it passes its gates.
        wait_until(
            "the first phase to move a device",
            lambda: any(fleet.runs(d, v2) for d in devices),
            timeout_s=WAIT_S,
        )
        first = [d for d in devices if fleet.runs(d, v2)]
        assert len(first) == 1
        assert fleet.wait_rollout(r2, "completed", "aborted", "rolled_back") == "completed"
        wait_until(
            "every device on v2", lambda: all(fleet.runs(d, v2) for d in devices), timeout_s=WAIT_S
        )
        for device in devices:
            wait_until(
                f"{device.id} to serve v2", lambda d=device: serves(d, "2"), timeout_s=WAIT_S
            )

        # v3 expects 64 features: every request the fleet sends it fails its schema check,
        # so its error rate breaks the gate in the first phase.
        v3 = fleet.bundle(3, kind="digits")
        r3 = fleet.rollout(3, phases="20%,100%")
        assert fleet.wait_rollout(r3, "rolled_back", "completed") == "rolled_back"
        status = fleet.engine.status(r3, 0.0)
        assert [p["phase"] for p in status["phases"] if p["current"]] == [1]
        moved = [row["device"] for row in status["devices"] if row["assigned_at"] is not None]
        assert len(moved) == 1
        assert any("gate failed" in e["detail"] for e in status["events"])
        wait_until(
            "every device back on v2",
            lambda: all(fleet.runs(d, v2) for d in devices),
            timeout_s=WAIT_S,
        )
        for device in devices:
            # The slot pointer moves first, then the loaded model is swapped in.
            wait_until(
                f"{device.id} to serve v2 again", lambda d=device: serves(d, "2"), timeout_s=WAIT_S
            )
        mover = next(d for d in devices if d.id == moved[0])
        states = [e["state"] for e in fleet.events(mover) if e.get("bundle_sha256") == v3.sha256]
        assert "committed" in states  # it did run v3 before the hub pulled it back
        assert traffic.codes.get(200, 0) > 0
