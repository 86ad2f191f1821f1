"""The deployment state machine as data: states, events, ONE transition table.

The path is ``idle → downloading → verifying → staged →
activating → probation → committed | rolled_back | failed | rejected``. One
state is added: ``rolling_back``, the in-progress state of restoring the
previous slot, so that a crash in the middle of a rollback is resumed like any
other step (mender's ArtifactRollback).

Invariants:

- :func:`handle` is the only way to move: it returns the next state for a
  legal ``(state, event)`` pair and raises :class:`IllegalTransitionError`
  otherwise; the caller's state is untouched because states are plain values.
- Terminal states (``committed``, ``rolled_back``, ``failed``, ``rejected``)
  only accept ``finished``, which returns to ``idle`` once the driver has
  cleaned up.
- ``failed`` and ``rejected`` are reached only before any slot pointer moved;
  once ``activating`` began, every failure goes through ``rolling_back``.
- :data:`RECOVERY` maps every persisted state to what the driver does after a
  restart: nothing, resume the step (every step is idempotent), or finish a
  terminal state. Past ``max_attempts`` resumes the ``give_up`` event is used
  instead (mender's loop counter), except for ``rolling_back``, which has no
  safer place to go and is always resumed.

State names are the deployment phases of
:mod:`edgefleet.core.protocol.deployment_phases` (the vocabulary agent, wire and hub
share); which of them are terminal is that table's answer.

This module does no I/O and knows nothing about bundles or files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from edgefleet.agent.errors import DeploymentError
from edgefleet.core.protocol.deployment_phases import MACHINE_PHASES, TERMINAL_PHASES


class State(StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    ACTIVATING = "activating"
    PROBATION = "probation"
    ROLLING_BACK = "rolling_back"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    REJECTED = "rejected"


class Event(StrEnum):
    INSTALL_REQUESTED = "install_requested"
    ROLLBACK_REQUESTED = "rollback_requested"
    DOWNLOADED = "downloaded"
    DOWNLOAD_FAILED = "download_failed"
    DOWNLOAD_REJECTED = "download_rejected"
    VERIFIED = "verified"
    VERIFY_REJECTED = "verify_rejected"
    VERIFY_FAILED = "verify_failed"
    ACTIVATE = "activate"
    ABANDONED = "abandoned"
    ACTIVATED = "activated"
    ACTIVATION_FAILED = "activation_failed"
    PROBATION_PASSED = "probation_passed"
    PROBATION_FAILED = "probation_failed"
    RESTORED = "restored"
    FINISHED = "finished"


# Every state but idle is a deployment phase of the shared vocabulary; the terminal
# ones are the table's, not a second list.
if {s.value for s in State} - {State.IDLE.value} != {p.value for p in MACHINE_PHASES}:
    raise ImportError("deployment machine states differ from core's deployment phases")
TERMINAL_STATES: frozenset[State] = frozenset(State(p.value) for p in TERMINAL_PHASES)

# States in which the slot pointers may differ from what they were before the
# deployment started (a crash there must be finished or undone, never ignored).
POINTER_STATES: frozenset[State] = frozenset(
    {State.ACTIVATING, State.PROBATION, State.ROLLING_BACK}
)

TRANSITIONS: Mapping[tuple[State, Event], State] = {
    (State.IDLE, Event.INSTALL_REQUESTED): State.DOWNLOADING,
    (State.IDLE, Event.ROLLBACK_REQUESTED): State.ROLLING_BACK,
    (State.DOWNLOADING, Event.DOWNLOADED): State.VERIFYING,
    (State.DOWNLOADING, Event.DOWNLOAD_FAILED): State.FAILED,
    (State.DOWNLOADING, Event.DOWNLOAD_REJECTED): State.REJECTED,
    (State.DOWNLOADING, Event.ABANDONED): State.FAILED,
    (State.VERIFYING, Event.VERIFIED): State.STAGED,
    (State.VERIFYING, Event.VERIFY_REJECTED): State.REJECTED,
    (State.VERIFYING, Event.VERIFY_FAILED): State.FAILED,
    (State.VERIFYING, Event.ABANDONED): State.FAILED,
    (State.STAGED, Event.ACTIVATE): State.ACTIVATING,
    (State.STAGED, Event.ABANDONED): State.FAILED,
    (State.ACTIVATING, Event.ACTIVATED): State.PROBATION,
    (State.ACTIVATING, Event.ACTIVATION_FAILED): State.ROLLING_BACK,
    (State.PROBATION, Event.PROBATION_PASSED): State.COMMITTED,
    (State.PROBATION, Event.PROBATION_FAILED): State.ROLLING_BACK,
    (State.ROLLING_BACK, Event.RESTORED): State.ROLLED_BACK,
    (State.COMMITTED, Event.FINISHED): State.IDLE,
    (State.ROLLED_BACK, Event.FINISHED): State.IDLE,
    (State.FAILED, Event.FINISHED): State.IDLE,
    (State.REJECTED, Event.FINISHED): State.IDLE,
}


class IllegalTransitionError(DeploymentError):
    """An event that the current state does not accept."""

    def __init__(self, state: State, event: Event) -> None:
        allowed = ", ".join(sorted(e.value for (s, e) in TRANSITIONS if s == state)) or "none"
        super().__init__(
            f"deployment event {event.value!r} is not allowed in state {state.value!r} "
            f"(allowed: {allowed})"
        )
        self.state = state
        self.event = event


def handle(state: State, event: Event) -> State:
    """The state after ``event``; raises :class:`IllegalTransitionError` for illegal pairs."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransitionError(state, event) from None


