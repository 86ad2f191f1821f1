"""The state directory: where everything the agent keeps lives, and who may write it.

Layout::

    STATE_DIR/
      agent.lock           flock held by the process that drives deployments
      deploy.json          persisted deployment state (deploy/record.py)
      telemetry.db         SQLite WAL telemetry buffer (+ -wal, -shm)
      bundles/SHA.efb      verified bundle archives, named by their sha256
      bundles/SHA/         their extracted members (complete or absent)
      slots/MODEL.json     {"active": SHA, "previous": SHA | null} per model
      inbox/ID.json        install / rollback requests from the CLI to the daemon
      inbox/ID.efb         the bundle file of an install request
      downloads/ID.efb     a fetched bundle waiting for verification
      staging/ID/          extraction target while a bundle is verified

Invariants: exactly one process drives deployments at a time — the one that
holds the exclusive ``flock`` on ``agent.lock`` (the daemon while it runs, or
a CLI command when no daemon runs). The lock dies with its process, so a kill
-9 never leaves a stale lock behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.errors import DeploymentError
from edgefleet.core.pid_lock import PidLock

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class StateLayout:
    root: Path

    @property
    def lock_file(self) -> Path:
        return self.root / "agent.lock"

    @property
    def deploy_file(self) -> Path:
        return self.root / "deploy.json"

    @property
    def telemetry_db(self) -> Path:
        return self.root / "telemetry.db"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def slots(self) -> Path:
        return self.root / "slots"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    def ensure(self) -> None:
        """Create the directories (0750: bundles and telemetry are not for everyone)."""
        for directory in (
            self.root,
            self.bundles,
            self.slots,
            self.inbox,
            self.downloads,
            self.staging,
        ):
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)

    def download_path(self, deployment_id: str) -> Path:
        return self.downloads / f"{deployment_id}.efb"

    def staging_path(self, deployment_id: str) -> Path:
        return self.staging / deployment_id

    def bundle_dir(self, sha256: str) -> Path:
        return self.bundles / sha256

    def slot_file(self, model: str) -> Path:
        return self.slots / f"{model}.json"


class StateLock(PidLock):
    """The exclusive ``flock`` on ``agent.lock``.

    ``acquire(wait=False)`` returns False when another process holds it
    (a running daemon), which is how the CLI decides whether to hand a request
    to the daemon or to do the work itself.
    """

    def __init__(self, layout: StateLayout) -> None:
        super().__init__(layout.lock_file)

    def acquire(self, wait: bool = False) -> bool:
        try:
            return self.try_acquire(wait=wait)
        except OSError as e:
            raise DeploymentError(f"cannot lock {self.path}: {e.strerror or e}") from e


def lock_is_held_elsewhere(layout: StateLayout) -> bool:
    """True when another process (normally the daemon) holds the state lock."""
    if not layout.lock_file.exists():
        return False
    probe = StateLock(layout)
    if probe.acquire(wait=False):
        probe.release()
        return False
    return True
