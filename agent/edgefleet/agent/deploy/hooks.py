"""What the deployment driver plugs into: serving, the probation tap, telemetry events,
and the crash-test pause hook.

``EDGEFLEET_TEST_PAUSE_AT=STATE`` makes the process stop itself (SIGSTOP)
right after ``STATE`` was persisted; ``STATE+`` right after that state's side
effects. Crash tests kill the stopped process there.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any, Protocol

from edgefleet.agent.deploy.record import DeploymentRecord
from edgefleet.agent.telemetry.recorder import LiveStats
from edgefleet.core.errors import EdgefleetError

PAUSE_ENV = "EDGEFLEET_TEST_PAUSE_AT"


class ServingPort(Protocol):
    def swap(self, name: str, loaded: Any | None) -> Any: ...


class ProbationTap(Protocol):
    def start_probation(self, model: str, version: int) -> None: ...

    def probation_stats(self, model: str, version: int) -> LiveStats: ...

    def stop_probation(self, model: str, version: int) -> None: ...


EventSink = Callable[[dict[str, Any]], Any]
Loader = Callable[[str], Any]


def no_pause(point: str) -> None:
    return None


def pause_hook_from_env() -> Callable[[str], None]:
    """The crash-test hook: SIGSTOP ourselves at the point named by the environment."""
    target = os.environ.get(PAUSE_ENV)
    if not target:
        return no_pause

    def pause(point: str) -> None:
        if point == target:
            sys.stderr.write(f"edgefleet: test pause at {point}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGSTOP)

    return pause


def event_body(record: DeploymentRecord) -> dict[str, Any]:
    """The telemetry ``event`` body for a persisted deployment state."""
    body: dict[str, Any] = {
        "model": record.model or "",
        "version": record.version,
        "state": record.state.value,
        "reason": record.reason,
        "at": record.updated_at,
        "deployment_id": record.id,
        "kind": record.kind,
    }
    if record.bundle_sha256 is not None:
        body["bundle_sha256"] = record.bundle_sha256
    if record.rollout_id is not None:
        body["rollout_id"] = record.rollout_id
    return body


def describe_error(error: BaseException) -> str:
    """One line for a reason field."""
    if isinstance(error, EdgefleetError):
        return " ".join(str(error).split())
    return f"{type(error).__name__}: {error}"
