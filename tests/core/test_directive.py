"""Directive signing and checking: pure functions over (envelope, trust, now)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.core.canonical import canonical_json
from edgefleet.core.directive import (
    Assignment,
    Directive,
    check_directive,
    check_downgrade,
    sign_directive,
)
from edgefleet.core.errors import DirectiveError
from edgefleet.core.trust import TrustStore, sign_payload

NOW = 1_800_000_000.0
SHA = "ab" * 32


@pytest.fixture(scope="module")
def hub_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def trust(hub_key: Ed25519PrivateKey) -> TrustStore:
    publisher = Ed25519PrivateKey.generate()
    return TrustStore.from_keys([publisher.public_key()], hub_keys=[hub_key.public_key()])


def assignment(**changes: Any) -> Assignment:
    fields: dict[str, Any] = {
        "model": "iris",
        "bundle_sha256": SHA,
        "version": 4,
        "size": 12345,
        "rollout_id": "r-1",
    }
    fields.update(changes)
    return Assignment(**fields)


def directive(**changes: Any) -> Directive:
    fields: dict[str, Any] = {
        "device": "pi-001",
        "seq": 10,
        "issued_at": NOW - 60,
        "expires_at": NOW + 3600,
        "assignments": (assignment(), assignment(model="digits", mode="shadow")),
    }
    fields.update(changes)
    return Directive(**fields)


def test_signed_directive_is_accepted(hub_key: Ed25519PrivateKey, trust: TrustStore) -> None:
    d = directive()
    envelope = sign_directive(d, hub_key)
    assert set(envelope) == {"directive", "signatures"}
    accepted = check_directive(envelope, trust, "pi-001", last_seq=9, now=NOW)
    assert accepted == d
    assert accepted.assignment("digits", "shadow") == assignment(model="digits", mode="shadow")
    assert check_directive(envelope, trust, "pi-001", last_seq=None, now=NOW) == d


def test_round_trip_of_values() -> None:
    d = directive()
    assert Directive.from_dict(d.to_dict()) == d
    assert Assignment.from_dict(assignment().to_dict()) == assignment()


def tampered(envelope: dict[str, Any], **changes: Any) -> dict[str, Any]:
    bad = copy.deepcopy(envelope)
    bad["directive"].update(changes)
    return bad


@pytest.mark.parametrize(
    ("name", "make", "device", "last_seq", "now", "reason"),
    [
        (
            "bad-signature",
            lambda e, k: tampered(e, seq=99),
            "pi-001",
            9,
            NOW,
            "bad directive signature",
        ),
        (
            "assignment-swapped",
            lambda e, k: {
                **e,
                "directive": {
                    **e["directive"],
                    "assignments": [
                        {**e["directive"]["assignments"][0], "bundle_sha256": "cd" * 32}
                    ],
                },
            },
            "pi-001",
            9,
            NOW,
            "bad directive signature",
        ),
        (
            "unknown-key",
            lambda e, k: sign_directive(directive(), Ed25519PrivateKey.generate()),
            "pi-001",
            9,
            NOW,
            "unknown key",
        ),
        (
            "publisher-key-is-not-a-hub-key",
            lambda e, k: "publisher",
            "pi-001",
            9,
            NOW,
            "unknown key",
        ),
        (
            "no-signatures",
            lambda e, k: {**e, "signatures": []},
            "pi-001",
            9,
            NOW,
            "0 of the 1 required",
        ),
        ("other-device", lambda e, k: e, "pi-002", 9, NOW, "another device"),
        ("replayed-same-seq", lambda e, k: e, "pi-001", 10, NOW, "replayed directive: seq 10"),
        ("replayed-older-seq", lambda e, k: e, "pi-001", 11, NOW, "replayed directive"),
        ("expired", lambda e, k: e, "pi-001", 9, NOW + 3600, "expired directive"),
        ("not-an-object", lambda e, k: ["x"], "pi-001", 9, NOW, "malformed directive"),
        (
            "no-signature-list",
            lambda e, k: {"directive": e["directive"]},
            "pi-001",
            9,
            NOW,
            "malformed directive",
        ),
        (
            "signatures-not-a-list",
            lambda e, k: {**e, "signatures": {}},
            "pi-001",
            9,
            NOW,
            "malformed directive",
        ),
        (
            "nan-in-body",
            lambda e, k: tampered(e, issued_at=float("nan")),
            "pi-001",
            9,
            NOW,
            "malformed directive",
        ),
    ],
)
def test_rejections_name_the_reason(
    hub_key: Ed25519PrivateKey,
    trust: TrustStore,
    name: str,
    make: Any,
    device: str,
    last_seq: int,
    now: float,
    reason: str,
) -> None:
    envelope = make(sign_directive(directive(), hub_key), hub_key)
    if envelope == "publisher":
        publisher = Ed25519PrivateKey.generate()
        trust = TrustStore.from_keys([publisher.public_key()], hub_keys=[hub_key.public_key()])
        envelope = sign_directive(directive(), publisher)
    with pytest.raises(DirectiveError) as info:
        check_directive(envelope, trust, device, last_seq, now)
    assert reason in str(info.value), str(info.value)


def test_signed_but_malformed_body_is_refused_after_the_signature(
    hub_key: Ed25519PrivateKey, trust: TrustStore
) -> None:
    body = directive().to_dict()
    body["assignments"][0]["mode"] = "sideways"
    envelope = {
        "directive": body,
        "signatures": [sign_payload(canonical_json(body), hub_key).to_dict()],
    }
    with pytest.raises(DirectiveError, match="mode must be one of active, shadow"):
        check_directive(envelope, trust, "pi-001", 9, NOW)


def test_unknown_fields_are_covered_by_the_signature(
    hub_key: Ed25519PrivateKey, trust: TrustStore
) -> None:
    body = {**directive().to_dict(), "note": "from a newer hub"}
    envelope = {
        "directive": body,
        "signatures": [sign_payload(canonical_json(body), hub_key).to_dict()],
    }
    assert check_directive(envelope, trust, "pi-001", 9, NOW) == directive()
    envelope["directive"] = {**body, "note": "changed in transit"}
    with pytest.raises(DirectiveError, match="bad directive signature"):
        check_directive(envelope, trust, "pi-001", 9, NOW)


def test_hub_threshold_of_two(hub_key: Ed25519PrivateKey) -> None:
    second = Ed25519PrivateKey.generate()
    trust = TrustStore.from_keys(
        hub_keys=[hub_key.public_key(), second.public_key()], hub_threshold=2
    )
    check_directive(sign_directive(directive(), [hub_key, second]), trust, "pi-001", None, NOW)
    with pytest.raises(DirectiveError, match="1 of the 2 required"):
        check_directive(sign_directive(directive(), [hub_key, hub_key]), trust, "pi-001", None, NOW)


def test_expiry_boundary(hub_key: Ed25519PrivateKey, trust: TrustStore) -> None:
    envelope = sign_directive(directive(), hub_key)
    check_directive(envelope, trust, "pi-001", 9, NOW + 3599.999)
    with pytest.raises(DirectiveError, match="expired"):
        check_directive(envelope, trust, "pi-001", 9, NOW + 3600)


@pytest.mark.parametrize(
    ("installed", "version", "allow", "ok"),
    [
        (None, 1, False, True),
        (3, 4, False, True),
        (4, 4, False, True),
        (5, 4, False, False),
        (5, 4, True, True),
    ],
)
def test_downgrade_rule(installed: int | None, version: int, allow: bool, ok: bool) -> None:
    a = assignment(version=version, allow_downgrade=allow)
    if ok:
        check_downgrade(installed, a)
    else:
        with pytest.raises(
            DirectiveError, match="downgrade refused: iris version 4 is below the installed 5"
        ):
            check_downgrade(installed, a)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: assignment(bundle_sha256="xyz"), "bundle_sha256"),
        (lambda: assignment(version=True), "version"),
        (lambda: assignment(size=0), "size"),
        (lambda: assignment(mode="canary"), "mode"),
        (lambda: assignment(allow_downgrade="yes"), "allow_downgrade"),
        (lambda: directive(expires_at=NOW - 120), "expires_at must be after issued_at"),
        (lambda: directive(seq=-1), "seq"),
        (lambda: directive(device=""), "device"),
        (lambda: directive(assignments=(assignment(), assignment())), "assigned twice"),
    ],
)
def test_invalid_values(make: Any, reason: str) -> None:
    with pytest.raises(DirectiveError, match=reason):
        make()
