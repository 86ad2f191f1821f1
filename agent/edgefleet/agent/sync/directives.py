"""Accepting signed directives and remembering the last one accepted.

The trust rules themselves live in :func:`edgefleet.core.directive.check_directive`;
this module adds what the device needs around them:

- :func:`judge` (pure: payload, trust store, last accepted directive, ``now``) tells a
  new directive from a redelivery of the one already accepted. The directive topic is
  retained, so the broker hands the same envelope over again after every reconnect;
  an envelope whose digest equals the accepted one's is a redelivery and is neither
  accepted again nor refused as a replay. Anything else goes through
  ``check_directive`` with the accepted seq, so an old directive is refused as
  replayed even when it is delivered first after a restart.
- :class:`DirectiveFile` persists the accepted directive (seq, digest, body)
  atomically BEFORE the sync acts on it, so a restart never forgets a seq and
  replay protection survives reboots.

Invariants: a rejected directive changes nothing on the device (the agent keeps
serving what it has); only an accepted directive replaces the persisted one, and
its seq is strictly above the previous one (``check_directive`` guarantees it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.deploy.atomic_files import atomic_write_json
from edgefleet.agent.sync.checker import DirectiveChecker, DirectiveCheckUnavailable, as_checker
from edgefleet.core.canonical import canonical_json
from edgefleet.core.directive import Directive
from edgefleet.core.errors import DirectiveError, ProtocolError
from edgefleet.core.protocol import decode_desired

if TYPE_CHECKING:
    from edgefleet.core.trust import TrustStore

log = logging.getLogger("edgefleet.agent.sync")


@dataclass(frozen=True)
class AcceptedDirective:
    """The directive in force on this device and the digest of its envelope."""

    directive: Directive
    digest: str
    accepted_at: float

    @property
    def seq(self) -> int:
        return self.directive.seq

    def expired(self, now: float) -> bool:
        return now >= self.directive.expires_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "directive": self.directive.to_dict(),
            "digest": self.digest,
            "accepted_at": self.accepted_at,
        }

    @classmethod
    def from_dict(cls, data: Any) -> AcceptedDirective:
        if not isinstance(data, dict):
            raise DirectiveError("persisted directive: not an object")
        digest = data.get("digest")
        accepted_at = data.get("accepted_at")
        if not isinstance(digest, str) or not isinstance(accepted_at, int | float):
            raise DirectiveError("persisted directive: digest or accepted_at missing")
        body = data.get("directive")
        if not isinstance(body, dict):
            raise DirectiveError("persisted directive: the directive is missing")
        return cls(Directive.from_dict(body), digest, float(accepted_at))


@dataclass(frozen=True)
class DirectiveCheck:
    """What to do with one message on the desired topic."""

    kind: str  # "accepted" | "redelivered" | "rejected" | "deferred" | "cleared"
    accepted: AcceptedDirective | None = None
    reason: str | None = None
    digest: str | None = None  # of the rejected envelope, to report each one once


def envelope_digest(payload: bytes) -> str:
    """sha256 of the envelope's canonical form (the same directive re-serialised matches)."""
    try:
        return hashlib.sha256(canonical_json(json.loads(payload))).hexdigest()
    except (ValueError, TypeError):
        return hashlib.sha256(payload).hexdigest()


def judge(
    payload: bytes,
    trust: TrustStore | DirectiveChecker,
    device_id: str,
    accepted: AcceptedDirective | None,
    now: float,
) -> DirectiveCheck:
    """Accept, ignore as a redelivery, or reject (with the reason) one desired payload."""
    if payload == b"":
        # An empty retained message clears the topic: it says nothing about what to run.
        return DirectiveCheck("cleared")
    digest = envelope_digest(payload)
    if accepted is not None and digest == accepted.digest:
        return DirectiveCheck("redelivered", accepted=accepted)
    try:
        envelope = decode_desired(payload)
    except ProtocolError as e:
        return DirectiveCheck("rejected", reason=f"malformed directive: {e}", digest=digest)
    last_seq = None if accepted is None else accepted.seq
    try:
        directive = as_checker(trust).check(envelope, device_id, last_seq, now)
    except DirectiveCheckUnavailable as e:
        # Not a verdict on the directive: accept nothing, check it again later.
        return DirectiveCheck("deferred", reason=str(e), digest=digest)
    except DirectiveError as e:
        return DirectiveCheck("rejected", reason=str(e), digest=digest)
    return DirectiveCheck("accepted", accepted=AcceptedDirective(directive, digest, now))


class DirectiveFile:
    """``sync/directive.json``: the accepted directive, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> AcceptedDirective | None:
        """The persisted directive; an unreadable file is moved aside (and logged)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            log.error("cannot read %s: %s; no directive in force", self.path, e)
            return None
        try:
            return AcceptedDirective.from_dict(json.loads(text))
        except (ValueError, DirectiveError) as e:
            # Only ever replaced atomically, so this is a disk fault or tampering. Replay
            # protection then rests on expiry and the hub's time-based seqs.
            aside = self.path.with_name(self.path.name + ".corrupt")
            self.path.replace(aside)
            log.error("%s unreadable (%s); moved to %s", self.path, e, aside.name)
            return None

    def save(self, accepted: AcceptedDirective) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, accepted.to_dict())
