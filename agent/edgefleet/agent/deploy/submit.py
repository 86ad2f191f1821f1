"""``agent install`` and ``agent rollback`` from the command line.

Only the holder of the state lock drives deployments. So:

- when the daemon runs (it holds the lock), the command hands it a request
  through the inbox and waits for the outcome in ``deploy.json``;
- when no daemon runs, the command takes the lock and drives the deployment
  itself. Live probation needs traffic, so such a deployment stops in
  ``probation`` after its smoke set and the daemon finishes it at its next
  start — unless ``[probation]`` asks for no live phase.

Outcomes map to exit codes: committed or on probation 0, rejected 3
(:class:`BundleRejectedError`), failed or rolled back 1 (:class:`DeploymentError`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.agent.deploy import inbox
from edgefleet.agent.deploy.context import AgentContext
from edgefleet.agent.deploy.driver import DeploymentDriver
from edgefleet.agent.deploy.layout import StateLock, lock_is_held_elsewhere
from edgefleet.agent.deploy.machine import State
from edgefleet.agent.deploy.record import DeployStateFile
from edgefleet.agent.deploy.slots import SlotTable
from edgefleet.agent.errors import BundleRejectedError, DeploymentError, ModelNotFoundError

# Told each deployment state a request passes (state, reason): what `install` shows.
StageCallback = Callable[[str, "str | None"], None]

WAIT_NONE = "none"  # return once the request is queued
WAIT_ACTIVE = "active"  # return once the new version serves (probation) or it ended
WAIT_FINAL = "final"  # return once the deployment ended


@dataclass(frozen=True)
class Outcome:
    id: str
    kind: str
    state: str
    via: str  # "daemon" or "direct"
    model: str | None = None
    version: int | None = None
    bundle_sha256: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_record(cls, data: dict[str, Any], via: str) -> Outcome:
        return cls(
            id=str(data["id"]),
            kind=str(data["kind"]),
            state=str(data["state"]),
            via=via,
            model=data.get("model"),
            version=data.get("version"),
            bundle_sha256=data.get("bundle_sha256"),
            reason=data.get("reason"),
        )

    def check(self) -> Outcome:
        """Raise the error family matching a bad outcome (sets the exit code)."""
        what = f"{self.kind} {self.id}"
        if self.state == State.REJECTED.value:
            raise BundleRejectedError(f"{what} rejected: {self.reason}")
        if self.state in (State.FAILED.value, State.ROLLED_BACK.value) and self.kind == "install":
            raise DeploymentError(f"{what} {self.state.replace('_', ' ')}: {self.reason}")
        if self.state == State.FAILED.value:
            raise DeploymentError(f"{what} failed: {self.reason}")
        return self


def _direct(
    ctx: AgentContext,
    lock: StateLock,
    start: Callable[[DeploymentDriver], str],
    on_stage: StageCallback | None = None,
) -> Outcome:
    buffer = None
    started = False
    try:
        buffer = ctx.open_buffer_or_reset()
        append = buffer.append

        def events(body: dict[str, Any]) -> None:
            append("event", body)
            if started and on_stage is not None:
                on_stage(str(body["state"]), body.get("reason"))

        driver = ctx.driver(events=events)
        driver.resume()
        driver.run()
        leftover = driver.current
        if leftover is not None:
            raise DeploymentError(
                f"deployment {leftover.id} ({leftover.model or 'bundle'}) waits in "
                f"{leftover.state.value}; start the agent (edgefleet agent run) to finish it"
            )
        started = True
        deployment_id = start(driver)
        driver.run()
        driver.suspend()
        state = driver.state
        if state.current is not None and state.current.id == deployment_id:
            return Outcome.from_record(state.current.to_dict(), "direct")
        outcome = state.find_outcome(deployment_id)
        assert outcome is not None
        return Outcome.from_record(outcome, "direct")
    finally:
        if buffer is not None:
            buffer.close()
        lock.release()


def _wait(
    ctx: AgentContext,
    request_id: str,
    kind: str,
    wait: str,
    timeout_s: float,
    on_stage: StageCallback | None = None,
) -> Outcome:
    if wait == WAIT_NONE:
        return Outcome(request_id, kind, "queued", "daemon")
    state_file = DeployStateFile(ctx.layout.deploy_file)
    deadline = time.monotonic() + timeout_s
    seen: str | None = None

    def stage(state: str, reason: str | None) -> None:
        # deploy.json is polled: a stage shorter than the poll may be missed, never repeated
        nonlocal seen
        if on_stage is not None and state != seen:
            seen = state
            on_stage(state, reason)

    while True:
        state = state_file.load()
        outcome = state.find_outcome(request_id)
        if outcome is not None:
            stage(str(outcome["state"]), outcome.get("reason"))
            return Outcome.from_record(outcome, "daemon")
        current = state.current
        if current is not None and current.id == request_id:
            stage(current.state.value, current.reason)
        if (
            wait == WAIT_ACTIVE
            and current is not None
            and current.id == request_id
            and current.state is State.PROBATION
        ):
            return Outcome.from_record(current.to_dict(), "daemon")
        if not lock_is_held_elsewhere(ctx.layout):
            where = "" if current is None or current.id != request_id else f" in {current.state}"
            raise DeploymentError(
                f"the agent stopped while handling {kind} {request_id}{where}; "
                "it continues when the agent starts again"
            )
        if time.monotonic() > deadline:
            raise DeploymentError(
                f"{kind} {request_id} still running after {timeout_s:.0f} s; "
                "see `edgefleet agent status`"
            )
        time.sleep(0.1)


def install_bundle(
    ctx: AgentContext,
    file: Path,
    *,
    allow_downgrade: bool = False,
    wait: str = WAIT_ACTIVE,
    timeout_s: float = 600.0,
    on_stage: StageCallback | None = None,
) -> Outcome:
    """Install ``file``; ``on_stage(state, reason)`` hears each deployment state it passes."""
    file = Path(file).resolve()
    if not file.is_file():
        raise DeploymentError(f"{file}: no such bundle file")
    ctx.layout.ensure()
    lock = StateLock(ctx.layout)
    if lock.acquire():
        size = file.stat().st_size
        return _direct(
            ctx,
            lock,
            lambda d: d.submit_install(file, size=size, allow_downgrade=allow_downgrade).id,
            on_stage,
        )
    request = inbox.submit_install(
        ctx.layout,
        file,
        now=time.time(),
        max_bundle_bytes=ctx.profile.max_bundle_bytes,
        allow_downgrade=allow_downgrade,
    )
    return _wait(ctx, request.id, "install", wait, timeout_s, on_stage)


def rollback_model(
    ctx: AgentContext, model: str, *, wait: str = WAIT_FINAL, timeout_s: float = 120.0
) -> Outcome:
    ctx.layout.ensure()
    pointers = SlotTable(ctx.layout).get(model)
    if pointers.active is None:
        raise ModelNotFoundError(f"model {model!r} is not installed")
    if pointers.previous is None:
        raise DeploymentError(f"model {model!r} has no previous version to go back to")
    lock = StateLock(ctx.layout)
    if lock.acquire():
        return _direct(ctx, lock, lambda d: d.submit_rollback(model).id)
    request = inbox.submit_rollback(ctx.layout, model, now=time.time())
    return _wait(ctx, request.id, "rollback", wait, timeout_s)
