"""The rollout state machine: one transition table, one ``handle`` entry point.

::

    created ──start──► running(0) ──advance──► running(k+1) ──complete──► completed
       │                 │   ▲                                              │
       │               pause resume                                     rollback
       │                 ▼   │                                              ▼
       │               paused ──abort──► aborted ──rollback──► rolled_back
       └──abort──► aborted  └──rollback──► rolled_back

Invariants: ``handle`` is pure (takes ``now``), refuses an event the table
does not list for the current state with :class:`RolloutStateError` and
leaves the status unchanged; ``phase`` only changes on ``advance``;
``rolled_back`` is final. ``completed`` and ``aborted`` still accept
``rollback`` because an operator may want a finished rollout undone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from edgefleet.hub.errors import RolloutStateError


class RolloutState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


class RolloutEvent(StrEnum):
    START = "start"
    ADVANCE = "advance"  # the current phase passed its gates; start the next one
    COMPLETE = "complete"  # the last phase passed its gates
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ROLLBACK = "rollback"


S, E = RolloutState, RolloutEvent

TRANSITIONS: Mapping[tuple[RolloutState, RolloutEvent], RolloutState] = {
    (S.CREATED, E.START): S.RUNNING,
    (S.CREATED, E.ABORT): S.ABORTED,
    (S.RUNNING, E.ADVANCE): S.RUNNING,
    (S.RUNNING, E.COMPLETE): S.COMPLETED,
    (S.RUNNING, E.PAUSE): S.PAUSED,
    (S.RUNNING, E.ABORT): S.ABORTED,
    (S.RUNNING, E.ROLLBACK): S.ROLLED_BACK,
    (S.PAUSED, E.RESUME): S.RUNNING,
    (S.PAUSED, E.ABORT): S.ABORTED,
    (S.PAUSED, E.ROLLBACK): S.ROLLED_BACK,
    (S.ABORTED, E.ROLLBACK): S.ROLLED_BACK,
    (S.COMPLETED, E.ROLLBACK): S.ROLLED_BACK,
}

# States in which the engine still assigns devices or evaluates gates.
ACTIVE_STATES = frozenset({S.CREATED, S.RUNNING, S.PAUSED})
FINAL_STATES = frozenset({S.ROLLED_BACK})


@dataclass(frozen=True)
class RolloutStatus:
    """Where a rollout stands. ``phase`` is -1 until started."""

    state: RolloutState = RolloutState.CREATED
    phase: int = -1
    phase_started_at: float | None = None
    updated_at: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "phase": self.phase,
            "phase_started_at": self.phase_started_at,
            "updated_at": self.updated_at,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutStatus:
        return cls(
            state=RolloutState(data["state"]),
            phase=int(data.get("phase", -1)),
            phase_started_at=data.get("phase_started_at"),
            updated_at=float(data.get("updated_at", 0.0)),
            reason=str(data.get("reason", "")),
        )


def allowed_events(state: RolloutState) -> list[RolloutEvent]:
    return [e for (s, e) in TRANSITIONS if s is state]


def handle(
    status: RolloutStatus,
    event: RolloutEvent,
    now: float,
    *,
    phase_count: int,
    reason: str = "",
) -> RolloutStatus:
    """Apply ``event`` to ``status``; raise :class:`RolloutStateError` if illegal."""
    target = TRANSITIONS.get((status.state, event))
    if target is None:
        allowed = ", ".join(e.value for e in allowed_events(status.state)) or "none"
        raise RolloutStateError(
            f"cannot {event.value} a rollout that is {status.state.value} (allowed: {allowed})"
        )
    if event is E.ADVANCE and status.phase + 1 >= phase_count:
        raise RolloutStateError("cannot advance past the last phase; complete instead")
    if event is E.COMPLETE and status.phase != phase_count - 1:
        raise RolloutStateError("cannot complete before the last phase")
    changes: dict[str, Any] = {"state": target, "updated_at": now, "reason": reason}
    if event is E.START:
        changes.update(phase=0, phase_started_at=now)
    elif event is E.ADVANCE:
        changes.update(phase=status.phase + 1, phase_started_at=now)
    return replace(status, **changes)
