"""The sync's view of the deployment thread: what is installed, and a way to hand work over.

Only the holder of the state lock drives deployments (the daemon's deployment thread),
so the sync never calls the driver itself. :class:`QueueDeployer` hands requests to
that thread through the in-process
:class:`~edgefleet.agent.deploy.deployment_queue.DeploymentQueue` and learns each
outcome from its ticket (a future, resolved by the deployment thread, whose callback
wakes the sync). The bundle file the sync downloaded stays where it is and stays the
sync's: the driver links it, so no second copy is written; the sync deletes it once
the outcome is known.

Every request carries the rollout id of the assignment that asked for it: the driver
keeps it in the deployment's record and puts it into each of its telemetry events, so
the hub counts an outcome only against the rollout it belongs to (an old failure of the
same bundle under another rollout stays with that rollout).

:class:`Deployer` is the narrow interface the orchestrator needs; unit tests and the
distribution benchmark plug in simpler implementations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgefleet.agent.deploy import inbox
from edgefleet.agent.deploy.deployment_queue import (
    DeploymentOutcome,
    DeploymentQueue,
    DeploymentTicket,
)
from edgefleet.agent.deploy.layout import StateLayout
from edgefleet.agent.deploy.record import DeployState
from edgefleet.agent.deploy.slots import SlotTable
from edgefleet.agent.deploy.store import ExtractedBundleStore
from edgefleet.agent.deploy.worker import outcome_from_record
from edgefleet.agent.sync.reconcile import InstalledModel

#: How a handed-over request ended (the deployment queue's typed outcome).
DeployOutcome = DeploymentOutcome


@dataclass(frozen=True)
class Progress:
    """A deployment in progress, for the state report."""

    request_id: str
    state: str
    model: str | None
    version: int | None
    bundle_sha256: str | None
    reason: str | None
    at: float
    rollout_id: str | None = None


class Deployer(Protocol):
    def installed(self) -> Mapping[str, InstalledModel]: ...

    def idle(self) -> bool: ...

    def submit_install(
        self, path: Path, *, allow_downgrade: bool, now: float, rollout_id: str | None = None
    ) -> str: ...

    def submit_rollback(self, model: str, *, now: float, rollout_id: str | None = None) -> str: ...

    def outcome(self, request_id: str) -> DeployOutcome | None: ...

    def in_progress(self) -> Progress | None: ...

    def last_outcomes(self) -> Mapping[str, Mapping[str, Any]]: ...


class QueueDeployer:
    """Hands requests to the daemon's deployment thread through its queue.

    ``deploy_state`` returns the deployment thread's current state (the driver's,
    in memory); ``on_outcome`` (see :meth:`on_outcome`) is called, on the
    deployment thread, whenever a ticket is resolved.
    """

    def __init__(
        self,
        queue: DeploymentQueue,
        layout: StateLayout,
        deploy_state: Callable[[], DeployState],
    ) -> None:
        self.queue = queue
        self.layout = layout
        self._deploy_state = deploy_state
        self._slots = SlotTable(layout)
        self._store = ExtractedBundleStore(layout)
        self._tickets: dict[str, DeploymentTicket] = {}
        self._notify: Callable[[], None] | None = None

    def on_outcome(self, notify: Callable[[], None]) -> None:
        """Call ``notify()`` when a deployment handed over through this deployer ends."""
        self._notify = notify

    def installed(self) -> dict[str, InstalledModel]:
        out = {}
        for model, pointers in self._slots.all().items():
            out[model] = InstalledModel(
                active_sha=pointers.active,
                active_version=None
                if pointers.active is None
                else self._store.version_of(pointers.active),
                previous_sha=pointers.previous,
                previous_version=None
                if pointers.previous is None
                else self._store.version_of(pointers.previous),
            )
        return out

    def idle(self) -> bool:
        return (
            self._deploy_state().current is None
            and not self.queue.waiting()
            and not self.queue.taken_ids()
            and not inbox.pending(self.layout)
        )

    def submit_install(
        self, path: Path, *, allow_downgrade: bool, now: float, rollout_id: str | None = None
    ) -> str:
        ticket = self.queue.submit_install(
            path, now=now, allow_downgrade=allow_downgrade, rollout_id=rollout_id
        )
        return self._track(ticket)

    def submit_rollback(self, model: str, *, now: float, rollout_id: str | None = None) -> str:
        return self._track(self.queue.submit_rollback(model, now=now, rollout_id=rollout_id))

    def _track(self, ticket: DeploymentTicket) -> str:
        self._tickets[ticket.request_id] = ticket
        ticket.add_done_callback(lambda _outcome: self._notify and self._notify())
        return ticket.request_id

    def outcome(self, request_id: str) -> DeployOutcome | None:
        """The outcome once the request ended; None while queued or running.

        A request handed over before a restart has no ticket: its outcome is in the
        deployment state, or it is running, or it was lost (``failed``).
        """
        ticket = self._tickets.get(request_id)
        if ticket is not None:
            outcome = ticket.outcome()
            if outcome is not None:
                del self._tickets[request_id]
            return outcome
        state = self._deploy_state()
        if state.current is not None and state.current.id == request_id:
            return None
        return outcome_from_record(request_id, state.find_outcome(request_id))

    def in_progress(self) -> Progress | None:
        current = self._deploy_state().current
        if current is None:
            return None
        return Progress(
            request_id=current.id,
            state=current.state.value,
            model=current.model,
            version=current.version,
            bundle_sha256=current.bundle_sha256,
            reason=current.reason,
            at=current.updated_at,
            rollout_id=current.rollout_id,
        )

    def last_outcomes(self) -> Mapping[str, Mapping[str, Any]]:
        return self._deploy_state().models
