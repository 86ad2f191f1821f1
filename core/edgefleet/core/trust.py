"""Signatures, threshold checks and the device trust store.

Invariants:

- A threshold counts DISTINCT trusted keys with a valid signature over the
  exact payload bytes. Two signatures by one key count once; signatures by keys
  outside the given set count zero, however many there are.
- ``verify_threshold`` is pure (no I/O, no clock) and either returns the key
  ids that signed or raises ``SignatureError``; it never returns a short list.
- A ``TrustStore`` is consistent by construction: every key sits under its own
  key id, thresholds are at least 1 and never above the number of keys of a
  non-empty role. Publisher keys sign bundles; hub keys sign directives.
- ``Signature`` keeps fields it does not know (a newer writer's) in
  ``unrecognized_fields`` so ``from_dict(d).to_dict() == d``.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgefleet.core.canonical import canonical_json, parse_json
from edgefleet.core.errors import ConfigError, KeyFileError, SignatureError, StorageError
from edgefleet.core.keys import keyid_of, public_key_from_hex, public_key_to_hex

TRUST_FORMAT_VERSION = 1
_KEYID_LEN = 64
_HEX = frozenset("0123456789abcdef")
#: More signatures than this on one payload is an attack on our CPU, not a quorum.
MAX_SIGNATURES = 64


def _is_keyid(value: object) -> bool:
    return isinstance(value, str) and len(value) == _KEYID_LEN and set(value) <= _HEX


@dataclass(frozen=True)
class Signature:
    """One Ed25519 signature: the signer's key id and the signature in base64."""

    keyid: str
    sig: str
    unrecognized_fields: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.keyid, str) or not self.keyid:
            raise SignatureError("signature keyid must be a non-empty string")
        if not isinstance(self.sig, str):
            raise SignatureError("signature sig must be a base64 string")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        if not isinstance(data, Mapping):
            raise SignatureError("a signature must be an object with keyid and sig")
        missing = [k for k in ("keyid", "sig") if k not in data]
        if missing:
            raise SignatureError(f"signature lacks {', '.join(missing)}")
        extra = {k: v for k, v in data.items() if k not in ("keyid", "sig")}
        return cls(keyid=data["keyid"], sig=data["sig"], unrecognized_fields=extra)

    def to_dict(self) -> dict[str, Any]:
        return {**self.unrecognized_fields, "keyid": self.keyid, "sig": self.sig}

    def signature_bytes(self) -> bytes | None:
        """The raw signature, or None when ``sig`` is not valid base64 of 64 bytes."""
        try:
            raw = base64.b64decode(self.sig.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            return None
        # Canonical base64 only: the unused low bits of the last character
        # would otherwise let anyone re-encode a valid signature differently.
        if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != self.sig:
            return None
        return raw


def sign_payload(payload: bytes, private_key: Ed25519PrivateKey) -> Signature:
    """Sign ``payload`` (already canonical bytes) with ``private_key``."""
    raw = private_key.sign(payload)
    return Signature(
        keyid=keyid_of(private_key.public_key()), sig=base64.b64encode(raw).decode("ascii")
    )


def signatures_from_json(value: Any) -> list[Signature]:
    """Parse the ``[{keyid, sig}, ...]`` list used in bundles and directives."""
    if not isinstance(value, list):
        raise SignatureError("signatures must be a JSON list of {keyid, sig} objects")
    if len(value) > MAX_SIGNATURES:
        raise SignatureError(f"{len(value)} signatures; at most {MAX_SIGNATURES} are accepted")
    return [Signature.from_dict(item) for item in value]


@dataclass(frozen=True)
class SignatureTally:
    """How a list of signatures fared against a set of trusted keys."""

    valid_keyids: tuple[str, ...]
    unknown: int
    invalid: int
    duplicate: int

    def describe(self, threshold: int) -> str:
        parts = [f"valid signatures from {len(self.valid_keyids)} of the {threshold} required keys"]
        if self.unknown:
            parts.append(f"{self.unknown} from an unknown key")
        if self.invalid:
            parts.append(f"{self.invalid} bad signature{'s' if self.invalid > 1 else ''}")
        if self.duplicate:
            parts.append(f"{self.duplicate} repeated from the same key")
        return "; ".join(parts)


def tally_signatures(
    payload: bytes, signatures: Sequence[Signature], keys: Mapping[str, Ed25519PublicKey]
) -> SignatureTally:
    """Check every signature against ``keys`` (pure; never raises for bad input)."""
    valid: list[str] = []
    unknown = invalid = duplicate = 0
    for signature in signatures[:MAX_SIGNATURES]:
        key = keys.get(signature.keyid)
        if key is None:
            unknown += 1
            continue
        # Distinctness is by the key itself, not by the label it was filed under.
        real_keyid = keyid_of(key)
        raw = signature.signature_bytes()
        if raw is None:
            invalid += 1
            continue
        try:
            key.verify(raw, payload)
        except InvalidSignature:
            invalid += 1
            continue
        if real_keyid in valid:
            duplicate += 1
        else:
            valid.append(real_keyid)
    return SignatureTally(tuple(valid), unknown, invalid, duplicate)


def verify_threshold(
    payload: bytes,
    signatures: Sequence[Signature],
    keys: Mapping[str, Ed25519PublicKey],
    threshold: int,
) -> list[str]:
    """Key ids of the distinct trusted keys that signed ``payload``.

    Raises ``SignatureError`` unless at least ``threshold`` distinct keys of
    ``keys`` produced a valid signature.
    """
    if threshold < 1:
        raise SignatureError(f"signature threshold must be at least 1, not {threshold}")
    tally = tally_signatures(payload, signatures, keys)
    if len(tally.valid_keyids) < threshold:
        raise SignatureError(tally.describe(threshold))
    return list(tally.valid_keyids)


def _frozen_keys(keys: Mapping[str, Ed25519PublicKey], role: str) -> Mapping[str, Ed25519PublicKey]:
    for keyid, key in keys.items():
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"trust store: {role} key {keyid} is not an Ed25519 public key")
        if keyid != keyid_of(key):
            raise ConfigError(f"trust store: {role} key filed under {keyid} has another key id")
    return MappingProxyType(dict(keys))


