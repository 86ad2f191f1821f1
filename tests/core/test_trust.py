"""Threshold signatures over distinct trusted keys, and the trust store file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.core.errors import ConfigError, SignatureError
from edgefleet.core.keys import keyid_of
from edgefleet.core.trust import (
    MAX_SIGNATURES,
    Signature,
    TrustStore,
    sign_payload,
    signatures_from_json,
    tally_signatures,
    verify_threshold,
)

PAYLOAD = b'{"model":"iris"}'


@pytest.fixture(scope="module")
def keys() -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate() for _ in range(4)]


def trusted(keys: list[Ed25519PrivateKey], n: int) -> dict:
    return {keyid_of(k.public_key()): k.public_key() for k in keys[:n]}


def test_one_valid_signature_meets_threshold_one(keys: list[Ed25519PrivateKey]) -> None:
    sigs = [sign_payload(PAYLOAD, keys[0])]
    assert verify_threshold(PAYLOAD, sigs, trusted(keys, 1), 1) == [keyid_of(keys[0].public_key())]


def test_threshold_counts_distinct_keys(keys: list[Ed25519PrivateKey]) -> None:
    trust = trusted(keys, 3)
    same_twice = [sign_payload(PAYLOAD, keys[0]), sign_payload(PAYLOAD, keys[0])]
    with pytest.raises(SignatureError, match="1 of the 2 required keys; 1 repeated"):
        verify_threshold(PAYLOAD, same_twice, trust, 2)
    two = [sign_payload(PAYLOAD, keys[0]), sign_payload(PAYLOAD, keys[2])]
    assert len(verify_threshold(PAYLOAD, two, trust, 2)) == 2


def test_same_key_under_two_labels_counts_once(keys: list[Ed25519PrivateKey]) -> None:
    # A caller-built mapping that files one key under a second label must not
    # double-count it.
    key = keys[0].public_key()
    mapping = {keyid_of(key): key, "f" * 64: key}
    sigs = [sign_payload(PAYLOAD, keys[0]), Signature("f" * 64, sign_payload(PAYLOAD, keys[0]).sig)]
    with pytest.raises(SignatureError, match="1 of the 2"):
        verify_threshold(PAYLOAD, sigs, mapping, 2)


def test_unknown_and_invalid_signatures_count_zero(keys: list[Ed25519PrivateKey]) -> None:
    trust = trusted(keys, 1)
    good = sign_payload(PAYLOAD, keys[0])
    other_payload = sign_payload(b"other", keys[0])
    stranger = sign_payload(PAYLOAD, keys[3])
    not_base64 = Signature(good.keyid, "!!!")
    short = Signature(good.keyid, "AAAA")
    tally = tally_signatures(PAYLOAD, [stranger, other_payload, not_base64, short], trust)
    assert tally.valid_keyids == ()
    assert (tally.unknown, tally.invalid) == (1, 3)
    with pytest.raises(SignatureError, match="1 from an unknown key; 3 bad signatures"):
        verify_threshold(PAYLOAD, [stranger, other_payload, not_base64, short], trust, 1)
    assert verify_threshold(PAYLOAD, [stranger, not_base64, good], trust, 1) == [good.keyid]


def test_threshold_below_one_is_refused(keys: list[Ed25519PrivateKey]) -> None:
    with pytest.raises(SignatureError, match="at least 1"):
        verify_threshold(PAYLOAD, [sign_payload(PAYLOAD, keys[0])], trusted(keys, 1), 0)


def test_signature_keeps_unknown_fields() -> None:
    data = {"keyid": "ab" * 32, "sig": "c2ln", "scheme": "ed25519", "note": {"x": [1]}}
    signature = Signature.from_dict(data)
    assert signature.unrecognized_fields == {"scheme": "ed25519", "note": {"x": [1]}}
    assert signature.to_dict() == data


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"keyid": "a"}, "must be a JSON list"),
        ([{"keyid": "a"}], "lacks sig"),
        (["x"], "must be an object"),
        ([{"keyid": 1, "sig": "x"}], "keyid must be"),
        ([{"keyid": "a", "sig": "x"}] * (MAX_SIGNATURES + 1), "at most"),
    ],
)
def test_malformed_signature_lists(value: object, reason: str) -> None:
    with pytest.raises(SignatureError, match=reason):
        signatures_from_json(value)


def test_trust_store_round_trip(tmp_path: Path, keys: list[Ed25519PrivateKey]) -> None:
    store = TrustStore.from_keys(
        [k.public_key() for k in keys[:3]], 2, hub_keys=[keys[3].public_key()], hub_threshold=1
    )
    assert TrustStore.from_dict(store.to_dict()).to_dict() == store.to_dict()
    path = tmp_path / "trust.json"
    store.save(path)
    loaded = TrustStore.load(path)
    assert loaded.to_dict() == store.to_dict()
    assert loaded.publisher_threshold == 2
    assert set(loaded.publisher_keys) == {keyid_of(k.public_key()) for k in keys[:3]}
    assert set(loaded.hub_keys) == {keyid_of(keys[3].public_key())}
    assert [p.name for p in tmp_path.iterdir()] == ["trust.json"]


def test_trust_store_is_immutable(keys: list[Ed25519PrivateKey]) -> None:
    store = TrustStore.from_keys([keys[0].public_key()])
    with pytest.raises(TypeError):
        store.publisher_keys["x"] = keys[1].public_key()  # type: ignore[index]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.update(publisher_threshold=3), "exceeds the 2 publisher keys"),
        (lambda d: d.update(publisher_threshold=0), "must be an integer >= 1"),
        (lambda d: d.update(hub_threshold=True), "hub_threshold must be an integer"),
        (lambda d: d.update(extra=1), "unknown field 'extra'"),
        (lambda d: d.update(format_version=9), "unsupported format_version"),
        (lambda d: d.update(publisher_keys=["x"]), "must map key ids"),
        (lambda d: d["publisher_keys"].update({"nothex": "00" * 32}), "is not a key id"),
        (lambda d: d["publisher_keys"].update({"ab" * 32: "zz"}), "is not a hex public key"),
    ],
)
def test_bad_trust_store_names_the_field(
    tmp_path: Path, keys: list[Ed25519PrivateKey], mutate, reason: str
) -> None:
    data = TrustStore.from_keys([k.public_key() for k in keys[:2]]).to_dict()
    mutate(data)
    path = tmp_path / "trust.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        TrustStore.load(path)
    assert reason in str(info.value)
    assert str(path) in str(info.value)


def test_key_filed_under_wrong_keyid_is_refused(keys: list[Ed25519PrivateKey]) -> None:
    with pytest.raises(ConfigError, match="has another key id"):
        TrustStore(publisher_keys={keyid_of(keys[0].public_key()): keys[1].public_key()})


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read trust store"):
        TrustStore.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrustStore.load(bad)
