"""The deployment phase table is the one vocabulary of agent, wire and hub."""

from __future__ import annotations

from edgefleet.agent.deploy.machine import TERMINAL_STATES, State
from edgefleet.agent.sync.reporter import TERMINAL_DEPLOYMENT_STATES
from edgefleet.core.protocol.deployment_phases import (
    MACHINE_PHASES,
    PHASES,
    TERMINAL_PHASES,
    DeploymentPhase,
    PhaseOutcome,
    outcome_of,
)
from edgefleet.hub.rollout.progress import DEPLOYMENT_OUTCOMES, Outcome
from edgefleet.hub.rollout.progress import outcome_of as hub_outcome_of


def test_the_agent_machine_states_are_the_machine_phases() -> None:
    assert {s.value for s in State if s is not State.IDLE} == {p.value for p in MACHINE_PHASES}
    assert {s.value for s in TERMINAL_STATES} == {p.value for p in TERMINAL_PHASES}
    assert {p.value for p in TERMINAL_PHASES} == TERMINAL_DEPLOYMENT_STATES


def test_terminal_phases_are_the_settled_outcomes() -> None:
    assert {p.value for p in TERMINAL_PHASES} == {"committed", "rolled_back", "failed", "rejected"}
    assert DeploymentPhase.FAILED_DISK_FULL not in TERMINAL_PHASES


def test_the_hub_reads_outcomes_from_the_same_table() -> None:
    assert Outcome is PhaseOutcome
    assert dict(DEPLOYMENT_OUTCOMES) == {p.value: i.outcome for p, i in PHASES.items()}
    assert hub_outcome_of("rejected") is PhaseOutcome.FAILED
    assert hub_outcome_of("queued") is PhaseOutcome.QUEUED
    # A device waiting for disk space is still at work on the rollout, not failed.
    assert hub_outcome_of(DeploymentPhase.FAILED_DISK_FULL) is PhaseOutcome.RUNNING
    assert outcome_of("a-phase-from-the-future") is PhaseOutcome.RUNNING
