"""A disk that fills up during an install: the old version serves, nothing is left behind,
the install is tried again with growing waits, one log line each, and the hub sees why.

Real parts: the hub service, an agent daemon subprocess, Mosquitto, and a real full file
system: a small tmpfs the test mounts over the device's ``staging`` directory (where a
bundle is extracted), so every extraction of the new version fails with ENOSPC. The
test needs root for the mount and unmounts it whatever happens.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.agent.full_disk import small_disk
from tests.integration.fleet import WAIT_S, Device, Fleet, Traffic
from tests.support.agents import infer
from tests.support.waiting import wait_until

from edgefleet.core.testing.brokers import MosquittoBroker

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

TMPFS_BYTES = 128 * 1024
FIRST_RETRY_S = 1.0


@pytest.fixture
def fleet(tmp_path: Path, mosquitto_factory: Any) -> Iterator[Fleet]:
    broker: MosquittoBroker = mosquitto_factory()
    f = Fleet(tmp_path, broker.host, broker.port)
    f.start_hub()
    yield f
    f.close()


def deployment(fleet: Fleet, device: Device) -> dict[str, Any]:
    for entry in fleet.device_state(device).get("models", []):
        if entry.get("name") == "iris":
            return dict(entry.get("deployment") or {})
    return {}


def telemetry_seqs(fleet: Fleet, device: Device) -> list[int]:
    with contextlib.closing(sqlite3.connect(fleet.config.store.path, timeout=10)) as db:
        rows = db.execute(
            "SELECT seq FROM fleet_records WHERE device = ? ORDER BY seq", (device.id,)
        ).fetchall()
    return [int(row[0]) for row in rows]


def disk_full_events(fleet: Fleet, device: Device) -> list[dict[str, Any]]:
    return [e for e in fleet.events(device) if e.get("state") == "failed_disk_full"]


def test_a_full_disk_during_install_is_retried_with_backoff_and_reported(
    fleet: Fleet,
) -> None:
    (device,) = fleet.enroll(1)
    device.env["EDGEFLEET_SYNC_DISK_FULL_RETRY_S"] = str(FIRST_RETRY_S)
    v1 = fleet.bundle(1)
    device.start()
    url = device.url()
    with Traffic([device]):  # the gates want inferences of the new version
        fleet.wait_rollout(fleet.rollout(1), "completed")
    assert fleet.runs(device, v1)
    # The new version does not fit into the extraction directory.
    v2 = fleet.bundle(2, pad_bytes=4 * TMPFS_BYTES)
    staging = device.state_dir / "staging"
    before = len(telemetry_seqs(fleet, device))
    with small_disk(staging, TMPFS_BYTES), Traffic([device]):
        fleet.rollout(2)
        # The hub's device view (what `hub devices` prints) names the reason.
        reported = wait_until(
            "the hub to show failed_disk_full",
            lambda: (
                deployment(fleet, device).get("state") == "failed_disk_full"
                and deployment(fleet, device)
            ),
            timeout_s=WAIT_S,
        )
        assert reported["version"] == 2 and "No space left on device" in reported["reason"]
        events = wait_until(
            "three disk-full attempts at the hub",
            lambda: (found := disk_full_events(fleet, device))[2:] and found,
            timeout_s=WAIT_S,
        )
        # Each attempt waits longer than the one before (the backoff policy).
        waits = [e["retry_in_s"] for e in events[:3]]
        assert waits[0] < waits[2], waits
        assert all(e.get("bundle_sha256") == v2.sha256 for e in events)
        # Serving went on with the old version the whole time.
        code, body = infer(url)
        assert code == 200 and body["model_version"] == "1"
        # Nothing half-written is left on the full disk between attempts (the next one
        # starts seconds after the third event reached the hub).
        assert list(staging.iterdir()) == []
        # Telemetry went on while the disk was full (windows of the old version).
        assert len(telemetry_seqs(fleet, device)) > before + len(events)
    # One line per attempt in the agent's log, and no traceback.
    log = device.log.read_text(errors="replace")
    assert "Traceback" not in log, device.log_tail()
    attempts = len(disk_full_events(fleet, device))
    lines = [line for line in log.splitlines() if "disk full" in line]
    assert attempts <= len(lines) <= attempts + 1, lines
    # Space is back: the next attempt installs the new version (no re-download needed).
    wait_until("v2 to run once the disk has room", lambda: fleet.runs(device, v2), timeout_s=WAIT_S)
    code, body = infer(url)
    assert code == 200 and body["model_version"] == "2"
    # The handed-over bundle was never copied: the sync's download is gone after the install
    # and no inbox was used.
    state = device.state_dir
    assert list((state / "sync" / "downloads").glob("*.efb")) == []
    assert not (state / "inbox").exists() or list((state / "inbox").iterdir()) == []
    assert list((state / "staging").iterdir()) == []
    # Telemetry lost nothing: the hub holds every record the agent numbered, no gaps.
    seqs = telemetry_seqs(fleet, device)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
