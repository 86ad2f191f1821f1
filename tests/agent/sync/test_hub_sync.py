"""HubSync's logic over the in-memory broker (no worker thread: the test drives it).

Real parts: the telemetry buffer (SQLite), signatures, files in a temp state dir.
Faked: the broker (MemoryBroker), the hub (FakeHub) and the deployment driver.
The same flows run against mosquitto, the real hub and the real daemon in
tests/integration.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.agent.sync.fakes import (
    DEVICE,
    Bundle,
    FakeDeployer,
    FakeHub,
    bundle,
    device_client,
    settings,
)

from edgefleet.agent.sync import DeployOutcome, HubSync
from edgefleet.agent.sync import download as download_module
from edgefleet.agent.sync.checker import DirectiveCheckUnavailable, InProcessDirectiveChecker
from edgefleet.agent.sync.reconcile import DONE, FAILED, WAITING, InstalledModel, key_of
from edgefleet.agent.telemetry.buffer import TelemetryBuffer
from edgefleet.core.mqtt.backoff import BackoffPolicy
from edgefleet.core.protocol import Topics
from edgefleet.core.testing.memory_mqtt import MemoryBroker


@dataclass
class Rig:
    broker: MemoryBroker
    hub: FakeHub
    deployer: FakeDeployer
    buffer: TelemetryBuffer
    root: Path
    clock: list[float]
    sync: HubSync | None = None

    def start(self, **overrides: object) -> HubSync:
        self.sync = HubSync(
            settings(**overrides),
            device_client(self.broker),
            self.hub.trust,
            self.deployer,
            self.buffer,
            self.root / "sync",
            clock=lambda: self.clock[0],
        )
        self.sync.start(threaded=False)
        self.settle()
        return self.sync

    def restart(self, **overrides: object) -> HubSync:
        assert self.sync is not None
        self.sync.stop()
        return self.start(**overrides)

    def settle(self, rounds: int = 50) -> None:
        assert self.sync is not None
        for _ in range(rounds):
            handled = self.sync.drain()
            self.sync.tick(self.clock[0])
            if not handled and not self.sync.drain():
                return

    def advance(self, seconds: float) -> None:
        self.clock[0] += seconds
        self.settle()

    def catalogue(self, *bundles: Bundle) -> None:
        self.deployer.catalogue = {b.sha: (b.model, b.version) for b in bundles}
        for b in bundles:
            self.hub.add(b)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    broker = MemoryBroker()
    buffer = TelemetryBuffer(tmp_path / "telemetry.db", 1 << 20)
    r = Rig(broker, FakeHub(broker), FakeDeployer(), buffer, tmp_path, [time.time()])
    yield r
    if r.sync is not None:
        r.sync.stop()
    buffer.close()


def test_a_directive_is_fetched_verified_and_handed_over(rig: Rig) -> None:
    v1 = bundle(size=10_000)
    rig.catalogue(v1)
    sync = rig.start()
    rig.hub.publish_directive(rig.hub.directive(v1.assignment()))
    rig.settle()
    assert [r["sha"] for r in rig.deployer.requests] == [v1.sha]
    assert [r["rollout_id"] for r in rig.deployer.requests] == [v1.assignment().rollout_id]
    assert rig.deployer.received["req-1"] == v1.data
    assert rig.hub.chunks_sent[v1.sha] == 10  # every chunk exactly once
    assert sync.ledger[key_of(v1.assignment())].state == DONE
    state = rig.hub.state()
    model = state.model("iris")
    assert model.active.bundle_sha256 == v1.sha and model.active.version == 1
    assert state.directive_seq == 1 and state.directive_error is None
    downloaded = [e for e in rig.hub.events() if e["state"] == "downloaded"]
    assert downloaded and downloaded[0]["transfer"]["duplicate_bytes"] == 0
    assert rig.broker.retained(Topics().status(DEVICE)) is not None
    # Nothing is left behind in the download directory.
    assert list((rig.root / "sync" / "downloads").iterdir()) == []


def test_the_retained_directive_redelivered_on_reconnect_is_not_a_replay(rig: Rig) -> None:
    v1 = bundle()
    rig.catalogue(v1)
    sync = rig.start()
    rig.hub.publish_directive(rig.hub.directive(v1.assignment()))
    rig.settle()
    rig.broker.cut(DEVICE)
    rig.broker.restore(DEVICE)
    rig.settle()
    rig.restart()
    sync = rig.sync
    assert sync is not None
    assert sync.directive_error is None
    assert not [e for e in rig.hub.events() if e["state"] == "directive_rejected"]
    assert len(rig.deployer.requests) == 1


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown_key", "unknown key"),
        ("replayed", "replayed directive"),
        ("other_device", "another device"),
        ("expired", "expired directive"),
    ],
)
def test_refused_directives_change_nothing_and_are_reported(
    rig: Rig, case: str, reason: str
) -> None:
    v1, v2 = bundle(version=1), bundle(version=2)
    rig.catalogue(v1, v2)
    sync = rig.start()
    rig.hub.publish_directive(rig.hub.directive(v1.assignment(), seq=5))
    rig.settle()
    assert rig.deployer.models["iris"].active_sha == v1.sha
    now = rig.clock[0]
    payload = {
        "unknown_key": lambda: rig.hub.directive(
            v2.assignment(), seq=6, key=Ed25519PrivateKey.generate()
        ),
        "replayed": lambda: rig.hub.directive(v2.assignment(), seq=4),
        "other_device": lambda: rig.hub.directive(v2.assignment(), seq=6, device="dev-2"),
        "expired": lambda: rig.hub.directive(
            v2.assignment(), seq=6, issued_at=now - 7200, ttl_s=3600
        ),
    }[case]()
    rig.hub.publish_directive(payload)
    rig.advance(1.0)
    assert len(rig.deployer.requests) == 1  # nothing new was installed
    assert rig.deployer.models["iris"].active_sha == v1.sha
    assert sync.accepted is not None and sync.accepted.seq == 5
    state = rig.hub.state()
    assert reason in (state.directive_error or "")
    events = [e for e in rig.hub.events() if e["state"] == "directive_rejected"]
    assert len(events) == 1 and reason in events[0]["reason"]
    # The same bad envelope delivered again is not reported twice.
    rig.broker.cut(DEVICE)
    rig.broker.restore(DEVICE)
    rig.advance(1.0)
    assert len([e for e in rig.hub.events() if e["state"] == "directive_rejected"]) == 1


def test_a_hub_serving_other_bytes_is_retried_once_then_rejected(rig: Rig) -> None:
    v1 = bundle(size=4000)
    rig.catalogue(v1)
    rig.hub.add(v1, served=bytes(4000))
    sync = rig.start()
    rig.hub.publish_directive(rig.hub.directive(v1.assignment()))
    rig.settle()
    assert rig.deployer.requests == []
    entry = sync.ledger[key_of(v1.assignment())]
    assert entry.state == FAILED and entry.attempts == 2
    assert "bundle hash mismatch" in (entry.reason or "")
    states = [e["state"] for e in rig.hub.events()]
    assert states.count("download_failed") == 1 and states.count("rejected") == 1
    deployment = rig.hub.state().model("iris").deployment
    assert deployment.state == "rejected" and "hash mismatch" in deployment.reason
    # A re-signed directive with the same assignment does not start it again.
    sent = rig.hub.chunks_sent[v1.sha]
    rig.hub.publish_directive(rig.hub.directive(v1.assignment()))
    rig.settle()
    assert rig.hub.chunks_sent[v1.sha] == sent


def test_a_restart_mid_download_fetches_no_held_chunk_again(rig: Rig) -> None:
    v1 = bundle(size=20_000)  # 20 chunks of 1 KiB, windows of 4
    rig.catalogue(v1)
    rig.hub.serve_limit = 9
    rig.start()
    rig.hub.publish_directive(rig.hub.directive(v1.assignment()))
    rig.settle()
    assert rig.deployer.requests == []
    fetched_before = len(rig.hub.fetches)
    rig.hub.serve_limit = None
    sync = rig.restart()
    assert len(rig.hub.fetches) == fetched_before  # a resumed session: chunks queued come first
    rig.advance(2.0)
    asked_after = [i for f in rig.hub.fetches[fetched_before:] for i in f.indexes()]
    held_before = set(range(8))  # persisted every 2 chunks: 0..7 of the 9 received
    assert not held_before & set(asked_after)
    assert rig.deployer.received["req-1"] == v1.data
    # Refetched: at most half a window (the chunk received after the last persist).
    assert rig.hub.chunks_sent[v1.sha] - 20 <= 2
    assert sync.ledger[key_of(v1.assignment())].state == DONE


def test_lost_requests_are_asked_again_after_the_timeout(rig: Rig) -> None:
    v1 = bundle(size=8000)
    rig.catalogue(v1)
    rig.hub.serving = False
    rig.start(request_timeout_s=5.0)
    rig.hub.publish_directive(rig.hub.directive(v1.assignment()))
    rig.settle()
    asked = len(rig.hub.fetches)
    rig.hub.serving = True
    rig.advance(1.0)
    assert len(rig.hub.fetches) == asked  # still waiting for the answer
    rig.advance(5.0)
    assert rig.deployer.requests and rig.deployer.received["req-1"] == v1.data


def test_a_signed_downgrade_to_the_previous_slot_is_a_rollback(rig: Rig) -> None:
    v1, v2 = bundle(version=1), bundle(version=2)
    rig.catalogue(v1, v2)
    rig.deployer.models["iris"] = InstalledModel(v2.sha, 2, v1.sha, 1)
    rig.start()
    rig.hub.publish_directive(
        rig.hub.directive(v1.assignment(rollout_id="r-back", allow_downgrade=True))
    )
    rig.settle()
    assert [(r["kind"], r["rollout_id"]) for r in rig.deployer.requests] == [("rollback", "r-back")]
    assert rig.hub.chunks_sent[v1.sha] == 0
    assert rig.deployer.models["iris"].active_sha == v1.sha


def test_an_unsigned_downgrade_is_refused_and_reported(rig: Rig) -> None:
    v1, v2 = bundle(version=1), bundle(version=2)
    rig.catalogue(v1, v2)
    rig.deployer.models["iris"] = InstalledModel(v2.sha, 2)
    rig.start()
    rig.hub.publish_directive(rig.hub.directive(v1.assignment()))
    rig.settle()
    assert rig.deployer.requests == [] and rig.hub.chunks_sent[v1.sha] == 0
    refused = [e for e in rig.hub.events() if e["state"] == "rejected"]
    assert refused and "downgrade refused" in refused[0]["reason"]
    assert refused[0]["rollout_id"] == "r-1" and refused[0]["bundle_sha256"] == v1.sha


def test_a_failed_deployment_is_not_retried_for_the_same_rollout(rig: Rig) -> None:
    v1, v2 = bundle(version=1), bundle(version=2)
    rig.catalogue(v1, v2)
    rig.deployer.auto = None
    sync = rig.start()
    rig.hub.publish_directive(rig.hub.directive(v2.assignment()))
    rig.settle()
    assert rig.deployer.running is not None
    # Work in progress is reported at most every 5 s (finished work at once).
    rig.advance(5.0)
    assert rig.hub.state().model("iris").deployment.state == "queued"
    rig.deployer.finish("rolled_back", "probation failed: error rate 0.5")
    rig.advance(1.0)
    entry = sync.ledger[key_of(v2.assignment())]
    assert entry.state == FAILED and entry.result == "rolled_back"
    deployment = rig.hub.state().model("iris").deployment
    assert deployment.state == "rolled_back" and deployment.rollout_id == "r-1"
    rig.hub.publish_directive(rig.hub.directive(v2.assignment()))  # re-signed, same rollout
    rig.advance(1.0)
    assert len(rig.deployer.requests) == 1


def test_a_new_assignment_drops_the_download_in_progress(rig: Rig) -> None:
    v2, v3 = bundle(version=2, size=20_000), bundle(version=3, size=3000)
    rig.catalogue(v2, v3)
    rig.hub.serve_limit = 5
    sync = rig.start()
    rig.hub.publish_directive(rig.hub.directive(v2.assignment()))
    rig.settle()
    rig.hub.serve_limit = None
    rig.hub.publish_directive(rig.hub.directive(v3.assignment(rollout_id="r-2")))
    rig.settle()
    assert [r["sha"] for r in rig.deployer.requests] == [v3.sha]
    assert not list((rig.root / "sync" / "downloads").glob(f"{v2.sha}*"))
    assert set(sync.ledger) == {key_of(v3.assignment(rollout_id="r-2"))}


def test_telemetry_is_deleted_only_after_the_hub_acked_it(rig: Rig) -> None:
    rig.hub.auto_ack = False
    sync = rig.start(ack_timeout_s=10.0)
    seqs = [
        rig.buffer.append("event", {"model": "iris", "state": "x", "at": 1.0}) for _ in range(3)
    ]
    rig.advance(0.5)
    assert [r.seq for r in rig.hub.telemetry[-1].records] == seqs
    assert len(rig.buffer.records()) == 3  # sent, not acked: still here
    rig.advance(11.0)  # no ack: sent again, same seqs
    assert len(rig.hub.telemetry) == 2
    assert [r.seq for r in rig.hub.telemetry[-1].records] == seqs
    rig.hub.auto_ack = True
    rig.advance(11.0)
    assert rig.buffer.records() == []
    assert sync.uploader is not None and sync.uploader.records_acked == 3


def test_going_offline_publishes_the_will_and_coming_back_republishes_state(rig: Rig) -> None:
    from edgefleet.core.protocol import decode_status

    rig.start()
    status_topic = Topics().status(DEVICE)
    rig.broker.cut(DEVICE)
    raw = rig.broker.retained(status_topic)
    assert raw is not None and decode_status(raw).online is False
    rig.broker.restore(DEVICE)
    rig.settle()
    raw = rig.broker.retained(status_topic)
    assert raw is not None and decode_status(raw).online is True
    assert rig.hub.state() is not None


def test_a_broker_that_lost_the_session_gets_the_requests_again_at_once(rig: Rig) -> None:
    v1 = bundle(size=8000)
    rig.catalogue(v1)
    rig.hub.serving = False
    sync = rig.start(request_timeout_s=60.0)
    rig.hub.publish_directive(rig.hub.directive(v1.assignment()))
    rig.settle()
    first = [i for f in rig.hub.fetches for i in f.indexes()]
    assert first == [0, 1, 2, 3]
    rig.hub.serving = True
    # A restarted broker without persistence: the connection comes back without a session.
    sync.on_disconnected()
    sync.on_connected(False, rig.clock[0])
    rig.settle()
    again = [i for f in rig.hub.fetches[1:] for i in f.indexes()]
    assert again[:4] == [0, 1, 2, 3]  # long before the 60 s request timeout
    assert rig.deployer.received["req-1"] == v1.data


class FlakyChecker:
    """The real in-process checks, but the first ``failures`` checks cannot run."""

    def __init__(self, trust: object, failures: int) -> None:
        self.inner = InProcessDirectiveChecker(trust)  # type: ignore[arg-type]
        self.failures = failures
        self.calls = 0

    def check(self, envelope: object, device_id: str, last_seq: int | None, now: float) -> object:
        self.calls += 1
        if self.calls <= self.failures:
            raise DirectiveCheckUnavailable("verification child cannot start")
        return self.inner.check(envelope, device_id, last_seq, now)  # type: ignore[arg-type]


def test_a_directive_whose_check_cannot_run_is_checked_again_later_never_accepted_unchecked(
    rig: Rig,
) -> None:
    v1 = bundle()
    rig.catalogue(v1)
    checker = FlakyChecker(rig.hub.trust, failures=3)
    rig.sync = HubSync(
        settings(),
        device_client(rig.broker),
        checker,
        rig.deployer,
        rig.buffer,
        rig.root / "sync",
        clock=lambda: rig.clock[0],
    )
    rig.sync.start(threaded=False)
    rig.settle()
    rig.hub.publish_directive(rig.hub.directive(v1.assignment()))
    rig.settle()
    sync = rig.sync
    assert checker.calls == 1 and sync.accepted is None and rig.deployer.requests == []
    assert "cannot start" in (sync.directive_error or "")
    assert "cannot start" in (rig.hub.state().directive_error or "")
    rig.advance(1.0)  # ticks before the back-off: no new child
    assert checker.calls == 1
    rig.advance(5.0)  # first retry after 5 s (fails), the next after 10 s more (fails)
    assert checker.calls == 2
    rig.advance(9.0)
    assert checker.calls == 2
    rig.advance(1.5)
    assert checker.calls == 3 and sync.accepted is None
    rig.advance(20.5)  # the third retry runs: accepted and installed
    assert checker.calls == 4
    assert sync.accepted is not None and sync.directive_error is None
    assert [r["sha"] for r in rig.deployer.requests] == [v1.sha]


def test_an_install_that_finds_the_disk_full_waits_longer_each_time_and_is_retried(
    rig: Rig,
) -> None:
    v1 = bundle(size=4000)
    rig.catalogue(v1)
    rig.deployer.auto = None
    backoff = BackoffPolicy(initial_s=10.0, max_s=100.0, jitter=0.0)
    sync = rig.start(disk_full_backoff=backoff)
    rig.hub.publish_directive(rig.hub.directive(v1.assignment()))
    rig.settle()

    def run_out_of_space() -> None:
        request_id = rig.deployer.running
        assert request_id is not None
        rig.deployer.outcomes[request_id] = DeployOutcome(
            request_id, "install", "failed", "[Errno 28] No space left on device", "disk_full"
        )
        rig.deployer.running = None
        rig.advance(0.5)

    run_out_of_space()
    entry = sync.ledger[key_of(v1.assignment())]
    assert entry.state == WAITING and entry.retries == 1
    deployment = rig.hub.state().model("iris").deployment
    assert deployment.state == "failed_disk_full" and "No space" in deployment.reason
    rig.advance(5.0)
    assert len(rig.deployer.requests) == 1  # still waiting
    rig.advance(5.0)
    assert len(rig.deployer.requests) == 2
    # Handed over again from the file already downloaded: not one chunk fetched twice.
    assert rig.deployer.received["req-2"] == v1.data and rig.hub.chunks_sent[v1.sha] == 4
    run_out_of_space()
    waits = [e["retry_in_s"] for e in rig.hub.events() if e["state"] == "failed_disk_full"]
    assert waits == [10.0, 20.0]
    rig.advance(20.0)
    rig.deployer.finish("committed")
    rig.advance(0.5)
    assert sync.ledger[key_of(v1.assignment())].state == DONE
    assert rig.hub.state().model("iris").active.bundle_sha256 == v1.sha
    assert list((rig.root / "sync" / "downloads").iterdir()) == []


def test_a_download_that_fills_the_disk_removes_its_part_file_and_starts_again_later(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = bundle(size=8000)
    rig.catalogue(v1)
    writes = {"left": 3}
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        writes["left"] -= 1
        if writes["left"] < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(download_module.os, "pwrite", pwrite)
    backoff = BackoffPolicy(initial_s=10.0, max_s=100.0, jitter=0.0)
    sync = rig.start(disk_full_backoff=backoff)
    rig.hub.publish_directive(rig.hub.directive(v1.assignment()))
    rig.settle()
    entry = sync.ledger[key_of(v1.assignment())]
    assert entry.state == WAITING and "No space left on device" in (entry.reason or "")
    assert list((rig.root / "sync" / "downloads").iterdir()) == []  # no part file left
    assert rig.hub.state().model("iris").deployment.state == "failed_disk_full"
    monkeypatch.setattr(download_module.os, "pwrite", real_pwrite)  # space again
    rig.advance(11.0)
    assert rig.deployer.received["req-1"] == v1.data
    assert sync.ledger[key_of(v1.assignment())].state == DONE


def test_a_device_with_fresh_state_asks_the_hub_for_its_current_directive(rig: Rig) -> None:
    v1 = bundle()
    rig.catalogue(v1)
    rig.start()
    asked = rig.broker.published_to(Topics().resync(DEVICE))
    assert len(asked) == 1 and json.loads(asked[0].payload)["known_seq"] is None
    rig.hub.publish_directive(rig.hub.directive(v1.assignment()))
    rig.settle()
    rig.restart()  # now it holds an accepted directive: nothing to ask on connect
    assert len(rig.broker.published_to(Topics().resync(DEVICE))) == 1
