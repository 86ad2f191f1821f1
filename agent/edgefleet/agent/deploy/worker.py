"""The daemon's deployment thread: takes inbox requests and drives the machine.

Runs beside the endpoint so that verifying a large bundle never stalls
inference. One request at a time, oldest first. An unexpected error in a step
is handled like a crash of the agent: the persisted state is resumed through
the recovery table, which counts the attempt (so a step that always fails is
given up after ``max_attempts``).

The daemon may hand it a ``factory`` instead of a driver: the driver (and the
deployment code behind it) is then built when the first request arrives, so
a daemon that only serves never loads it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.agent.deploy import inbox
from edgefleet.agent.deploy.atomic_files import remove_path
from edgefleet.agent.deploy.layout import StateLayout
from edgefleet.core.errors import EdgefleetError

if TYPE_CHECKING:
    from edgefleet.agent.deploy.driver import DeploymentDriver

log = logging.getLogger("edgefleet.agent.deploy")


class DeploymentWorker:
    def __init__(
        self,
        driver: DeploymentDriver | None,
        layout: StateLayout,
        interval_s: float = 0.25,
        *,
        factory: Callable[[], DeploymentDriver] | None = None,
    ):
        if driver is None and factory is None:
            raise ValueError("DeploymentWorker needs a driver or a factory for one")
        self.driver = driver
        self._factory = factory
        self.layout = layout
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edgefleet-deploy", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Ask the thread to stop between steps; True when it did within ``timeout_s``."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval_s)

    def tick(self) -> None:
        driver = self.driver
        try:
            if driver is None:
                if not inbox.pending(self.layout):
                    return
                assert self._factory is not None
                driver = self.driver = self._factory()
            if driver.current is None:
                self._take_request(driver)
            if driver.current is not None and not self._stop.is_set():
                driver.run()
        except Exception:
            self.errors += 1
            log.exception("deployment step failed; resuming from the persisted state")
            if driver is None:
                return
            try:
                driver.resume()
            except Exception:
                log.exception("deployment recovery failed")

    def _take_request(self, driver: DeploymentDriver) -> None:
        from edgefleet.agent.deploy.hooks import describe_error

        state = driver.state
        for request in inbox.pending(self.layout):
            if state.current is not None and state.current.id == request.id:
                # Taken before a crash: the bundle copy is the deployment's source now.
                remove_path(self.layout.inbox / f"{request.id}.json")
                continue
            if state.find_outcome(request.id) is not None:
                inbox.discard(self.layout, request.id)
                continue
            try:
                if request.kind == "install":
                    driver.submit_install(
                        request.bundle or Path(""),
                        size=request.size,
                        source_is_inbox=True,
                        allow_downgrade=request.allow_downgrade,
                        rollout_id=request.rollout_id,
                        deployment_id=request.id,
                    )
                elif request.kind == "rollback" and request.model:
                    driver.submit_rollback(
                        request.model, deployment_id=request.id, rollout_id=request.rollout_id
                    )
                else:
                    raise ValueError(f"unknown request kind {request.kind!r}")
            except (EdgefleetError, ValueError) as e:
                driver.refuse(
                    request.id,
                    request.kind,
                    describe_error(e),
                    request.model,
                    rollout_id=request.rollout_id,
                )
                inbox.discard(self.layout, request.id)
                continue
            remove_path(self.layout.inbox / f"{request.id}.json")
            return
