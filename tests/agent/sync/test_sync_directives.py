"""Directive acceptance on the device: new, redelivered, and every refusal reason."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.agent.sync.fakes import DEVICE, FakeHub, bundle

from edgefleet.agent.sync.directives import DirectiveFile, judge
from edgefleet.core.testing.memory_mqtt import MemoryBroker


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub(MemoryBroker())


def accepted_first(hub: FakeHub, now: float):  # type: ignore[no-untyped-def]
    payload = hub.directive(bundle().assignment(), seq=10, issued_at=now)
    verdict = judge(payload, hub.trust, DEVICE, None, now)
    assert verdict.kind == "accepted"
    return payload, verdict.accepted


def test_first_directive_is_accepted_and_names_its_assignments(hub: FakeHub) -> None:
    now = time.time()
    _, accepted = accepted_first(hub, now)
    assert accepted.seq == 10
    assert [a.model for a in accepted.directive.assignments] == ["iris"]


def test_the_same_envelope_again_is_a_redelivery_not_a_replay(hub: FakeHub) -> None:
    now = time.time()
    payload, accepted = accepted_first(hub, now)
    # The same JSON with other whitespace is still the same envelope.
    respaced = json.dumps(json.loads(payload), indent=2).encode()
    for again in (payload, respaced):
        verdict = judge(again, hub.trust, DEVICE, accepted, now + 5)
        assert verdict.kind == "redelivered"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown_key", "unknown key"),
        ("bad_signature", "bad directive signature"),
        ("other_device", "another device"),
        ("replayed_seq", "replayed directive"),
        ("same_seq_other_content", "replayed directive"),
        ("expired", "expired directive"),
        ("malformed_json", "malformed directive"),
        ("not_an_envelope", "malformed directive"),
    ],
)
def test_refusals_name_the_reason(hub: FakeHub, case: str, expected: str) -> None:
    now = time.time()
    _, accepted = accepted_first(hub, now)
    b2 = bundle(version=2).assignment()
    if case == "unknown_key":
        payload = hub.directive(b2, seq=11, issued_at=now, key=Ed25519PrivateKey.generate())
    elif case == "bad_signature":
        envelope = json.loads(hub.directive(b2, seq=11, issued_at=now))
        envelope["directive"]["seq"] = 12  # signed as 11
        payload = json.dumps(envelope).encode()
    elif case == "other_device":
        payload = hub.directive(b2, seq=11, issued_at=now, device="dev-2")
    elif case == "replayed_seq":
        payload = hub.directive(b2, seq=9, issued_at=now)
    elif case == "same_seq_other_content":
        payload = hub.directive(b2, seq=10, issued_at=now)
    elif case == "expired":
        payload = hub.directive(b2, seq=11, issued_at=now - 7200, ttl_s=3600)
    elif case == "malformed_json":
        payload = b"{not json"
    else:
        payload = b'{"directive": 1}'
    verdict = judge(payload, hub.trust, DEVICE, accepted, now)
    assert verdict.kind == "rejected"
    assert expected in (verdict.reason or "")
    assert verdict.accepted is None


def test_an_empty_retained_message_changes_nothing(hub: FakeHub) -> None:
    assert judge(b"", hub.trust, DEVICE, None, time.time()).kind == "cleared"


def test_the_accepted_directive_survives_a_restart(hub: FakeHub, tmp_path: Path) -> None:
    now = time.time()
    _, accepted = accepted_first(hub, now)
    file = DirectiveFile(tmp_path / "sync" / "directive.json")
    file.save(accepted)
    loaded = DirectiveFile(tmp_path / "sync" / "directive.json").load()
    assert loaded == accepted
    # After the restart an older directive delivered first is still a replay.
    old = hub.directive(bundle().assignment(), seq=3, issued_at=now)
    assert judge(old, hub.trust, DEVICE, loaded, now).kind == "rejected"


def test_a_corrupt_directive_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "directive.json"
    path.write_text("{broken")
    assert DirectiveFile(path).load() is None
    assert not path.exists()
    assert (tmp_path / "directive.json.corrupt").read_text() == "{broken"
