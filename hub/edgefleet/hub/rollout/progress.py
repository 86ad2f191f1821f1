"""A moved device's install status from what the agent reports: pure, two tables.

The agent tells the hub about a deployment in two ways: deployment events
(telemetry records of kind ``event``, one per step, from the deployment driver and
the sync) and the retained state report (per model the ``active`` and ``previous``
slots and one ``deployment`` with its state). This module turns one such report
about the rollout's bundle into an *observation* (:data:`OBSERVED`), and an
observation plus the device's current status into its next status
(:data:`TRANSITIONS`).

Invariants:

- the active slot alone never commits a device while a deployment of that bundle
  is running on it: the agent switches the slot in ``activating`` and keeps it
  through ``probation``, and a failed probation restores the previous slot (RAUC's
  mark-good: a version counts as installed only after its health check);
- a device is committed when the agent says ``committed`` for the bundle, when its
  rollback *to* the bundle finished (the A/B switch the agent uses when the
  rollout's bundle is its previous slot), or when it runs the bundle and nothing is
  in progress for it;
- ``failed``, ``rejected`` and ``rolled_back`` (an install undone) count as failed,
  also after earlier reports showed the slot switched;
- committed, failed and the hub's own rolled_back are final for the rollout; a
  timed-out device still settles when it reports an outcome.

Nothing here reads a clock, a store or the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.core.protocol.deployment_phases import OUTCOMES, PhaseOutcome
from edgefleet.core.protocol.deployment_phases import outcome_of as phase_outcome
from edgefleet.hub.rollout.gates import InstallStatus

# The agent's deployment phases and what each means for a rollout are one table in
# core (``edgefleet.core.protocol.deployment_phases``); a phase this hub does not know
# is RUNNING.
Outcome = PhaseOutcome
DEPLOYMENT_OUTCOMES: Mapping[str, Outcome] = OUTCOMES


Oc, St = Outcome, InstallStatus

# (what the report says about the rollout's bundle — None when nothing —, whether the
# device is known to run that bundle) -> what the rollout learns; None: nothing.
OBSERVED: Mapping[tuple[Outcome | None, bool], InstallStatus | None] = {
    (None, False): None,
    (None, True): St.COMMITTED,  # runs it and nothing is in progress for it
    (Oc.COMMITTED, False): St.COMMITTED,  # committed, and since replaced on the device
    (Oc.COMMITTED, True): St.COMMITTED,
    (Oc.FAILED, False): St.FAILED,
    (Oc.FAILED, True): St.FAILED,
    (Oc.ROLLED_BACK, False): St.FAILED,  # the install was undone (activation or probation)
    (Oc.ROLLED_BACK, True): St.COMMITTED,  # a rollback to this bundle finished
    (Oc.RUNNING, False): St.INSTALLING,
    (Oc.RUNNING, True): St.INSTALLING,  # activating or in probation: switched, not proven
    (Oc.QUEUED, False): St.INSTALLING,
    # Only a finished deployment leaves the slot on a bundle the driver is not running:
    # the sync has not read the outcome back yet.
    (Oc.QUEUED, True): St.COMMITTED,
}

# (current status of the device in the rollout, observation) -> next status. Pairs not
# listed change nothing: committed, failed and rolled_back are final, and a device the
# gate timed out stays timed out until it reports an outcome (the gate would time it
# out again at once).
TRANSITIONS: Mapping[tuple[InstallStatus, InstallStatus], InstallStatus] = {
    (St.PENDING, St.INSTALLING): St.INSTALLING,
    (St.PENDING, St.COMMITTED): St.COMMITTED,
    (St.PENDING, St.FAILED): St.FAILED,
    (St.INSTALLING, St.INSTALLING): St.INSTALLING,  # a later step: the detail changes
    (St.INSTALLING, St.COMMITTED): St.COMMITTED,
    (St.INSTALLING, St.FAILED): St.FAILED,
    (St.TIMED_OUT, St.COMMITTED): St.COMMITTED,
    (St.TIMED_OUT, St.FAILED): St.FAILED,
}

#: Statuses that record when the device settled.
SETTLING = frozenset({St.COMMITTED, St.FAILED})


def outcome_of(state: str) -> Outcome:
    """The outcome an agent deployment state stands for."""
    return phase_outcome(state)


def next_install(current: InstallStatus, observed: InstallStatus) -> InstallStatus | None:
    """The device's next status in the rollout, or None when the observation changes nothing."""
    return TRANSITIONS.get((current, observed))


