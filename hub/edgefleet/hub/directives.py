"""Signed directives: the desired assignments of one device, signed by the hub key.

The rollout engine changes *desired assignments* in the store (bumping the
device's ``desired_rev``); :class:`DirectiveIssuer` turns them into signed
directives that the service publishes retained on ``{root}/dev/{id}/desired``.

Invariants:

- a new directive is issued when the device's assignments changed since the
  last one (``desired_rev``) or when the last one expires within
  ``resign_before_s``; re-signing keeps the assignments and raises ``seq``;
- ``seq`` is strictly increasing per device and also time-based
  (``max(last + 1, now in milliseconds)``), so a hub whose store was restored
  from an older backup still hands out seqs the devices accept;
- a directive is recorded in the store *before* it is published; a crash in
  between leaves it unpublished, and :meth:`unpublished` hands it out again.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.core.directive import Assignment, Directive, sign_directive
from edgefleet.hub.config import DirectiveSettings
from edgefleet.hub.errors import HubNotFoundError
from edgefleet.hub.store import (
    DesiredAssignment,
    DirectiveHead,
    DirectiveRecord,
    HubStore,
)


def to_core_assignment(a: DesiredAssignment) -> Assignment:
    return Assignment(
        model=a.model,
        bundle_sha256=a.bundle_sha256,
        version=a.version,
        size=a.size,
        rollout_id=a.rollout_id,
        mode=a.mode,
        allow_downgrade=a.allow_downgrade,
    )


def next_seq(last_seq: int | None, now: float) -> int:
    """Strictly above ``last_seq`` and never below the wall clock in milliseconds."""
    return max((last_seq or 0) + 1, int(now * 1000))


@dataclass(frozen=True)
class DirectiveIssuer:
    store: HubStore
    signing_key: Ed25519PrivateKey
    settings: DirectiveSettings = DirectiveSettings()

    def needs_directive(
        self, desired_rev: int, last: DirectiveHead | DirectiveRecord | None, now: float
    ) -> bool:
        """Whether a device whose assignments are at ``desired_rev`` needs a new directive."""
        if last is None:
            # Nothing to say to a device the hub never assigned anything.
            return desired_rev > 0
        if last.desired_rev != desired_rev:
            return True
        return last.expires_at - now <= self.settings.resign_before_s

    def issue(self, device_id: str, now: float) -> DirectiveRecord:
        """Build, sign and record the current directive of ``device_id``."""
        with self.store.transaction():
            # Read inside the transaction: another writer may have bumped the rev.
            current = self.store.get_device(device_id)
            if current is None:
                raise HubNotFoundError(f"no such device {device_id}")
            last = self.store.latest_directive(current.device_id)
            assignments = self.store.get_assignments(current.device_id)
            directive = Directive(
                device=current.device_id,
                seq=next_seq(last.seq if last else None, now),
                issued_at=now,
                expires_at=now + self.settings.expiry_s,
                assignments=tuple(to_core_assignment(assignments[m]) for m in sorted(assignments)),
            )
            record = DirectiveRecord(
                device_id=current.device_id,
                seq=directive.seq,
                issued_at=directive.issued_at,
                expires_at=directive.expires_at,
                desired_rev=current.desired_rev,
                envelope=sign_directive(directive, self.signing_key),
            )
            self.store.record_directive(record)
            return record

    def due(self, now: float) -> list[DirectiveRecord]:
        """Issue every directive that is missing, stale or about to expire.

        Two reads of small columns per call (the hub ticks every second): decoding every
        device's state and every envelope here would cost the tick O(fleet) JSON work.
        """
        heads = self.store.directive_heads()
        return [
            self.issue(device_id, now)
            for device_id, device in self.store.device_heads().items()
            if self.needs_directive(device.desired_rev, heads.get(device_id), now)
        ]

    def latest(self) -> list[DirectiveRecord]:
        """Every device's latest directive (to restore retained messages a broker lost)."""
        return self.store.latest_directives()

    def unpublished(self) -> list[DirectiveRecord]:
        """Latest directives recorded but not yet published (e.g. after a crash)."""
        return self.store.latest_directives(unpublished_only=True)
