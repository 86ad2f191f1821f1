"""Directives: what the hub wants on one device, signed by hub keys.

Invariants (docs/security.md):

- Everything here is pure: the clock is the ``now`` argument (epoch seconds),
  the last accepted sequence number is an argument; nothing is read or stored.
- ``check_directive`` checks in this order and names the first failure: the
  envelope's shape, the signature threshold of DISTINCT trusted hub keys over
  the canonical bytes of ``envelope["directive"]`` (unknown key / bad
  signature), the device id, the sequence number (strictly above the last
  accepted one), the expiry. The directive's fields are interpreted only after
  the signatures verified.
- Signatures cover the directive object exactly as received (its canonical
  bytes), so fields a newer hub adds are covered too, even though
  ``Directive.from_dict`` ignores them.
- ``check_downgrade`` refuses a version below the installed one unless the
  (signed) assignment allows it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgefleet.core.bounds import MAX_MODEL_VERSION
from edgefleet.core.canonical import canonical_json
from edgefleet.core.errors import DirectiveError, SignatureError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgefleet.core.trust import Signature, TrustStore

MODES = ("active", "shadow")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _int(value: object, what: str, minimum: int, maximum: int = MAX_MODEL_VERSION) -> int:
    # Bounded like model versions: every number here goes into SQLite and JSON.
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise DirectiveError(
            f"malformed directive: {what} must be an integer in {minimum}..{maximum}"
        )
    return value


def _time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DirectiveError(f"malformed directive: {what} must be a finite number")
    return float(value)


def _str(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise DirectiveError(f"malformed directive: {what} must be a non-empty string")
    return value


@dataclass(frozen=True)
class Assignment:
    """One model the device should run: which bundle, which version, how."""

    model: str
    bundle_sha256: str
    version: int
    size: int
    rollout_id: str
    mode: str = "active"
    allow_downgrade: bool = False

    def __post_init__(self) -> None:
        _str(self.model, "assignment model")
        if not isinstance(self.bundle_sha256, str) or not _SHA256_RE.fullmatch(self.bundle_sha256):
            raise DirectiveError("malformed directive: bundle_sha256 must be 64 lowercase hex")
        _int(self.version, "assignment version", 0)
        _int(self.size, "assignment size", 1)
        _str(self.rollout_id, "assignment rollout_id")
        if self.mode not in MODES:
            raise DirectiveError(f"malformed directive: mode must be one of {', '.join(MODES)}")
        if not isinstance(self.allow_downgrade, bool):
            raise DirectiveError("malformed directive: allow_downgrade must be a boolean")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "bundle_sha256": self.bundle_sha256,
            "version": self.version,
            "size": self.size,
            "rollout_id": self.rollout_id,
            "mode": self.mode,
            "allow_downgrade": self.allow_downgrade,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Assignment:
        if not isinstance(data, Mapping):
            raise DirectiveError("malformed directive: an assignment must be an object")
        for key in ("model", "bundle_sha256", "version", "size", "rollout_id"):
            if key not in data:
                raise DirectiveError(f"malformed directive: an assignment lacks {key!r}")
        return cls(
            model=data["model"],
            bundle_sha256=data["bundle_sha256"],
            version=data["version"],
            size=data["size"],
            rollout_id=data["rollout_id"],
            mode=data.get("mode", "active"),
            allow_downgrade=data.get("allow_downgrade", False),
        )


@dataclass(frozen=True)
class Directive:
    """The desired state of one device; times are epoch seconds."""

    device: str
    seq: int
    issued_at: float
    expires_at: float
    assignments: tuple[Assignment, ...] = ()

    def __post_init__(self) -> None:
        _str(self.device, "device")
        _int(self.seq, "seq", 0)
        object.__setattr__(self, "issued_at", _time(self.issued_at, "issued_at"))
        object.__setattr__(self, "expires_at", _time(self.expires_at, "expires_at"))
        if self.expires_at <= self.issued_at:
            raise DirectiveError("malformed directive: expires_at must be after issued_at")
        object.__setattr__(self, "assignments", tuple(self.assignments))
        models = [a.model for a in self.assignments if isinstance(a, Assignment)]
        if len(models) != len(self.assignments):
            raise DirectiveError("malformed directive: assignments must be Assignment values")
        for mode in MODES:
            named = [a.model for a in self.assignments if a.mode == mode]
            if len(named) != len(set(named)):
                raise DirectiveError(f"malformed directive: a model is assigned twice as {mode}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "seq": self.seq,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "assignments": [a.to_dict() for a in self.assignments],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Directive:
        """Parse a directive object; unknown fields are ignored."""
        if not isinstance(data, Mapping):
            raise DirectiveError("malformed directive: must be an object")
        for key in ("device", "seq", "issued_at", "expires_at", "assignments"):
            if key not in data:
                raise DirectiveError(f"malformed directive: lacks {key!r}")
        assignments = data["assignments"]
        if not isinstance(assignments, list):
            raise DirectiveError("malformed directive: assignments must be a list")
        return cls(
            device=data["device"],
            seq=data["seq"],
            issued_at=data["issued_at"],
            expires_at=data["expires_at"],
            assignments=tuple(Assignment.from_dict(a) for a in assignments),
        )

    def assignment(self, model: str, mode: str = "active") -> Assignment | None:
        for a in self.assignments:
            if a.model == model and a.mode == mode:
                return a
        return None


def sign_directive(
    directive: Directive, private_key: Ed25519PrivateKey | Sequence[Ed25519PrivateKey]
) -> dict[str, Any]:
    """The signed envelope ``{"directive": {...}, "signatures": [{keyid, sig}]}``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgefleet.core.trust import sign_payload

    keys = [private_key] if isinstance(private_key, Ed25519PrivateKey) else list(private_key)
    body = directive.to_dict()
    payload = canonical_json(body)
    signatures: dict[str, Signature] = {}
    for key in keys:
        sig = sign_payload(payload, key)
        signatures.setdefault(sig.keyid, sig)
    return {"directive": body, "signatures": [s.to_dict() for s in signatures.values()]}


