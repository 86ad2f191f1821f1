"""Staged rollouts: the pure plan, state machine and gates, and the engine that applies them.

``plan``, ``machine``, ``evidence``, ``gates`` and ``progress`` do no I/O and take ``now`` as an
argument; ``engine``, ``transitions`` and ``evaluation`` read and write the hub store around
them.
"""

from __future__ import annotations

from edgefleet.hub.rollout.evidence import VersionStats, prediction_psi
from edgefleet.hub.rollout.gates import (
    DeviceReport,
    GateResult,
    GateStatus,
    InstallStatus,
    PhaseEvaluation,
    Verdict,
    evaluate_phase,
)
from edgefleet.hub.rollout.machine import (
    TRANSITIONS,
    RolloutEvent,
    RolloutState,
    RolloutStatus,
    handle,
)
from edgefleet.hub.rollout.plan import Gates, Phase, RolloutPlan, parse_phases

__all__ = [
    "TRANSITIONS",
    "PhaseEvaluation",
    "DeviceReport",
    "GateResult",
    "GateStatus",
    "Gates",
    "InstallStatus",
    "Phase",
    "RolloutEvent",
    "RolloutPlan",
    "RolloutState",
    "RolloutStatus",
    "Verdict",
    "VersionStats",
    "evaluate_phase",
    "handle",
    "parse_phases",
    "prediction_psi",
]
