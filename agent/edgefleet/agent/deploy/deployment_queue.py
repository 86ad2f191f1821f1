"""The in-process hand-over from the hub sync to the deployment thread: :class:`DeploymentQueue`.

The sync works on its own thread; only the deployment thread
(:class:`~edgefleet.agent.deploy.worker.DeploymentWorker`, the state lock's holder)
drives deployments. The sync hands it a bundle file it downloaded and checked
against the signed directive's sha256 (or a rollback) with :meth:`DeploymentQueue.submit_install`
and gets a :class:`DeploymentTicket` back at once: a future that the deployment
thread resolves with a typed :class:`DeploymentOutcome` when the deployment ends.
Nothing is copied (the driver links the file into its download slot; see
:mod:`edgefleet.agent.deploy.intake`) and nothing is polled (the worker is woken
on submission, the ticket's callbacks run when it is resolved).

The command line (``agent install`` while the daemon runs) is another process and
keeps its file inbox (:mod:`edgefleet.agent.deploy.inbox`).

Invariants:

- requests are taken in submission order, one at a time;
- every ticket is resolved exactly once: with the deployment's terminal phase, or
  ``failed`` when the request could not even start;
- a request lives only in memory until the deployment thread takes it and persists
  it in ``deploy.json`` (under the ticket's id); after a crash before that, the
  sync finds the id nowhere and settles it as lost (``failed``), as it always did.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from edgefleet.core.protocol.deployment_phases import DeploymentPhase

log = logging.getLogger("edgefleet.agent.deploy")

#: Why a failed deployment failed, when the agent can tell (``DeploymentOutcome.failure``).
DISK_FULL = "disk_full"

_SUCCESS = {
    "install": frozenset({DeploymentPhase.COMMITTED}),
    "rollback": frozenset({DeploymentPhase.ROLLED_BACK, DeploymentPhase.COMMITTED}),
}


@dataclass(frozen=True)
class InstallRequest:
    id: str
    bundle: Path
    size: int | None  # bytes, known before the download (None: look at the file)
    allow_downgrade: bool = False
    rollout_id: str | None = None
    kind: str = "install"


@dataclass(frozen=True)
class RollbackRequest:
    id: str
    model: str
    rollout_id: str | None = None
    kind: str = "rollback"


DeploymentRequest = InstallRequest | RollbackRequest


@dataclass(frozen=True)
class DeploymentOutcome:
    """How a handed-over request ended: a terminal phase, why, and the failure kind."""

    request_id: str
    kind: str  # "install" | "rollback"
    phase: DeploymentPhase
    reason: str | None = None
    failure: str | None = None  # DISK_FULL, or None when the agent cannot tell

    def __post_init__(self) -> None:
        object.__setattr__(self, "phase", DeploymentPhase(self.phase))

    @property
    def state(self) -> str:
        """The phase's wire name."""
        return self.phase.value

    @property
    def succeeded(self) -> bool:
        return self.phase in _SUCCESS.get(self.kind, frozenset())

    @property
    def disk_full(self) -> bool:
        return self.failure == DISK_FULL


class DeploymentTicket:
    """The future outcome of one request (``concurrent.futures.Future`` underneath)."""

    def __init__(self, request: DeploymentRequest) -> None:
        self.request = request
        self._future: Future[DeploymentOutcome] = Future()

    @property
    def request_id(self) -> str:
        return self.request.id

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout_s: float | None = None) -> DeploymentOutcome:
        """The outcome; waits up to ``timeout_s`` (TimeoutError after)."""
        return self._future.result(timeout_s)

    def outcome(self) -> DeploymentOutcome | None:
        """The outcome if the deployment ended, else None (never waits)."""
        return self._future.result() if self._future.done() else None

    def add_done_callback(self, callback: Callable[[DeploymentOutcome], None]) -> None:
        """Call ``callback(outcome)`` once resolved (at once when it already is); it runs
        on the deployment thread, so it must only hand the news on."""
        self._future.add_done_callback(lambda f: callback(f.result()))

    def resolve(self, outcome: DeploymentOutcome) -> None:
        if not self._future.done():
            self._future.set_result(outcome)


class DeploymentQueue:
    """Requests from the sync to the deployment thread, in order; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: collections.deque[DeploymentTicket] = collections.deque()
        self._taken: dict[str, DeploymentTicket] = {}
        self._wake: Callable[[], None] | None = None

    # --- the sync's side ---------------------------------------------------------
    def submit_install(
        self,
        bundle: Path,
        *,
        now: float,
        allow_downgrade: bool = False,
        rollout_id: str | None = None,
    ) -> DeploymentTicket:
        """Queue an install of ``bundle`` (a file on the state directory's file system).

        The file stays the caller's: the driver links it, never moves or deletes it.
        """
        bundle = Path(bundle)
        request = InstallRequest(
            _new_id(now), bundle, bundle.stat().st_size, allow_downgrade, rollout_id
        )
        return self._put(request)

    def submit_rollback(
        self, model: str, *, now: float, rollout_id: str | None = None
    ) -> DeploymentTicket:
        return self._put(RollbackRequest(_new_id(now), model, rollout_id))

    def ticket(self, request_id: str) -> DeploymentTicket | None:
        """The ticket of a request still waiting or being deployed."""
        with self._lock:
            found = self._taken.get(request_id)
            if found is None:
                found = next((t for t in self._waiting if t.request_id == request_id), None)
            return found

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    # --- the deployment thread's side -------------------------------------------
    def on_submit(self, wake: Callable[[], None]) -> None:
        """``wake()`` is called after every submission (the worker's wake-up)."""
        self._wake = wake

    def take(self) -> DeploymentTicket | None:
        """The oldest waiting request; it counts as taken until :meth:`settle`."""
        with self._lock:
            if not self._waiting:
                return None
            ticket = self._waiting.popleft()
            self._taken[ticket.request_id] = ticket
            return ticket

    def taken_ids(self) -> list[str]:
        with self._lock:
            return list(self._taken)

    def settle(self, outcome: DeploymentOutcome) -> None:
        """Resolve the ticket of ``outcome.request_id`` (no-op for an unknown id)."""
        with self._lock:
            ticket = self._taken.pop(outcome.request_id, None)
        if ticket is not None:
            ticket.resolve(outcome)

    def _put(self, request: DeploymentRequest) -> DeploymentTicket:
        ticket = DeploymentTicket(request)
        with self._lock:
            self._waiting.append(ticket)
        log.debug("deployment %s queued (%s)", request.id, request.kind)
        if self._wake is not None:
            self._wake()
        return ticket


def _new_id(now: float) -> str:
    from edgefleet.agent.deploy.inbox import new_request_id

    return new_request_id(now)
