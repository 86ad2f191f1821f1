"""The deployment machine as a table: legal paths, refused events, recovery decisions."""

from __future__ import annotations

import itertools

import pytest

from edgefleet.agent.deploy.machine import (
    POINTER_STATES,
    RECOVERY,
    TERMINAL_STATES,
    TRANSITIONS,
    Event,
    IllegalTransitionError,
    Resume,
    State,
    allowed_events,
    handle,
    recovery_for,
)
from edgefleet.agent.errors import DeploymentError
from edgefleet.core.errors import exit_code_for

HAPPY_PATH = [
    (Event.INSTALL_REQUESTED, State.DOWNLOADING),
    (Event.DOWNLOADED, State.VERIFYING),
    (Event.VERIFIED, State.STAGED),
    (Event.ACTIVATE, State.ACTIVATING),
    (Event.ACTIVATED, State.PROBATION),
    (Event.PROBATION_PASSED, State.COMMITTED),
    (Event.FINISHED, State.IDLE),
]


def test_happy_path_reaches_committed_then_idle() -> None:
    state = State.IDLE
    for event, expected in HAPPY_PATH:
        state = handle(state, event)
        assert state is expected


@pytest.mark.parametrize(
    ("path", "end"),
    [
        ([Event.INSTALL_REQUESTED, Event.DOWNLOAD_FAILED], State.FAILED),
        ([Event.INSTALL_REQUESTED, Event.DOWNLOADED, Event.VERIFY_REJECTED], State.REJECTED),
        ([Event.INSTALL_REQUESTED, Event.DOWNLOADED, Event.VERIFY_FAILED], State.FAILED),
        (
            [
                Event.INSTALL_REQUESTED,
                Event.DOWNLOADED,
                Event.VERIFIED,
                Event.ACTIVATE,
                Event.ACTIVATION_FAILED,
                Event.RESTORED,
            ],
            State.ROLLED_BACK,
        ),
        (
            [
                Event.INSTALL_REQUESTED,
                Event.DOWNLOADED,
                Event.VERIFIED,
                Event.ACTIVATE,
                Event.ACTIVATED,
                Event.PROBATION_FAILED,
                Event.RESTORED,
            ],
            State.ROLLED_BACK,
        ),
        ([Event.ROLLBACK_REQUESTED, Event.RESTORED], State.ROLLED_BACK),
    ],
    ids=[
        "download-failed",
        "rejected",
        "verify-failed",
        "activation-failed",
        "probation-failed",
        "manual-rollback",
    ],
)
def test_failure_paths(path: list[Event], end: State) -> None:
    state = State.IDLE
    for event in path:
        state = handle(state, event)
    assert state is end
    assert handle(state, Event.FINISHED) is State.IDLE


ILLEGAL = [(s, e) for s, e in itertools.product(State, Event) if (s, e) not in TRANSITIONS]


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=[f"{s}-{e}" for s, e in ILLEGAL])
def test_illegal_events_are_refused_and_state_is_unchanged(state: State, event: Event) -> None:
    current = state
    with pytest.raises(IllegalTransitionError) as info:
        current = handle(current, event)
    assert current is state
    assert info.value.state is state and info.value.event is event
    assert event.value in str(info.value) and state.value in str(info.value)
    assert isinstance(info.value, DeploymentError)
    assert exit_code_for(info.value) == 1


def test_terminal_states_only_accept_finished() -> None:
    for state in TERMINAL_STATES:
        assert allowed_events(state) == {Event.FINISHED}


def test_failed_and_rejected_never_follow_a_pointer_switch() -> None:
    for (source, _), target in TRANSITIONS.items():
        if target in (State.FAILED, State.REJECTED):
            assert source not in POINTER_STATES


def test_every_state_is_reachable_from_idle() -> None:
    seen = {State.IDLE}
    frontier = [State.IDLE]
    while frontier:
        state = frontier.pop()
        for event in allowed_events(state):
            nxt = handle(state, event)
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(State)


def test_every_state_has_a_recovery_rule() -> None:
    assert set(RECOVERY) == set(State)
    for state, rule in RECOVERY.items():
        if rule.give_up is not None:
            # the give-up event must be legal where it is used
            handle(state, rule.give_up)


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (State.IDLE, Resume.NOTHING),
        (State.DOWNLOADING, Resume.RESUME),
        (State.VERIFYING, Resume.RESUME),
        (State.STAGED, Resume.RESUME),
        (State.ACTIVATING, Resume.RESUME),
        (State.PROBATION, Resume.RESUME),
        (State.ROLLING_BACK, Resume.RESUME),
        (State.COMMITTED, Resume.FINISH),
        (State.ROLLED_BACK, Resume.FINISH),
        (State.FAILED, Resume.FINISH),
        (State.REJECTED, Resume.FINISH),
    ],
)
def test_recovery_within_the_loop_limit(state: State, action: Resume) -> None:
    decision = recovery_for(state, attempts=1, max_attempts=3)
    assert decision.action is action
    assert decision.event is None


@pytest.mark.parametrize(
    ("state", "event", "end"),
    [
        (State.DOWNLOADING, Event.ABANDONED, State.FAILED),
        (State.VERIFYING, Event.ABANDONED, State.FAILED),
        (State.STAGED, Event.ABANDONED, State.FAILED),
        (State.ACTIVATING, Event.ACTIVATION_FAILED, State.ROLLING_BACK),
        (State.PROBATION, Event.PROBATION_FAILED, State.ROLLING_BACK),
    ],
)
def test_loop_counter_gives_up(state: State, event: Event, end: State) -> None:
    decision = recovery_for(state, attempts=4, max_attempts=3)
    assert decision.event is event
    assert "gave up after 3 restarts" in decision.reason
    assert handle(state, event) is end


def test_rolling_back_is_always_resumed() -> None:
    decision = recovery_for(State.ROLLING_BACK, attempts=99, max_attempts=3)
    assert decision.action is Resume.RESUME and decision.event is None
