"""Requests from the command line to the running daemon: ``inbox/ID.json`` (+ ``ID.efb``).

``edgefleet agent install`` and ``rollback`` find the daemon by its state lock
and hand it a request through the inbox instead of touching deployment state
themselves: only the lock holder drives deployments. The bundle file is copied
into the state directory first, because the daemon (systemd ``PrivateTmp``)
may not see the caller's ``/tmp``.

Invariants:

- A request file appears atomically (temp + rename), after its bundle copy is
  complete and durable, so the daemon never reads half a request.
- Request ids sort by submission time, so requests are handled in order.
- A bundle larger than the budget is not copied at all: the request carries
  its size and the daemon rejects it before fetching (the size is known
  before the download, as with a hub directive).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.agent.deploy.atomic_files import atomic_write_json, copy_durably, remove_path
from edgefleet.agent.deploy.layout import StateLayout
from edgefleet.agent.errors import DeploymentError


@dataclass(frozen=True)
class InboxRequest:
    id: str
    kind: str  # "install" | "rollback"
    submitted_at: float
    bundle: Path | None = None
    size: int | None = None
    model: str | None = None
    allow_downgrade: bool = False
    rollout_id: str | None = None  # set by the hub sync; travels into deployment events
    # Requests written before rollout ids were carried have no such field: read as None.

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "submitted_at": self.submitted_at,
            "bundle": None if self.bundle is None else self.bundle.name,
            "size": self.size,
            "model": self.model,
            "allow_downgrade": self.allow_downgrade,
            "rollout_id": self.rollout_id,
        }


def new_request_id(now: float) -> str:
    import secrets  # rare: keep it off the serving daemon's imports

    return f"{int(now * 1000):013d}-{secrets.token_hex(4)}"


def submit_install(
    layout: StateLayout,
    file: Path,
    *,
    now: float,
    max_bundle_bytes: int,
    allow_downgrade: bool = False,
    rollout_id: str | None = None,
) -> InboxRequest:
    try:
        size = Path(file).stat().st_size
    except OSError as e:
        raise DeploymentError(f"cannot read {file}: {e.strerror or e}") from e
    layout.inbox.mkdir(parents=True, exist_ok=True)
    request_id = new_request_id(now)
    bundle: Path | None = None
    if size <= max_bundle_bytes:
        bundle = layout.inbox / f"{request_id}.efb"
        try:
            copy_durably(Path(file), bundle)
        except OSError as e:
            remove_path(bundle)
            raise DeploymentError(f"cannot copy {file} into {layout.inbox}: {e}") from e
    request = InboxRequest(
        request_id,
        "install",
        now,
        bundle=bundle,
        size=size,
        allow_downgrade=allow_downgrade,
        rollout_id=rollout_id,
    )
    atomic_write_json(layout.inbox / f"{request_id}.json", request.to_dict())
    return request


def submit_rollback(
    layout: StateLayout, model: str, *, now: float, rollout_id: str | None = None
) -> InboxRequest:
    layout.inbox.mkdir(parents=True, exist_ok=True)
    request = InboxRequest(new_request_id(now), "rollback", now, model=model, rollout_id=rollout_id)
    atomic_write_json(layout.inbox / f"{request.id}.json", request.to_dict())
    return request


def pending(layout: StateLayout) -> list[InboxRequest]:
    """Readable requests, oldest first; unreadable ones are removed."""
    if not layout.inbox.is_dir():
        return []
    out = []
    for path in sorted(layout.inbox.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            bundle = data.get("bundle")
            out.append(
                InboxRequest(
                    id=str(data["id"]),
                    kind=str(data["kind"]),
                    submitted_at=float(data["submitted_at"]),
                    bundle=None if bundle is None else layout.inbox / Path(bundle).name,
                    size=data.get("size"),
                    model=data.get("model"),
                    allow_downgrade=bool(data.get("allow_downgrade", False)),
                    rollout_id=data.get("rollout_id"),
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            remove_path(path)
    return out


def discard(layout: StateLayout, request_id: str) -> None:
    """Forget a request and its bundle copy."""
    remove_path(layout.inbox / f"{request_id}.json")
    remove_path(layout.inbox / f"{request_id}.efb")
