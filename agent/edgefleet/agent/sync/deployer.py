"""The sync's view of the deployment driver: what is installed, and a way to hand work over.

Only the holder of the state lock drives deployments (the daemon's deployment thread),
so the sync never calls the driver itself. :class:`InboxDeployer` hands requests over
through the same inbox ``edgefleet agent install`` and ``rollback`` use and reads
outcomes back from ``deploy.json``; a request taken by the driver becomes a
deployment with the same id, so its outcome is found by that id.

Every request carries the rollout id of the assignment that asked for it: the driver
keeps it in the deployment's record and puts it into each of its telemetry events, so
the hub counts an outcome only against the rollout it belongs to (an old failure of the
same bundle under another rollout stays with that rollout).

:class:`Deployer` is the narrow interface the orchestrator needs; unit tests and the
distribution benchmark plug in simpler implementations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgefleet.agent.deploy import inbox
from edgefleet.agent.deploy.layout import StateLayout
from edgefleet.agent.deploy.machine import State
from edgefleet.agent.deploy.record import DeployState, DeployStateFile
from edgefleet.agent.deploy.slots import SlotTable
from edgefleet.agent.deploy.store import BundleStore
from edgefleet.agent.sync.reconcile import InstalledModel

#: Outcome states that mean the request did what it was asked to.
INSTALL_SUCCESS = frozenset({State.COMMITTED.value})
ROLLBACK_SUCCESS = frozenset({State.ROLLED_BACK.value, State.COMMITTED.value})


@dataclass(frozen=True)
class DeployOutcome:
    """How a handed-over request ended (``state`` is a terminal deployment state)."""

    request_id: str
    kind: str  # "install" | "rollback"
    state: str
    reason: str | None = None

    @property
    def succeeded(self) -> bool:
        ok = INSTALL_SUCCESS if self.kind == "install" else ROLLBACK_SUCCESS
        return self.state in ok


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


class InboxDeployer:
    """Hands requests to the daemon's deployment thread through ``STATE_DIR/inbox``."""

    def __init__(self, layout: StateLayout, max_bundle_bytes: int) -> None:
        self.layout = layout
        self.max_bundle_bytes = max_bundle_bytes
        self._slots = SlotTable(layout)
        self._store = BundleStore(layout)
        self._file = DeployStateFile(layout.deploy_file)

    def _state(self) -> DeployState:
        return self._file.load()

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
        return self._state().current is None and not inbox.pending(self.layout)

    def submit_install(
        self, path: Path, *, allow_downgrade: bool, now: float, rollout_id: str | None = None
    ) -> str:
        request = inbox.submit_install(
            self.layout,
            path,
            now=now,
            max_bundle_bytes=self.max_bundle_bytes,
            allow_downgrade=allow_downgrade,
            rollout_id=rollout_id,
        )
        return request.id

    def submit_rollback(self, model: str, *, now: float, rollout_id: str | None = None) -> str:
        return inbox.submit_rollback(self.layout, model, now=now, rollout_id=rollout_id).id

    def outcome(self, request_id: str) -> DeployOutcome | None:
        """The outcome once the request ended; None while queued or running.

        A request that is neither queued, running nor in the history was lost
        (e.g. refused as unreadable): it ends as ``failed``.
        """
        # The inbox first: the driver records a request in deploy.json before it
        # removes the inbox file, so a request missing from the inbox is in the state.
        if any(r.id == request_id for r in inbox.pending(self.layout)):
            return None
        state = self._state()
        found = state.find_outcome(request_id)
        if found is not None:
            return DeployOutcome(
                request_id, str(found.get("kind")), str(found.get("state")), found.get("reason")
            )
        if state.current is not None and state.current.id == request_id:
            return None
        return DeployOutcome(request_id, "install", State.FAILED.value, "deployment request lost")

    def in_progress(self) -> Progress | None:
        current = self._state().current
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
        return self._state().models