def _check_threshold(threshold: int, keys: Mapping[str, Any], role: str) -> None:
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
        raise ConfigError(f"trust store: {role}_threshold must be an integer >= 1")
    if keys and threshold > len(keys):
        raise ConfigError(
            f"trust store: {role}_threshold {threshold} exceeds the {len(keys)} {role} keys"
        )


@dataclass(frozen=True)
class TrustStore:
    """The keys a device (or an operator) trusts, per role, with thresholds."""

    publisher_keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    publisher_threshold: int = 1
    hub_keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    hub_threshold: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "publisher_keys", _frozen_keys(self.publisher_keys, "publisher"))
        object.__setattr__(self, "hub_keys", _frozen_keys(self.hub_keys, "hub"))
        _check_threshold(self.publisher_threshold, self.publisher_keys, "publisher")
        _check_threshold(self.hub_threshold, self.hub_keys, "hub")

    @classmethod
    def from_keys(
        cls,
        publisher_keys: Iterable[Ed25519PublicKey] = (),
        publisher_threshold: int = 1,
        hub_keys: Iterable[Ed25519PublicKey] = (),
        hub_threshold: int = 1,
    ) -> TrustStore:
        """Build a store from bare public keys (key ids are computed)."""
        return cls(
            publisher_keys={keyid_of(k): k for k in publisher_keys},
            publisher_threshold=publisher_threshold,
            hub_keys={keyid_of(k): k for k in hub_keys},
            hub_threshold=hub_threshold,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": TRUST_FORMAT_VERSION,
            "publisher_keys": {k: public_key_to_hex(v) for k, v in self.publisher_keys.items()},
            "publisher_threshold": self.publisher_threshold,
            "hub_keys": {k: public_key_to_hex(v) for k, v in self.hub_keys.items()},
            "hub_threshold": self.hub_threshold,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrustStore:
        """Parse :meth:`to_dict` output; unknown fields are refused (a trust
        store is security configuration, silently ignoring a field is unsafe)."""
        if not isinstance(data, Mapping):
            raise ConfigError("trust store must be a JSON object")
        known = {
            "format_version",
            "publisher_keys",
            "publisher_threshold",
            "hub_keys",
            "hub_threshold",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"trust store: unknown field {unknown[0]!r}")
        version = data.get("format_version", TRUST_FORMAT_VERSION)
        if version != TRUST_FORMAT_VERSION:
            raise ConfigError(f"trust store: unsupported format_version {version!r}")
        return cls(
            publisher_keys=_keys_from_dict(data.get("publisher_keys", {}), "publisher"),
            publisher_threshold=data.get("publisher_threshold", 1),
            hub_keys=_keys_from_dict(data.get("hub_keys", {}), "hub"),
            hub_threshold=data.get("hub_threshold", 1),
        )

    @classmethod
    def load(cls, path: Path) -> TrustStore:
        """Read a ``trust.json`` file; errors name the file and the field."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read trust store: {e.strerror}") from e
        try:
            return cls.from_dict(parse_json(data))
        except ValueError as e:
            raise ConfigError(f"{path}: trust store is not valid JSON: {e}") from e
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e

    def save(self, path: Path) -> None:
        """Write the store as JSON atomically (temporary file + rename)."""
        path = Path(path)
        data = canonical_json(self.to_dict()) + b"\n"
        try:
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as e:
            raise StorageError(f"cannot write trust store {path}: {e.strerror}") from e
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, path)
        except OSError as e:
            raise StorageError(f"cannot write trust store {path}: {e.strerror}") from e
        finally:
            Path(tmp_name).unlink(missing_ok=True)


def _keys_from_dict(value: Any, role: str) -> dict[str, Ed25519PublicKey]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"trust store: {role}_keys must map key ids to hex public keys")
    keys: dict[str, Ed25519PublicKey] = {}
    for keyid, hex_key in value.items():
        if not _is_keyid(keyid):
            raise ConfigError(f"trust store: {role}_keys: {keyid!r} is not a key id")
        try:
            keys[keyid] = public_key_from_hex(hex_key)
        except KeyFileError as e:
            raise ConfigError(f"trust store: {role}_keys[{keyid}] is not a hex public key") from e
    return keys
