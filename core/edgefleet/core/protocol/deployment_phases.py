"""Deployment phases: the one vocabulary of agent ledger, wire and hub, in one table.

A deployment of a bundle on a device is named by the same word everywhere: the
agent's deployment machine persists it in ``deploy.json`` and puts it into each
deployment event, the sync reports it in the retained state
(``DeviceState.models[].deployment.state``), and the hub turns it into a
device's progress in a rollout. :data:`PHASES` is the table that says, for every
phase, who may say it and what it means for a rollout; the agent's machine states
and the hub's outcome map are derived from it, never written out again.

Invariants:

- every machine state of the agent but ``idle`` is a phase with ``machine=True``
  (``edgefleet.agent.deploy.machine`` checks this at import);
- the terminal phases are exactly those whose outcome is not RUNNING or QUEUED;
- a phase this table does not know (a newer agent's) means RUNNING to the hub:
  the device is busy, and its next known phase settles it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class DeploymentPhase(StrEnum):
    QUEUED = "queued"
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
    FAILED_DISK_FULL = "failed_disk_full"


class PhaseOutcome(StrEnum):
    """What a phase means for a rollout."""

    COMMITTED = "committed"  # probation passed
    FAILED = "failed"  # stopped before any slot moved (failed, rejected)
    ROLLED_BACK = "rolled_back"  # the previous slot is back (for a rollback: the named bundle)
    RUNNING = "running"  # the sync or the driver works on it; the slot may already point at it
    QUEUED = "queued"  # handed to the driver; not started, or its outcome not read back yet


@dataclass(frozen=True)
class PhaseInfo:
    outcome: PhaseOutcome
    machine: bool  # a state of the agent's deployment machine (persisted in deploy.json)
    meaning: str


P, Out = DeploymentPhase, PhaseOutcome

#: The table. Order is the order of an install.
PHASES: Mapping[DeploymentPhase, PhaseInfo] = MappingProxyType(
    {
        P.QUEUED: PhaseInfo(Out.QUEUED, False, "handed to the deployment thread, not started"),
        P.DOWNLOADING: PhaseInfo(Out.RUNNING, True, "the bundle is being fetched"),
        P.VERIFYING: PhaseInfo(Out.RUNNING, True, "signatures, hashes and target are checked"),
        P.STAGED: PhaseInfo(Out.RUNNING, True, "verified and extracted, no slot moved"),
        P.ACTIVATING: PhaseInfo(Out.RUNNING, True, "the slot switches to the new version"),
        P.PROBATION: PhaseInfo(Out.RUNNING, True, "the new version serves under watch"),
        P.ROLLING_BACK: PhaseInfo(Out.RUNNING, True, "the previous slot is being restored"),
        P.COMMITTED: PhaseInfo(Out.COMMITTED, True, "probation passed"),
        P.ROLLED_BACK: PhaseInfo(Out.ROLLED_BACK, True, "the previous slot is back"),
        P.FAILED: PhaseInfo(Out.FAILED, True, "ended before serving the new version"),
        P.REJECTED: PhaseInfo(Out.FAILED, True, "refused: signatures, budget, target, version"),
        P.FAILED_DISK_FULL: PhaseInfo(
            Out.RUNNING, False, "no space to install; retried with backoff, old version serves"
        ),
    }
)

TERMINAL_PHASES: frozenset[DeploymentPhase] = frozenset(
    p for p, info in PHASES.items() if info.outcome not in (Out.RUNNING, Out.QUEUED)
)
MACHINE_PHASES: frozenset[DeploymentPhase] = frozenset(p for p, i in PHASES.items() if i.machine)
#: The outcome of each phase by its wire name (the hub's view).
OUTCOMES: Mapping[str, PhaseOutcome] = MappingProxyType(
    {p.value: info.outcome for p, info in PHASES.items()}
)


def outcome_of(phase: str) -> PhaseOutcome:
    """The outcome a phase name stands for; an unknown name is RUNNING."""
    return OUTCOMES.get(phase, PhaseOutcome.RUNNING)
