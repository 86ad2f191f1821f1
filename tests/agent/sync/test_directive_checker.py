"""Directive checks in a verification child give the in-process verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.agent.sync.fakes import DEVICE, FakeHub, bundle

from edgefleet.agent.sync.checker import ChildDirectiveChecker, InProcessDirectiveChecker
from edgefleet.agent.sync.directives import judge
from edgefleet.core.testing.memory_mqtt import MemoryBroker

CASES = ["valid", "unknown_key", "bad_signature", "other_device", "replayed_seq", "expired"]


def payload_for(hub: FakeHub, case: str, now: float) -> bytes:
    b2 = bundle(version=2).assignment()
    if case == "valid":
        return hub.directive(b2, seq=11, issued_at=now)
    if case == "unknown_key":
        return hub.directive(b2, seq=11, issued_at=now, key=Ed25519PrivateKey.generate())
    if case == "bad_signature":
        envelope = json.loads(hub.directive(b2, seq=11, issued_at=now))
        envelope["directive"]["seq"] = 12
        return json.dumps(envelope).encode()
    if case == "other_device":
        return hub.directive(b2, seq=11, issued_at=now, device="dev-2")
    if case == "replayed_seq":
        return hub.directive(b2, seq=9, issued_at=now)
    return hub.directive(b2, seq=11, issued_at=now - 7200, ttl_s=3600)


@pytest.mark.parametrize("case", CASES)
def test_the_child_gives_the_in_process_verdict(case: str, tmp_path: Path) -> None:
    hub = FakeHub(MemoryBroker())
    trust_path = tmp_path / "trust.json"
    hub.trust.save(trust_path)
    now = time.time()
    first = judge(
        hub.directive(bundle().assignment(), seq=10, issued_at=now), hub.trust, DEVICE, None, now
    )
    payload = payload_for(hub, case, now)
    here = judge(payload, InProcessDirectiveChecker(hub.trust), DEVICE, first.accepted, now)
    child = judge(payload, ChildDirectiveChecker(trust_path), DEVICE, first.accepted, now)
    assert (child.kind, child.reason, child.digest) == (here.kind, here.reason, here.digest)
    assert child.accepted == here.accepted
    assert child.kind == ("accepted" if case == "valid" else "rejected")


def test_a_child_that_cannot_start_accepts_nothing(tmp_path: Path) -> None:
    hub = FakeHub(MemoryBroker())
    trust_path = tmp_path / "trust.json"
    hub.trust.save(trust_path)
    now = time.time()
    payload = hub.directive(bundle().assignment(), seq=10, issued_at=now)
    checker = ChildDirectiveChecker(trust_path, python=str(tmp_path / "no-python"))
    verdict = judge(payload, checker, DEVICE, None, now)
    assert verdict.kind == "deferred" and verdict.accepted is None
    assert "cannot start" in (verdict.reason or "")


def test_a_child_without_a_trust_store_accepts_nothing(tmp_path: Path) -> None:
    hub = FakeHub(MemoryBroker())
    now = time.time()
    payload = hub.directive(bundle().assignment(), seq=10, issued_at=now)
    verdict = judge(payload, ChildDirectiveChecker(tmp_path / "missing.json"), DEVICE, None, now)
    assert verdict.kind == "deferred" and verdict.accepted is None


@pytest.mark.subprocess
def test_the_daemon_sync_wiring_loads_no_cryptography() -> None:
    code = (
        "import sys, edgefleet.agent.daemon, edgefleet.agent.sync.wiring, edgefleet.agent.sync; "
        "print('cryptography' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