@dataclass(frozen=True)
class Observation:
    """What one report says about a device's install of the rollout's bundle."""

    status: InstallStatus
    detail: str

    def __post_init__(self) -> None:
        if self.status not in (St.INSTALLING, St.COMMITTED, St.FAILED):
            raise ValueError(f"a report cannot observe {self.status.value}")


@dataclass(frozen=True)
class BundleRef:
    """The bundle a rollout gives one device."""

    rollout_id: str
    bundle_sha256: str
    version: int

    def names(self, bundle_sha256: str | None, version: int | None) -> bool:
        # Events without a bundle hash (older agents) are matched by version.
        if bundle_sha256:
            return bundle_sha256 == self.bundle_sha256
        return version is not None and version == self.version

    def foreign(self, rollout_id: str | None) -> bool:
        # Agents name the rollout in every deployment event; older agents' driver
        # events carry none, so absent means "could be this one".
        return rollout_id is not None and rollout_id != self.rollout_id


def _detail(state: str, reason: str | None) -> str:
    return (state if not reason else f"{state}: {reason}")[:500]


def observe_event(
    ref: BundleRef,
    *,
    state: str,
    version: int | None,
    bundle_sha256: str | None,
    rollout_id: str | None = None,
    reason: str | None = None,
    kind: str | None = None,
) -> Observation | None:
    """A deployment event (driver or sync); ``kind`` is the driver's "install" or "rollback"."""
    if not ref.names(bundle_sha256, version) or ref.foreign(rollout_id):
        return None
    outcome = outcome_of(state)
    # A rollback-kind deployment names the bundle it goes back to, so its
    # ``rolled_back`` leaves the device on that bundle.
    landed = kind == "rollback" and outcome is Outcome.ROLLED_BACK
    status = OBSERVED[(outcome, landed)]
    return None if status is None else Observation(status, _detail(state, reason))


@dataclass(frozen=True)
class DeploymentReport:
    """The ``deployment`` of one model in a state report."""

    state: str
    version: int | None
    bundle_sha256: str | None
    rollout_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ModelReport:
    """One entry of a state report's ``models``, as far as rollouts care."""

    name: str
    active_sha256: str | None = None
    deployment: DeploymentReport | None = None

    @classmethod
    def from_entry(cls, entry: object) -> ModelReport | None:
        """Read a ``models`` entry; None when it has no model name (the rest is optional)."""
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            return None
        active = entry.get("active")
        active_sha = active.get("bundle_sha256") if isinstance(active, Mapping) else None
        raw = entry.get("deployment")
        deployment = None
        if isinstance(raw, Mapping) and isinstance(raw.get("state"), str):
            deployment = DeploymentReport(
                state=raw["state"],
                version=_typed(raw, "version", int),
                bundle_sha256=_typed(raw, "bundle_sha256", str),
                rollout_id=_typed(raw, "rollout_id", str),
                reason=_typed(raw, "reason", str),
            )
        return cls(
            name=entry["name"],
            active_sha256=active_sha if isinstance(active_sha, str) else None,
            deployment=deployment,
        )


def _typed(raw: Mapping[str, Any], key: str, kind: type) -> Any:
    value = raw.get(key)
    if kind is int and isinstance(value, bool):
        return None
    return value if isinstance(value, kind) else None


def observe_state(ref: BundleRef, model: ModelReport) -> Observation | None:
    """What a state report's entry for the rollout's model says about the device's install."""
    d = model.deployment
    outcome = None
    detail = ""
    if d is not None and ref.names(d.bundle_sha256, d.version):
        if ref.foreign(d.rollout_id):
            # Another rollout's deployment of the same bundle: its outcome is not
            # this rollout's, and the active slot may be that deployment's probation.
            return None
        outcome = outcome_of(d.state)
        detail = _detail(d.state, d.reason)
    on_bundle = model.active_sha256 == ref.bundle_sha256
    status = OBSERVED[(outcome, on_bundle)]
    if status is None:
        return None
    if outcome is None:
        detail = "active, no deployment of it in progress"
    elif status is St.COMMITTED and outcome is not Outcome.COMMITTED:
        detail = f"{detail} (active)"
    return Observation(status, detail[:500])
