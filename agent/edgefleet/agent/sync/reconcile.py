"""What to do next to bring the device to its directive (pure: no I/O, no clock).

The sync keeps one :class:`LedgerEntry` per assignment it worked on, keyed by
``(model, bundle sha256, rollout id)``, persisted in ``sync/ledger.json``.
:func:`next_action` compares the accepted directive with what is installed and
with the ledger and returns at most one action; the orchestrator performs it,
updates the ledger and asks again.

Ledger states::

    downloading  fetching the bundle from the hub (attempts counts whole fetches)
    handed       given to the deployment driver; ``request_id`` names the request
    waiting      the disk was full (downloading or installing); tried again from
                 ``retry_at`` on, the downloaded file kept when there is one
    done         the deployment ended as wanted (or the assignment was already met)
    failed       the deployment ended badly or the bundle never matched its hash
    refused      the sync refused it (downgrade, budget, shadow mode) before fetching

Invariants:

- ``failed`` and ``refused`` are final for their key: the same bundle of the same
  rollout is never tried again (no install loop on a bad bundle); a new rollout id or
  another bundle is a new key.
- At most one request is with the deployment driver at a time (``handed``), and
  nothing is handed over while the driver is busy with anything else (an operator's
  ``agent install``, say).
- An assignment whose bundle is already the active slot needs nothing. One whose
  bundle is the previous slot is met by a rollback (the A/B switch, no download).
- A version below the installed one is refused unless the signed assignment allows
  the downgrade (``check_downgrade``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from edgefleet.core.directive import Assignment, Directive, check_downgrade
from edgefleet.core.errors import DirectiveError

DOWNLOADING = "downloading"
HANDED = "handed"
DONE = "done"
FAILED = "failed"
REFUSED = "refused"
WAITING = "waiting"
LEDGER_STATES = (DOWNLOADING, HANDED, DONE, FAILED, REFUSED, WAITING)
FINAL_STATES = frozenset({DONE, FAILED, REFUSED})

Key = tuple[str, str, str]


def key_of(assignment: Assignment) -> Key:
    return (assignment.model, assignment.bundle_sha256, assignment.rollout_id)


@dataclass(frozen=True)
class LedgerEntry:
    model: str
    bundle_sha256: str
    rollout_id: str
    version: int
    state: str
    updated_at: float
    request_id: str | None = None
    reason: str | None = None
    result: str | None = None  # the deployment's terminal state, once it ended
    attempts: int = 0  # whole-bundle fetches started
    retries: int = 0  # times the disk was full for it (the backoff's attempt)
    retry_at: float | None = None  # while waiting: not before this time

    def __post_init__(self) -> None:
        if self.state not in LEDGER_STATES:
            raise ValueError(f"unknown ledger state {self.state!r}")

    @property
    def key(self) -> Key:
        return (self.model, self.bundle_sha256, self.rollout_id)

    def moved(self, state: str, now: float, **changes: Any) -> LedgerEntry:
        return replace(self, state=state, updated_at=now, **changes)

    @classmethod
    def start(cls, assignment: Assignment, state: str, now: float, **changes: Any) -> LedgerEntry:
        return cls(
            model=assignment.model,
            bundle_sha256=assignment.bundle_sha256,
            rollout_id=assignment.rollout_id,
            version=assignment.version,
            state=state,
            updated_at=now,
            **changes,
        )

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for name in ("retries", "retry_at"):  # only when used: older agents read the file
            if not data[name]:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LedgerEntry:
        return cls(
            model=str(data["model"]),
            bundle_sha256=str(data["bundle_sha256"]),
            rollout_id=str(data["rollout_id"]),
            version=int(data["version"]),
            state=str(data["state"]),
            updated_at=float(data["updated_at"]),
            request_id=data.get("request_id"),
            reason=data.get("reason"),
            result=data.get("result"),
            attempts=int(data.get("attempts", 0)),
            retries=int(data.get("retries", 0)),
            retry_at=None if data.get("retry_at") is None else float(data["retry_at"]),
        )


@dataclass(frozen=True)
class InstalledModel:
    """The slot pointers of one model, with the versions their bundles hold."""

    active_sha: str | None = None
    active_version: int | None = None
    previous_sha: str | None = None
    previous_version: int | None = None


class Step(StrEnum):
    DOWNLOAD = "download"  # fetch (or keep fetching) the bundle from the hub
    INSTALL = "install"  # hand the downloaded file to the deployment driver
    ROLLBACK = "rollback"  # switch back to the previous slot, which holds the bundle
    REFUSE = "refuse"  # never fetch this assignment; report why
    WAIT = "wait"  # the driver is busy, or the disk was full; ask again later


@dataclass(frozen=True)
class Action:
    step: Step
    assignment: Assignment
    reason: str | None = None


def wanted(directive: Directive | None) -> list[Assignment]:
    """The assignments this agent acts on, in a stable order (by model)."""
    if directive is None:
        return []
    return sorted((a for a in directive.assignments), key=lambda a: (a.model, a.mode))


def _held(entry: LedgerEntry | None, now: float | None) -> str | None:
    """Why an assignment must wait for its ledger entry, or None when it need not."""
    if entry is None:
        return None
    if entry.state == HANDED:
        return "the deployment driver has it"
    if entry.state == WAITING and (now is None or now < (entry.retry_at or 0.0)):
        return entry.reason or "waiting for disk space"
    return None


def next_action(
    directive: Directive | None,
    installed: Mapping[str, InstalledModel],
    ledger: Mapping[Key, LedgerEntry],
    *,
    deployer_idle: bool,
    downloaded: Collection[str],
    max_bundle_bytes: int,
    now: float | None = None,
) -> Action | None:
    """The next thing to do for the first assignment not yet met, or None when all are.

    ``now`` (seconds) is needed only to end a wait for disk space.
    """
    for assignment in wanted(directive):
        entry = ledger.get(key_of(assignment))
        if entry is not None and entry.state in FINAL_STATES:
            continue
        held = _held(entry, now)
        if held is not None:
            return Action(Step.WAIT, assignment, held)
        if assignment.mode != "active":
            return Action(
                Step.REFUSE, assignment, f"{assignment.mode} mode is not supported by this agent"
            )
        current = installed.get(assignment.model, InstalledModel())
        if current.active_sha == assignment.bundle_sha256:
            continue
        if assignment.size > max_bundle_bytes:
            return Action(
                Step.REFUSE,
                assignment,
                f"bundle is {assignment.size} bytes, over the budget of {max_bundle_bytes} bytes",
            )
        try:
            check_downgrade(current.active_version, assignment)
        except DirectiveError as e:
            return Action(Step.REFUSE, assignment, str(e))
        if current.previous_sha == assignment.bundle_sha256:
            return Action(Step.ROLLBACK if deployer_idle else Step.WAIT, assignment)
        if assignment.bundle_sha256 in downloaded:
            return Action(Step.INSTALL if deployer_idle else Step.WAIT, assignment)
        return Action(Step.DOWNLOAD, assignment)
    return None


def prune(ledger: Mapping[Key, LedgerEntry], keep: Iterable[Key]) -> dict[Key, LedgerEntry]:
    """The ledger without entries for assignments the directive no longer names.

    An entry with the driver (``handed``) stays until its outcome is known.
    """
    keep_set = set(keep)
    return {k: e for k, e in ledger.items() if k in keep_set or e.state == HANDED}
