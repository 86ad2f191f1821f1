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
  between leaves it unpublished, and :meth:`unpublished` hands it out again;
- the broker's retained copy is never trusted to be current: the service
  republishes every device's latest directive on every (re)connect (a broker
  restored from an older snapshot keeps the hub's session *and* old retained
  directives), and a device that asks (:class:`ResyncAnswers`) gets its latest
  one again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class ResyncAnswers:
    """Which directive to publish again for a device that asked for its current one.

    A device with fresh state (reinstalled, SD card swapped) cannot tell a stale
    retained directive from the current one; it asks on ``resync`` with the seq it
    holds. The answer is the device's latest recorded directive when that is newer;
    at most one answer per device every ``min_interval_s`` (each answer is a
    publication, and the asker is a device). Used by the inbound worker only.
    """

    store: HubStore
    min_interval_s: float = 5.0
    _answered_at: dict[str, float] = field(default_factory=dict)

    def answer(self, device_id: str, known_seq: int | None, now: float) -> DirectiveRecord | None:
        last = self._answered_at.get(device_id)
        if last is not None and 0 <= now - last < self.min_interval_s:
            return None
        record = self.store.latest_directive(device_id)
        if record is None or (known_seq is not None and record.seq <= known_seq):
            return None
        self._answered_at[device_id] = now
        return record
