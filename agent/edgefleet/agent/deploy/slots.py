"""Per-model slot pointers: which stored bundle is active and which one came before.

One small JSON file per model, ``slots/MODEL.json`` =
``{"model": ..., "active": SHA | null, "previous": SHA | null}``.

Invariants:

- Both pointers of a model change together in one atomic rename + fsync of
  the file and of the directory, so a crash never leaves a model with a new
  ``active`` and a stale ``previous`` (two separate symlinks could not promise
  that).
- A slot file only ever names bundles whose extracted directory is complete
  in the store; the driver writes pointers after staging, never before.
- ``active`` null means the model is installed nowhere (its only version was
  rolled back); such a file is removed rather than kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from edgefleet.agent.deploy.atomic_files import atomic_write_json, remove_path
from edgefleet.agent.deploy.layout import MODEL_NAME_RE, SHA256_RE, StateLayout
from edgefleet.agent.errors import DeploymentError
from edgefleet.core.durable import fsync_dir


@dataclass(frozen=True)
class SlotPointers:
    active: str | None = None
    previous: str | None = None

    def __post_init__(self) -> None:
        for name in ("active", "previous"):
            value = getattr(self, name)
            if value is not None and not SHA256_RE.fullmatch(value):
                raise DeploymentError(f"slot pointer {name} is not a sha256: {value!r}")
        if self.active is None and self.previous is not None:
            raise DeploymentError("a slot with a previous version must have an active one")

    def to_dict(self) -> dict[str, str | None]:
        return {"active": self.active, "previous": self.previous}

    @classmethod
    def from_dict(cls, data: object) -> SlotPointers:
        if not isinstance(data, dict):
            return cls()
        return cls(active=data.get("active"), previous=data.get("previous"))


class SlotTable:
    """Reads and switches the slot files of a state directory."""

    def __init__(self, layout: StateLayout) -> None:
        self._layout = layout

    def models(self) -> list[str]:
        directory = self._layout.slots
        if not directory.is_dir():
            return []
        return sorted(
            p.stem
            for p in directory.glob("*.json")
            if not p.name.startswith(".") and MODEL_NAME_RE.fullmatch(p.stem)
        )

    def get(self, model: str) -> SlotPointers:
        path = self._layout.slot_file(_checked(model))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return SlotPointers()
        except (OSError, ValueError) as e:
            raise DeploymentError(f"{path}: unreadable slot file: {e}") from e
        try:
            return SlotPointers.from_dict(data)
        except DeploymentError as e:
            raise DeploymentError(f"{path}: {e}") from None

    def switch(self, model: str, pointers: SlotPointers) -> None:
        """Switch both pointers of ``model`` atomically and durably."""
        path = self._layout.slot_file(_checked(model))
        path.parent.mkdir(parents=True, exist_ok=True)
        if pointers.active is None:
            if path.exists():
                remove_path(path)
                fsync_dir(path.parent)
            return
        atomic_write_json(path, {"model": model, **pointers.to_dict()})

    def all(self) -> dict[str, SlotPointers]:
        return {model: self.get(model) for model in self.models()}

    def referenced(self) -> set[str]:
        """Every bundle sha256 some slot points at (the store must keep these)."""
        out: set[str] = set()
        for pointers in self.all().values():
            out.update(p for p in (pointers.active, pointers.previous) if p is not None)
        return out


def _checked(model: str) -> str:
    if not MODEL_NAME_RE.fullmatch(model):
        raise DeploymentError(f"model name {model!r} is not valid")
    return model