def allowed_events(state: State) -> frozenset[Event]:
    return frozenset(e for (s, e) in TRANSITIONS if s == state)


class Resume(StrEnum):
    """What the driver does with a persisted state after a restart."""

    NOTHING = "nothing"
    RESUME = "resume"  # redo the state's step from its start (steps are idempotent)
    FINISH = "finish"  # clean up a terminal state and go idle


@dataclass(frozen=True)
class Recovery:
    action: Resume
    # Used instead of resuming once the deployment was resumed max_attempts times.
    give_up: Event | None
    why: str


RECOVERY: Mapping[State, Recovery] = {
    State.IDLE: Recovery(Resume.NOTHING, None, "nothing in progress"),
    State.DOWNLOADING: Recovery(Resume.RESUME, Event.ABANDONED, "fetch the bundle again"),
    State.VERIFYING: Recovery(Resume.RESUME, Event.ABANDONED, "verify the download again"),
    State.STAGED: Recovery(Resume.RESUME, Event.ABANDONED, "activate the staged bundle"),
    State.ACTIVATING: Recovery(
        Resume.RESUME, Event.ACTIVATION_FAILED, "switch the pointers again and load"
    ),
    State.PROBATION: Recovery(
        Resume.RESUME, Event.PROBATION_FAILED, "restart probation from the smoke set"
    ),
    State.ROLLING_BACK: Recovery(Resume.RESUME, None, "restore the previous slot again"),
    State.COMMITTED: Recovery(Resume.FINISH, None, "clean up and go idle"),
    State.ROLLED_BACK: Recovery(Resume.FINISH, None, "clean up and go idle"),
    State.FAILED: Recovery(Resume.FINISH, None, "clean up and go idle"),
    State.REJECTED: Recovery(Resume.FINISH, None, "clean up and go idle"),
}


@dataclass(frozen=True)
class RecoveryDecision:
    """What to do with a persisted deployment after a restart."""

    action: Resume
    event: Event | None  # the give-up event, when the loop counter ran out
    reason: str


def recovery_for(state: State, attempts: int, max_attempts: int) -> RecoveryDecision:
    """Map a persisted state and its resume count to the recovery step (pure).

    ``attempts`` is how many times this deployment has already been resumed
    after an unclean stop, including the one being decided now.
    """
    rule = RECOVERY[state]
    if rule.action is Resume.RESUME and rule.give_up is not None and attempts > max_attempts:
        return RecoveryDecision(
            Resume.RESUME,
            rule.give_up,
            f"gave up after {attempts - 1} restarts in state {state.value}",
        )
    return RecoveryDecision(rule.action, None, rule.why)
