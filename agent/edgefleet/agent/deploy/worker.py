"""The daemon's deployment thread: takes requests and drives the machine.

Requests come from the hub sync through the in-process
:class:`~edgefleet.agent.deploy.deployment_queue.DeploymentQueue` (first) and from the
command line through the file inbox. Runs beside the endpoint so that verifying a
large bundle never stalls inference. One request at a time, oldest first; the
ticket of a queued request is resolved with its outcome as soon as the deployment
ends. An unexpected error in a step is handled like a crash of the agent: the
persisted state is resumed through the recovery table, which counts the attempt
(so a step that always fails is given up after ``max_attempts``). A step that
fails because the disk is full is logged in one line (no traceback) and retried
after a growing delay (:class:`~edgefleet.core.mqtt.backoff.BackoffPolicy`).

The daemon may hand it a ``factory`` instead of a driver: the driver (and the
deployment code behind it) is then built when the first request arrives, so
a daemon that only serves never loads it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.deploy import inbox
from edgefleet.agent.deploy.atomic_files import is_disk_full, remove_path
from edgefleet.agent.deploy.deployment_queue import (
    DISK_FULL,
    DeploymentOutcome,
    DeploymentQueue,
    DeploymentRequest,
    InstallRequest,
    RollbackRequest,
)
from edgefleet.agent.deploy.layout import StateLayout
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.mqtt.backoff import BackoffPolicy
from edgefleet.core.protocol.deployment_phases import DeploymentPhase

if TYPE_CHECKING:
    from edgefleet.agent.deploy.driver import DeploymentDriver
    from edgefleet.agent.deploy.record import DeployState

log = logging.getLogger("edgefleet.agent.deploy")


#: Waits between attempts of a step that failed for lack of disk space.
DISK_FULL_BACKOFF = BackoffPolicy(initial_s=1.0, max_s=300.0, jitter=0.2)


class DeploymentWorker:
    def __init__(
        self,
        driver: DeploymentDriver | None,
        layout: StateLayout,
        interval_s: float = 0.25,
        *,
        factory: Callable[[], DeploymentDriver] | None = None,
        queue: DeploymentQueue | None = None,
        disk_full_backoff: BackoffPolicy = DISK_FULL_BACKOFF,
    ):
        if driver is None and factory is None:
            raise ValueError("DeploymentWorker needs a driver or a factory for one")
        self.driver = driver
        self._factory = factory
        self.layout = layout
        self.interval_s = interval_s
        self.queue = queue
        self._stop = threading.Event()
        self._wake = threading.Event()
        if queue is not None:
            queue.on_submit(self._wake.set)
        self._thread: threading.Thread | None = None
        self.errors = 0
        self._backoff_start = disk_full_backoff
        self._backoff: BackoffPolicy | None = None  # set while the disk is full
        self._resume_at = 0.0  # monotonic: no step before this (disk full)
        self._stored: DeployState | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edgefleet-deploy", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Ask the thread to stop between steps; True when it did within ``timeout_s``."""
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            # The inbox (another process) is looked at every interval; a queued request
            # wakes the thread at once.
            self._wake.wait(max(self.interval_s, self._resume_at - time.monotonic()))
            self._wake.clear()

    def deploy_state(self) -> DeployState:
        """The deployment state as the deployment thread has it (in memory).

        Before the driver exists nothing was deployed by this process, so the file
        read once at the first call is still current (only the lock holder writes it).
        """
        driver = self.driver
        if driver is not None:
            return driver.state
        if self._stored is None:
            from edgefleet.agent.deploy.record import DeployStateFile

            self._stored = DeployStateFile(self.layout.deploy_file).load()
        return self._stored

    def _has_work(self) -> bool:
        return bool((self.queue is not None and self.queue.waiting()) or inbox.pending(self.layout))

    def tick(self) -> None:
        if time.monotonic() < self._resume_at:
            return
        driver = self.driver
        try:
            if driver is None:
                if not self._has_work():
                    return
                assert self._factory is not None
                driver = self.driver = self._factory()
            if driver.current is None:
                self._take_request(driver)
            if driver.current is not None and not self._stop.is_set():
                driver.run()
            self._settle_tickets(driver)
            self._backoff = None
        except Exception as e:
            self.errors += 1
            self._failed("deployment step failed; resuming from the persisted state", e)
            if driver is None:
                return
            try:
                driver.resume()
            except Exception as e2:
                self._failed("deployment recovery failed", e2)

    def _failed(self, what: str, error: Exception) -> None:
        """A full disk is one line and a growing wait; anything else keeps its traceback."""
        if not is_disk_full(error):
            log.exception(what)
            return
        policy = self._backoff.next() if self._backoff is not None else self._backoff_start
        self._backoff = policy
        delay = policy.delay_s()
        self._resume_at = time.monotonic() + delay
        log.error("%s: disk full (%s); next attempt in %.1f s", what, error, delay)

    def _settle_tickets(self, driver: DeploymentDriver) -> None:
        """Resolve the ticket of every queued request whose deployment ended."""
        if self.queue is None:
            return
        current = driver.current
        for request_id in self.queue.taken_ids():
            if current is not None and current.id == request_id:
                continue
            found = driver.state.find_outcome(request_id)
            self.queue.settle(outcome_from_record(request_id, found))

    def _take_request(self, driver: DeploymentDriver) -> None:
        ticket = None if self.queue is None else self.queue.take()
        if ticket is None:
            self._take_inbox_request(driver)
            return
        try:
            self._start(driver, ticket.request, source_is_inbox=False)
        except OSError as e:
            if is_disk_full(e) and self.queue is not None:
                # Not even deploy.json could be written: the sync waits and tries again.
                self.queue.settle(
                    DeploymentOutcome(
                        ticket.request_id,
                        ticket.request.kind,
                        DeploymentPhase.FAILED,
                        f"cannot record the deployment: {e}",
                        DISK_FULL,
                    )
                )
            raise

    def _start(
        self, driver: DeploymentDriver, request: DeploymentRequest, *, source_is_inbox: bool
    ) -> bool:
        """Hand ``request`` to the driver; False (and a failed outcome) when it is refused."""
        from edgefleet.agent.deploy.hooks import describe_error

        model = None
        try:
            if isinstance(request, InstallRequest):
                driver.submit_install(
                    request.bundle,
                    size=request.size,
                    source_is_inbox=source_is_inbox,
                    allow_downgrade=request.allow_downgrade,
                    rollout_id=request.rollout_id,
                    deployment_id=request.id,
                )
            else:
                model = request.model
                driver.submit_rollback(
                    request.model, deployment_id=request.id, rollout_id=request.rollout_id
                )
        except (EdgefleetError, ValueError) as e:
            driver.refuse(
                request.id, request.kind, describe_error(e), model, rollout_id=request.rollout_id
            )
            return False
        return True

    def _take_inbox_request(self, driver: DeploymentDriver) -> None:
        state = driver.state
        for request in inbox.pending(self.layout):
            if state.current is not None and state.current.id == request.id:
                # Taken before a crash: the bundle copy is the deployment's source now.
                remove_path(self.layout.inbox / f"{request.id}.json")
                continue
            if state.find_outcome(request.id) is not None:
                inbox.discard(self.layout, request.id)
                continue
            if request.kind == "install":
                started = self._start(
                    driver,
                    InstallRequest(
                        request.id,
                        request.bundle or Path(""),
                        request.size,
                        request.allow_downgrade,
                        request.rollout_id,
                    ),
                    source_is_inbox=True,
                )
            elif request.kind == "rollback" and request.model:
                started = self._start(
                    driver,
                    RollbackRequest(request.id, request.model, request.rollout_id),
                    source_is_inbox=True,
                )
            else:
                driver.refuse(
                    request.id,
                    request.kind,
                    f"ValueError: unknown request kind {request.kind!r}",
                    request.model,
                    rollout_id=request.rollout_id,
                )
                started = False
            if not started:
                inbox.discard(self.layout, request.id)
                continue
            remove_path(self.layout.inbox / f"{request.id}.json")
            return


def outcome_from_record(request_id: str, found: Mapping[str, Any] | None) -> DeploymentOutcome:
    """The typed outcome of a finished deployment's ``deploy.json`` summary.

    None (in neither the history nor running) means the request was lost: failed.
    """
    if found is None:
        return DeploymentOutcome(
            request_id, "install", DeploymentPhase.FAILED, "deployment request lost"
        )
    failure = found.get("failure")
    return DeploymentOutcome(
        request_id,
        str(found.get("kind")),
        DeploymentPhase(str(found.get("state"))),
        found.get("reason"),
        failure if isinstance(failure, str) else None,
    )
