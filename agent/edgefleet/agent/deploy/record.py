"""``deploy.json``: the persisted deployment state (mender's state store).

The file holds the deployment in progress (``current``, null when idle), the
outcome of the last deployment of every model (``models``) and a short
history. It is rewritten atomically (temp + fsync + rename + directory fsync)
BEFORE every step with side effects, so after a crash it always names a state
whose step can be redone from its start.

Invariants:

- ``current.state`` is never ``idle``: an idle agent has ``current`` null.
- ``from_slots`` is recorded in the same write that enters ``activating``, and
  ``restore_slots`` in the same write that enters ``rolling_back``; so the
  pointers to restore are durable before any pointer moves.
- Unknown fields are ignored when reading (an older agent after a downgrade of
  the agent itself still finds its state).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgefleet.agent.deploy.atomic_files import atomic_write_json
from edgefleet.agent.deploy.machine import TERMINAL_STATES, State
from edgefleet.agent.deploy.slots import SlotPointers
from edgefleet.agent.errors import DeploymentError

FORMAT = 1
HISTORY_LIMIT = 20


@dataclass(frozen=True)
class DeploymentRecord:
    """One install or rollback moving through the machine."""

    id: str
    kind: str  # "install" | "rollback"
    state: State
    started_at: float
    updated_at: float
    source: str | None = None  # the file to fetch (install)
    source_is_inbox: bool = False  # the source belongs to the agent and goes at the end
    size: int | None = None  # declared size in bytes, known before the download
    allow_downgrade: bool = False
    rollout_id: str | None = None
    model: str | None = None
    version: int | None = None
    bundle_sha256: str | None = None
    from_slots: SlotPointers | None = None
    restore_slots: SlotPointers | None = None
    reason: str | None = None
    failure: str | None = None  # why it failed when the agent can tell ("disk_full")
    attempts: int = 0  # resumes after an unclean stop
    clean_stop: bool = False  # the daemon stopped gracefully in this state
    probation_started_at: float | None = None
    transitions: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("install", "rollback"):
            raise DeploymentError(f"deployment kind {self.kind!r} is not install or rollback")
        if self.state is State.IDLE:
            raise DeploymentError("a deployment in progress cannot be idle")

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def moved(
        self, state: State, now: float, reason: str | None = None, **changes: Any
    ) -> DeploymentRecord:
        """This record in ``state`` (already checked by the machine), with ``changes``."""
        entry = {"state": state.value, "at": now}
        if reason:
            entry["reason"] = reason
        return replace(
            self,
            state=state,
            updated_at=now,
            reason=reason if reason is not None else self.reason,
            transitions=(*self.transitions, entry)[-HISTORY_LIMIT:],
            **changes,
        )

    def to_dict(self) -> dict[str, Any]:
        data = self._fields()
        if self.failure is not None:  # written only when set: older readers see no change
            data["failure"] = self.failure
        return data

    def _fields(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state.value,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "source": self.source,
            "source_is_inbox": self.source_is_inbox,
            "size": self.size,
            "allow_downgrade": self.allow_downgrade,
            "rollout_id": self.rollout_id,
            "model": self.model,
            "version": self.version,
            "bundle_sha256": self.bundle_sha256,
            "from_slots": None if self.from_slots is None else self.from_slots.to_dict(),
            "restore_slots": None if self.restore_slots is None else self.restore_slots.to_dict(),
            "reason": self.reason,
            "attempts": self.attempts,
            "clean_stop": self.clean_stop,
            "probation_started_at": self.probation_started_at,
            "transitions": list(self.transitions),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeploymentRecord:
        def slots(value: Any) -> SlotPointers | None:
            return None if value is None else SlotPointers.from_dict(value)

        return cls(
            id=str(d["id"]),
            kind=str(d["kind"]),
            state=State(d["state"]),
            started_at=float(d["started_at"]),
            updated_at=float(d["updated_at"]),
            source=d.get("source"),
            source_is_inbox=bool(d.get("source_is_inbox", False)),
            size=d.get("size"),
            allow_downgrade=bool(d.get("allow_downgrade", False)),
            rollout_id=d.get("rollout_id"),
            model=d.get("model"),
            version=d.get("version"),
            bundle_sha256=d.get("bundle_sha256"),
            from_slots=slots(d.get("from_slots")),
            restore_slots=slots(d.get("restore_slots")),
            reason=d.get("reason"),
            failure=d.get("failure"),
            attempts=int(d.get("attempts", 0)),
            clean_stop=bool(d.get("clean_stop", False)),
            probation_started_at=d.get("probation_started_at"),
            transitions=tuple(d.get("transitions", ())),
        )

    def outcome(self) -> dict[str, Any]:
        """The short summary kept in history and per model once the deployment ended."""
        outcome = {
            "id": self.id,
            "kind": self.kind,
            "state": self.state.value,
            "model": self.model,
            "version": self.version,
            "bundle_sha256": self.bundle_sha256,
            "rollout_id": self.rollout_id,
            "reason": self.reason,
            "started_at": self.started_at,
            "finished_at": self.updated_at,
        }
        if self.failure is not None:
            outcome["failure"] = self.failure
        return outcome


@dataclass(frozen=True)
class DeployState:
    """Everything in ``deploy.json``."""

    current: DeploymentRecord | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()

    def with_current(self, record: DeploymentRecord | None) -> DeployState:
        return replace(self, current=record)

    def finished(self, record: DeploymentRecord) -> DeployState:
        """Idle again, with ``record``'s outcome remembered."""
        outcome = record.outcome()
        models = dict(self.models)
        if record.model is not None:
            models[record.model] = outcome
        return DeployState(
            current=None, models=models, history=(*self.history, outcome)[-HISTORY_LIMIT:]
        )

    def find_outcome(self, deployment_id: str) -> dict[str, Any] | None:
        for outcome in reversed(self.history):
            if outcome.get("id") == deployment_id:
                return outcome
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "current": None if self.current is None else self.current.to_dict(),
            "models": self.models,
            "history": list(self.history),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeployState:
        current = d.get("current")
        return cls(
            current=None if current is None else DeploymentRecord.from_dict(current),
            models=dict(d.get("models") or {}),
            history=tuple(d.get("history") or ()),
        )


class DeployStateFile:
    """Loads and durably saves :class:`DeployState`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> DeployState:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return DeployState()
        except OSError as e:
            raise DeploymentError(f"{self.path}: cannot read deployment state: {e}") from e
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return DeployState.from_dict(data)
        except (ValueError, KeyError, TypeError, DeploymentError) as e:
            # The file is only ever replaced atomically, so this is tampering or a
            # disk fault; refuse loudly instead of guessing a state.
            raise DeploymentError(f"{self.path}: corrupt deployment state: {e}") from e

    def save(self, state: DeployState) -> None:
        atomic_write_json(self.path, state.to_dict())