def check_directive(
    envelope: Mapping[str, Any],
    trust: TrustStore,
    device_id: str,
    last_seq: int | None,
    now: float,
) -> Directive:
    """Accept ``envelope`` or raise ``DirectiveError`` naming why not.

    ``last_seq`` is the seq of the last directive this device accepted (None
    before the first). ``now`` is the device clock in epoch seconds.
    """
    from edgefleet.core.trust import signatures_from_json, tally_signatures

    if not isinstance(envelope, Mapping) or not {"directive", "signatures"} <= set(envelope):
        raise DirectiveError("malformed directive: expected {directive, signatures}")
    body = envelope["directive"]
    if not isinstance(body, Mapping):
        raise DirectiveError("malformed directive: directive must be an object")
    try:
        signatures = signatures_from_json(envelope["signatures"])
        payload = canonical_json(body)
    except (SignatureError, ValueError, TypeError) as e:
        raise DirectiveError(f"malformed directive: {e}") from e
    tally = tally_signatures(payload, signatures, trust.hub_keys)
    if len(tally.valid_keyids) < trust.hub_threshold:
        if tally.invalid == 0 and tally.unknown > 0:
            reason = "directive signed by an unknown key"
        else:
            reason = "bad directive signature"
        raise DirectiveError(f"{reason}: {tally.describe(trust.hub_threshold)}")
    directive = Directive.from_dict(body)
    if directive.device != device_id:
        raise DirectiveError(
            f"directive is for another device: {directive.device!r}, not {device_id!r}"
        )
    if last_seq is not None and directive.seq <= last_seq:
        raise DirectiveError(
            f"replayed directive: seq {directive.seq} is not above the last accepted {last_seq}"
        )
    if now >= directive.expires_at:
        raise DirectiveError(
            f"expired directive: seq {directive.seq} expired at {directive.expires_at:.0f} "
            f"(now {now:.0f})"
        )
    return directive


def check_downgrade(installed_version: int | None, assignment: Assignment) -> None:
    """Refuse a version below the installed one unless the assignment allows it."""
    if installed_version is None or assignment.version >= installed_version:
        return
    if not assignment.allow_downgrade:
        raise DirectiveError(
            f"downgrade refused: {assignment.model} version {assignment.version} is below "
            f"the installed {installed_version} and the directive does not allow downgrade"
        )
